"""Helpers to drive the real Alembic, in-process or as the `alembic` command."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alembic.config import Config

from cowrieprocessor.settings import PROJECT_ROOT

ALEMBIC_BIN = Path(sys.executable).parent / "alembic"


def alembic_config(url: str, **x: str) -> Config:
    """Config for the project's alembic.ini with ``-x db=URL`` (and other -x knobs)."""
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.attributes["configure_logger"] = False
    x_args = [f"db={url}", *(f"{k}={v}" for k, v in x.items())]
    cfg.cmd_opts = argparse.Namespace(x=x_args)
    return cfg


def run_alembic(
    url: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    x: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the real ``alembic`` command against ``url`` (passed as ``-x db=URL``)."""
    x_opts: list[str] = ["-x", f"db={url}"]
    for key, value in (x or {}).items():
        x_opts += ["-x", f"{key}={value}"]
    full_env = {**os.environ, **(env or {})}
    full_env.pop("COWRIE_DB_URL", None)
    return subprocess.run(
        [str(ALEMBIC_BIN), "-c", str(PROJECT_ROOT / "alembic.ini"), *x_opts, *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


FIGURES_ENV = "COWRIE_RELIABILITY_FIGURES"


def record(test: str, **figures: Any) -> None:
    """Publish one test's measured figures: printed, and appended to $COWRIE_RELIABILITY_FIGURES."""
    line = json.dumps({"test": test, **figures}, sort_keys=True, default=str)
    print(line)
    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
