"""Database settings, resolved in one documented order.

The URL comes from the first of these that is set:

1. an explicit value (``--db URL`` on the command line, ``-x db=URL`` for Alembic);
2. the ``COWRIE_DB_URL`` environment variable;
3. the embedded default: a SQLite file ``cowrie.sqlite`` (its folder is created on
   demand) in ``$COWRIE_DATA_DIR`` when that is set; else in ``var/`` inside a source
   checkout; else, for an installed package, in the user's data directory
   (``platformdirs.user_data_dir("cowrieprocessor")``: ``~/.local/share/cowrieprocessor``
   on Linux, honouring ``XDG_DATA_HOME``), never inside site-packages.

Alembic's ``env.py`` and the ``cowrie-db`` CLI both call :func:`resolve_database_url`,
so the two can never disagree about which database they touch. Whenever a URL is
printed or logged it goes through :func:`mask_url` first.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import platformdirs
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from cowrieprocessor.errors import CowrieError

ENV_URL = "COWRIE_DB_URL"
ENV_DATA_DIR = "COWRIE_DATA_DIR"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SQLITE_NAME = "cowrie.sqlite"
APP_NAME = "cowrieprocessor"


class SettingsError(CowrieError, ValueError):
    """A database setting is unusable; the message names the setting and the problem."""


def in_checkout() -> bool:
    """Running from a source checkout (or an editable install of one), not a wheel."""
    return (PROJECT_ROOT / "alembic.ini").is_file() and (
        PROJECT_ROOT / "migrations" / "env.py"
    ).is_file()


def default_data_dir() -> Path:
    """Where the embedded default lives: ``$COWRIE_DATA_DIR``, else the checkout's
    ``var/``, else the user's data directory (an installed package)."""
    data_dir = os.environ.get(ENV_DATA_DIR)
    if data_dir:
        return Path(data_dir)
    if in_checkout():
        return PROJECT_ROOT / "var"
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def default_sqlite_path() -> Path:
    """The embedded default database file (its folder is created on demand)."""
    return default_data_dir() / DEFAULT_SQLITE_NAME


def default_sqlite_url() -> str:
    return f"sqlite:///{default_sqlite_path()}"


def resolve_database_url(explicit: str | None = None) -> str:
    """Return the URL to use: explicit, then ``COWRIE_DB_URL``, then the embedded default."""
    for candidate in (explicit, os.environ.get(ENV_URL)):
        if candidate is not None and candidate.strip():
            return candidate.strip()
    return default_sqlite_url()


def parse_url(url: str) -> URL:
    """Parse a URL, raising :class:`SettingsError` with the masked URL when it is malformed."""
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise SettingsError(f"database URL {mask_url(url)!r} is not a valid URL") from exc


_PASSWORD_IN_TEXT = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/?#@\s]*:)[^@\s]*@")


def mask_url(url: str | URL) -> str:
    """Render a URL with its password replaced by ``***``.

    Works on anything: a parsed URL, a well-formed string, or a string that does not
    parse (the regular expression still hides whatever sits between ``user:`` and ``@``).
    """
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a malformed URL must still never leak a password
        return mask_secrets(url)


def mask_secrets(text: str) -> str:
    """Hide any ``scheme://user:password@`` password that appears inside free text."""
    return _PASSWORD_IN_TEXT.sub(r"\g<head>***@", text)
