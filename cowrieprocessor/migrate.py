"""The migration history wherever this package runs: a source checkout or an installed wheel.

In a checkout, Alembic's files are the project's ``alembic.ini`` and ``migrations/``:
what ``alembic`` run in the checkout uses, and the source of truth. A wheel carries the
same ``migrations/`` folder as ``cowrieprocessor/_migrations`` (pyproject maps it in at
build time; nothing is copied by hand) and has no ``alembic.ini``, so its Alembic
configuration is built here: the same ``env.py``, the same revisions, the same ``-x``
arguments (``db=URL`` and the backfill's knobs), and the logging ``cowrie-db`` set up.

``cowrie-db upgrade``, ``downgrade``, ``current`` and ``history`` and ``cowrie-db
check`` go through :func:`alembic_config`, so an installed package deploys a database
exactly as ``alembic upgrade head`` does in a checkout.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from cowrieprocessor.settings import PROJECT_ROOT, in_checkout

INSTALLED_MIGRATIONS = Path(__file__).resolve().parent / "_migrations"  # absent in a checkout


def script_location() -> Path:
    """The folder holding ``env.py`` and ``versions/``."""
    if in_checkout():
        return PROJECT_ROOT / "migrations"
    if (INSTALLED_MIGRATIONS / "env.py").is_file():
        return INSTALLED_MIGRATIONS
    raise FileNotFoundError(
        f"no migrations found: neither a checkout ({PROJECT_ROOT / 'alembic.ini'}) nor an "
        f"installed package ({INSTALLED_MIGRATIONS}); reinstall cowrieprocessor-migrations"
    )


def alembic_config(url: str | None = None, x: Sequence[str] = ()) -> Config:
    """Alembic's configuration for this package: ``-x db=URL`` (when given) and ``x``.

    Logging is left as the caller set it (``env.py`` reads ``alembic.ini``'s logging
    sections only when Alembic's own command line runs it).
    """
    if in_checkout():
        cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    else:
        cfg = Config()
        cfg.set_main_option("script_location", str(script_location()))
        cfg.set_main_option("path_separator", "os")
    cfg.attributes["configure_logger"] = False
    x_args = [f"db={url}"] if url else []
    cfg.cmd_opts = argparse.Namespace(x=[*x_args, *x])
    return cfg


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())
