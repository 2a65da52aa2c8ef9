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
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote_plus, unquote_plus

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


def resolve_database_url(explicit: str | None = None, *, option: str = "--db") -> str:
    """Return the URL to use: explicit, then ``COWRIE_DB_URL``, then the embedded default.

    ``explicit`` is ``None`` when the option was not given. Given but empty (``--db ""``,
    ``-x db=``: most often a variable a script forgot to set) is refused rather than read
    as "not given": falling back to another database would be silent. An empty
    ``COWRIE_DB_URL`` does mean unset (``COWRIE_DB_URL= make demo``). ``option`` names
    the setting in the error (``-x db`` for Alembic).
    """
    if explicit is not None:
        if not explicit.strip():
            raise SettingsError(
                f"{option} is empty (an unset variable in a script?): give a database URL, "
                f"or leave {option} out to use ${ENV_URL} if set, else the embedded SQLite "
                f"{default_sqlite_path()}"
            )
        return explicit.strip()
    return os.environ.get(ENV_URL, "").strip() or default_sqlite_url()


def parse_url(url: str) -> URL:
    """Parse a URL, raising :class:`SettingsError` with the masked URL when it is malformed.

    ``from None``: the parser's own message may quote a piece of the URL (a password
    typed where the port goes: ``invalid literal for int(): 'secret'``), and a chained
    exception is printed in full by any traceback.
    """
    try:
        return make_url(url)
    except ArgumentError:
        raise SettingsError(f"database URL {mask_url(url)!r} is not a valid URL") from None
    except ValueError:  # the port is not a number: maybe a password, '@host' forgotten
        raise SettingsError(
            f"database URL {mask_url(url)!r} is not a valid URL (its port is not a number; "
            "a password goes between the user name and '@')"
        ) from None


# --- masking ---------------------------------------------------------------------------
#
# What is secret, in every form a URL or a libpq connection string can carry it:
#
# - the password of the userinfo, ``scheme://user:PASSWORD@host``. SQLAlchemy ends it at
#   the first ``@``, a person who did not percent-encode means the last ``@`` before the
#   host; we hide up to the last ``@`` before the query, so both readings are covered;
# - a query parameter whose name, percent-decoded (libpq decodes URI keys and values,
#   SQLAlchemy decodes with ``parse_qsl``), case-folded and stripped of punctuation, says
#   secret: ``password``, ``sslpassword``, ``oauth_client_secret`` (PostgreSQL 18),
#   ``PGPASSWORD``, and typos and cousins (``passwd``, ``pwd``, ``token``). ``passfile``
#   is a path, not a secret, and stays readable;
# - a parameter whose value itself holds one of the above (``?dsn=host=h password=x``,
#   a URL inside a value): its whole value;
# - in free text (an error message, a log line), libpq ``key=value`` pairs
#   (``password='it\'s'``, ``PGPASSWORD=x``) and ``'password': 'x'`` of a dict's repr.
#
# The masked form keeps the key and shows ``***`` for the value; everything else is kept
# byte for byte, so that host, port and database stay readable.

MASK = "***"
_SECRET_WORDS = ("pass", "pwd", "secret", "token")
_NOT_SECRET = frozenset({"passfile"})  # libpq's passfile= is a path, not a password
# (each pattern starts only where a scheme or a key can start, so that a long run of
# letters is read once, not once per position: masking stays linear on hostile text)
_SCHEME = re.compile(r"(?<![A-Za-z0-9+.\-])(?:[A-Za-z][A-Za-z0-9+.\-]*)?://")
_SPACE = re.compile(r"\s")
_USER_END = re.compile(r"[:/]")
# the port of a URL's authority (after its '@', outside IPv6 brackets)
_PORT = re.compile(r"(?P<head>://(?:[^/?#]*@)?(?:\[[^\]/?#]*\]|[^:/?#\[]*):)[^/?#]*")
_KEY = r"[^\s=&?#'\"(),;{}\[\]<>]+"
# A query parameter: after ``?`` or ``&``, its value up to the next ``&`` (and, in free
# text, whitespace). Spaces around ``=`` count: psycopg2 passes ``password =x`` to libpq.
_QUERY_PARAM = re.compile(rf"(?<=[?&])(?P<key>{_KEY})(?P<eq>[ \t]*=)(?P<value>[^&\s]*)")
_QUERY_PARAM_WHOLE = re.compile(rf"(?<=[?&])(?P<key>{_KEY})(?P<eq>[ \t]*=)(?P<value>[^&]*)")
# A libpq conninfo pair: its value quoted (backslash escapes) or up to whitespace.
_CONNINFO_PAIR = re.compile(
    rf"(?:^|(?<=[\s'\"(,;{{\[<]))(?P<key>{_KEY})(?P<eq>\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|\S*)"
)
# A value masked already, and the punctuation of the sentence around it: kept as is.
_ALREADY_MASKED = re.compile(r"\*\*\*[:;,.)\]'\"]*")
# Any key inside a value: ``key=``, ``key:``, ``'key':``.
_ANY_KEY = re.compile(rf"(?<![^\s=&?#'\"(),;{{}}\[\]<>])(?P<key>{_KEY})['\"]?\s*[=:]")
# ``'password': 'x'`` in the repr of a dict (or JSON).
_DICT_PAIR = re.compile(
    r"(?P<q>['\"])(?P<key>[^'\"]+)(?P=q)(?P<eq>\s*:\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?)"
)


def _decoded(text: str) -> str:
    """``text`` percent-decoded until it no longer changes (a few rounds at most)."""
    for _ in range(4):
        decoded = unquote_plus(text)
        if decoded == text:
            break
        text = decoded
    return text


def is_secret_key(key: str) -> bool:
    """Whether a connection parameter named ``key`` carries a secret (see above)."""
    name = unicodedata.normalize("NFKC", _decoded(key)).casefold()
    name = re.sub(r"[^0-9a-z]", "", name)
    return name not in _NOT_SECRET and any(word in name for word in _SECRET_WORDS)


def _holds_secret(value: str) -> bool:
    """A value that itself carries a secret: a connection string, a URL or a dict with one.

    Any ``key=`` or ``key:`` inside counts, nested ones too (``dsn=dsn%3Dpassword%253Dx``):
    no recursion, so no hostile nesting can make it deep or slow.
    """
    decoded = _decoded(value)
    if _mask_userinfo(decoded, whole=False) != decoded:
        return True
    return any(is_secret_key(m["key"]) for m in _ANY_KEY.finditer(decoded))


def _mask_pair(match: re.Match[str]) -> str:
    key, value = match["key"], match["value"]
    if _ALREADY_MASKED.fullmatch(value):  # "cannot connect to URL?password=***: ..."
        return match[0]
    if not (is_secret_key(key) or (value and _holds_secret(value))):
        return match[0]
    if value[:1] in ("'", '"') and value[-1:] == value[:1] and len(value) > 1:
        return f"{key}{match['eq']}{value[0]}{MASK}{value[0]}"  # keep the quotes
    return f"{key}{match['eq']}{MASK}"


def _mask_dict_pair(match: re.Match[str]) -> str:
    if not is_secret_key(match["key"]):
        return match[0]
    quote = match["value"][:1]
    return f"{match['q']}{match['key']}{match['q']}{match['eq']}{quote}{MASK}{quote}"


def _mask_userinfo(text: str, *, whole: bool) -> str:
    """Hide the password of each ``scheme://user:password@`` in ``text``.

    ``whole``: ``text`` is one URL, whitespace and all; else it is free text, where a
    URL ends at whitespace.
    """
    out: list[str] = []
    done = 0
    # the next '@' (and whitespace, ':' or '/') at or after a position, found once and
    # reused by the schemes that follow, so that text like '://' * 100_000 stays linear
    next_at = next_space = next_stop = -2
    for scheme in _SCHEME.finditer(text):
        start = scheme.end()
        if start < done:  # inside a password already hidden
            continue
        if not whole and next_space < start:
            space = _SPACE.search(text, start)
            next_space = space.start() if space else len(text)
        end = len(text) if whole else next_space
        # the user name as SQLAlchemy reads it: anything up to ':' that is not '/'
        if next_stop < start:
            stop = _USER_END.search(text, start)
            next_stop = stop.start() if stop else len(text)
        colon = next_stop
        if colon >= end or text[colon] != ":":
            continue
        if next_at <= colon:
            next_at = text.find("@", colon + 1)
            next_at = len(text) if next_at < 0 else next_at
        first_at = next_at
        if first_at >= end:
            continue
        query = text.find("?", first_at, end)
        last_at = text.rfind("@", colon + 1, query if query >= 0 else end)
        out += [text[done : colon + 1], MASK]
        done = last_at
    out.append(text[done:])
    return "".join(out)


def _mask_bad_port(match: re.Match[str]) -> str:
    """A port that is not a number, in a URL that does not parse: perhaps a password
    typed without its ``@host`` (``postgresql://user:secret/db``)."""
    return match[0] if match[0][len(match["head"]) :].isdigit() else match["head"] + MASK


def mask_secrets(text: str) -> str:
    """Hide every password in free text: in URLs (userinfo and query), in libpq
    ``key=value`` strings and in dict reprs. Safe on any text; idempotent."""
    text = _mask_userinfo(text, whole=False)
    text = _QUERY_PARAM.sub(_mask_pair, text)
    text = _CONNINFO_PAIR.sub(_mask_pair, text)
    return _DICT_PAIR.sub(_mask_dict_pair, text)


def _query_values(url: URL) -> Iterable[tuple[str, str]]:
    for key in sorted(url.query):
        value = url.query[key]
        for one in (value,) if isinstance(value, str) else value:
            yield key, one


def _render_masked(url: URL) -> str:
    """A parsed URL rendered as SQLAlchemy does, with its password and secret query
    values hidden (SQLAlchemy's own ``hide_password`` hides only the userinfo)."""
    text = url.set(query={}).render_as_string(hide_password=True)
    pairs = [
        f"{quote_plus(key)}="
        + (MASK if is_secret_key(key) or _holds_secret(value) else quote_plus(value))
        for key, value in _query_values(url)
    ]
    return text + ("?" + "&".join(pairs) if pairs else "")


def _secrets_of(url: URL) -> set[str]:
    found = {str(url.password)} if url.password is not None else set()
    found |= {v for k, v in _query_values(url) if is_secret_key(k) or _holds_secret(v)}
    return {secret for secret in found if secret}


def _shows(text: str, secrets: set[str]) -> set[str]:
    return {s for s in secrets if s in text or s in unquote_plus(text)}


def mask_url(url: str | URL) -> str:
    """Render a URL with every secret in it replaced by ``***`` (see above).

    A string is masked where it stands, so the rest reads exactly as the operator typed
    it; then, when it parses, we check that no password SQLAlchemy would send is left
    (a URL shaped so oddly that the two readings differ), and else show SQLAlchemy's
    rendering of it, masked. A string that does not parse is masked as free text.
    """
    if isinstance(url, URL):
        return _render_masked(url)
    masked = mask_secrets(_QUERY_PARAM_WHOLE.sub(_mask_pair, _mask_userinfo(url, whole=True)))
    try:
        parsed = make_url(url)
    except Exception:  # a malformed URL is masked as text, never echoed
        return _PORT.sub(_mask_bad_port, masked, count=1)
    rendered = _render_masked(parsed)
    secrets = _secrets_of(parsed)
    return rendered if _shows(masked, secrets) - _shows(rendered, secrets) else masked


class MaskedOutput:
    """A text stream that passes what is written through :func:`mask_secrets`.

    For output a library prints itself: Alembic's ``current --verbose`` prints
    ``Current revision(s) for URL:`` with only the userinfo password hidden, so a
    ``?password=`` would show. ``env.py`` wraps ``config.stdout`` in one (Alembic writes
    each line in one call, so a URL is never split between two writes). Not for
    ``--sql`` output: a reviewed script is shown exactly as it will run.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(mask_secrets(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, encoding, isatty, ...
        return getattr(self.stream, name)
