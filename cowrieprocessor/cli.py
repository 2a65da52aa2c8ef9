"""``cowrie-db``: the operator's command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cowrieprocessor import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cowrie-db",
        description="Operate cowrieprocessor's database: schema migrations and snapshot backfill.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0
