"""What a failed or interrupted ``alembic upgrade`` tells the operator: one line, an exit status.

``alembic upgrade head`` is the command every deploy runs. Alembic's own command line
prints a :class:`~alembic.util.CommandError` as ``FAILED: ...`` and lets anything else
escape as a traceback; ours (a bad knob, an unusable URL, a server that refuses us)
would be a page of traceback before the one line that matters. ``env.py`` runs the
migrations through :func:`one_line_failures`, which turns each problem an operator can
act on into one line on stderr naming the problem and what to do, and an exit status:

- 1: the run failed (a batch that kept failing, an error of the database);
- 2: bad usage or an unusable database (a knob, the URL, the server refusing us, an
  unknown revision), the same status ``cowrie-db`` gives for the same problems;
- 130: Ctrl-C (128 + SIGINT);
- 143: SIGTERM (128 + SIGTERM), e.g. a deploy tool's timeout. It is stopped as Ctrl-C is,
  but keeps its own status: a tool that sent SIGTERM recognises its own signal, and a
  log reading 130 would say someone pressed Ctrl-C.

An interruption (Ctrl-C or SIGTERM) rolls back the open batch and the running revision's
transaction (it is not stamped); the batches already committed stay, and the same
command resumes from them. Anything else, a bug, keeps its traceback, and Alembic's own
``--raiseerr`` keeps the traceback of every failure, for debugging.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn, TypeVar

from alembic.script.revision import ResolutionError, RevisionError
from alembic.util import CommandError
from sqlalchemy.exc import DBAPIError, OperationalError

from cowrieprocessor import __version__
from cowrieprocessor.backfill.knobs import KnobError
from cowrieprocessor.db.integrity import UnusableDatabase
from cowrieprocessor.errors import CannotConnect, CowrieError, IncompatibleSchema
from cowrieprocessor.settings import SettingsError, mask_secrets

EXIT_FAILED, EXIT_USAGE = 1, 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, as the shell reports Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143
E = TypeVar("E", bound=BaseException)

# Problems with what the operator gave (a knob, the URL, the database it names): exit 2,
# as ``cowrie-db`` gives for them.
USAGE_ERRORS: tuple[type[BaseException], ...] = (
    KnobError,
    SettingsError,
    IncompatibleSchema,
    CannotConnect,
    UnusableDatabase,
)


class Terminated(KeyboardInterrupt):
    """SIGTERM: the run stops as on Ctrl-C (everything that rolls back on Ctrl-C does)."""


@dataclass(frozen=True)
class Failure:
    """What the operator reads (one line) and the exit status."""

    line: str
    status: int


# --- connecting ------------------------------------------------------------------------

# libpq's prefix, which names the address the masked URL already names.
_LIBPQ_PREFIX = re.compile(r'^connection to server (at|on socket) "[^"]*"(, port \d+)? failed:\s*')
# What to do, by what the driver said (libpq reports no SQLSTATE for a failed connection).
_CONNECT_HINTS: tuple[tuple[str, str], ...] = (
    (
        "password authentication failed",
        "check the user and password in the URL (or PGPASSWORD / ~/.pgpass)",
    ),
    ("no password supplied", "give the password in the URL (or PGPASSWORD / ~/.pgpass)"),
    ("could not translate host name", "check the host name in the URL"),
    ("connection refused", "check the host and port, and that the server is running"),
    ("timeout expired", "check that the host is reachable from here (a firewall?)"),
    ("does not exist", "check the database and user names, or create the database first"),
    ("unable to open database file", "check that the file's folder exists and is writable"),
)
_DEFAULT_CONNECT_HINT = "check the URL and that the database accepts connections"


def cannot_connect(
    masked_url: str, exc: BaseException, given_by: str = "-x db=URL or COWRIE_DB_URL"
) -> CannotConnect:
    """The :class:`CannotConnect` for a failed connection: the masked URL, the driver's
    one-line reason, and a hint; where the URL came from (``given_by``: ``alembic``'s
    ways by default) is named last. ``cowrie-db`` words its failures with it too."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line for line in str(orig).splitlines() if line.strip()]
    first = " ".join(lines[0].split()) if lines else ""  # libpq's "FATAL:  ..." spacing
    reason = mask_secrets(_LIBPQ_PREFIX.sub("", first)) or type(orig).__name__
    lowered = reason.lower()
    hint = next((h for key, h in _CONNECT_HINTS if key in lowered), _DEFAULT_CONNECT_HINT)
    if isinstance(orig, OSError):  # making the SQLite file's folder
        hint = "check the file's path: its folder must be one this user can create or write"
    return CannotConnect(f"cannot connect to {masked_url}: {reason}; {hint} ({given_by})")


@contextmanager
def connecting(masked_url: str) -> Iterator[None]:
    """Turn a failure to connect (the driver's error, or the OS's) into :class:`CannotConnect`."""
    try:
        yield
    except (DBAPIError, OSError) as exc:
        raise cannot_connect(masked_url, exc) from exc


# --- the whole run ---------------------------------------------------------------------


@dataclass
class Run:
    """What the failure line may need to know about the run, filled in as it goes."""

    command: str = "alembic upgrade head"  # the command to run again to resume
    head: str = "head"  # the newest revision this package knows
    database: str = "the database"  # its URL, masked
    lock_timeout_ms: int = 0  # how long a SQLite statement waits for another writer
    # Read only when needed, once the run's transaction was rolled back: the revisions
    # the database is stamped at, and where it stands after an interruption.
    revisions: Callable[[], tuple[str, ...]] | None = None
    standing: Callable[[], str] | None = None


def the_cause(exc: BaseException) -> BaseException:
    """The error the operator must read: ``exc``, unless it was raised while cleaning up
    after one of ours. A run that failed on SQLite's lock fails again when Alembic begins
    its transaction anew on the way out (the lock is still held): that second error
    names only the lock, the first one the range, the attempts and what was committed."""
    return _in_context(exc, CowrieError) or exc


def _in_context(exc: BaseException, kind: type[E]) -> E | None:
    """The first of ``exc`` and the exceptions it was raised while handling that is a
    ``kind``, or None."""
    seen: set[int] = set()
    found: BaseException | None = exc
    while found is not None and id(found) not in seen:
        if isinstance(found, kind):
            return found
        seen.add(id(found))
        found = found.__context__
    return None


def describe(exc: BaseException, run: Run) -> Failure | None:
    """The line and status for ``exc``; None when it is a bug (its traceback is kept)."""
    exc = the_cause(exc)
    if isinstance(exc, USAGE_ERRORS):
        return Failure(mask_secrets(str(exc)), EXIT_USAGE)
    if isinstance(exc, CowrieError):
        return Failure(mask_secrets(str(exc)), EXIT_FAILED)
    if _sqlite_busy(exc):
        return Failure(
            f"SQLite database {run.database} is locked by another writer (waited "
            f"{run.lock_timeout_ms} ms, -x lock_timeout): run `{run.command}` again when "
            "it is done, or wait longer with -x lock_timeout=MS; the running revision was "
            "rolled back",
            EXIT_FAILED,
        )
    if isinstance(exc, CommandError):
        cause = exc.__cause__
        if isinstance(cause, ResolutionError) and cause.argument in _stamped(run):
            return Failure(
                f"database is at revision {cause.argument}, which this cowrieprocessor "
                f"(version {__version__}, revisions up to {run.head}) does not know; it "
                "was migrated by a newer release - deploy with that release; nothing "
                "was changed",
                EXIT_USAGE,
            )
        if isinstance(cause, RevisionError):
            return Failure(
                f"{mask_secrets(str(exc))}; `alembic history` lists the revisions; "
                "nothing was changed",
                EXIT_USAGE,
            )
        return Failure(mask_secrets(str(exc)), EXIT_FAILED)
    return None


def _sqlite_busy(exc: BaseException) -> bool:
    """SQLite's "database is locked": another connection kept the write lock longer than
    the busy timeout (an operator's situation, not a bug)."""
    if not isinstance(exc, OperationalError):
        return False
    name = str(getattr(exc.orig, "sqlite_errorname", ""))
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def _stamped(run: Run) -> tuple[str, ...]:
    """The database's revisions, or () when they cannot be read (then Alembic's own
    message stands)."""
    try:
        return run.revisions() if run.revisions is not None else ()
    except Exception:
        return ()


def interrupted(exc: KeyboardInterrupt, run: Run) -> Failure:
    """The line for Ctrl-C or SIGTERM: what stopped it, what is kept, how to resume."""
    what, status = (
        ("Terminated (SIGTERM)", EXIT_TERMINATED)
        if isinstance(exc, Terminated)
        else ("Interrupted (Ctrl-C)", EXIT_INTERRUPTED)
    )
    where = "the running revision was rolled back and not stamped"
    try:
        if run.standing is not None:
            where = run.standing()
    except (Exception, KeyboardInterrupt):  # the database is gone too, or a second Ctrl-C
        pass  # the plain line above
    return Failure(f"{what}: {where}; run `{run.command}` again to resume", status)


def from_alembic_cli(cmd_opts: object) -> bool:
    """Run by Alembic's own command line (not in-process by ``cowrie-db`` or a test,
    which handle errors their own way, by type)."""
    return callable(getattr(cmd_opts, "cmd", (None,))[0])


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the main thread while the run lasts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt_under(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that ``exc`` was raised while handling, if any: one that
    lands inside a library's own cleanup (SQLAlchemy's commit, seen in CI) can make that
    cleanup fail with an error of its own, which is then the interruption's, not a bug."""
    return _in_context(exc, KeyboardInterrupt)


def _stopped_by(exc: KeyboardInterrupt, run: Run) -> NoReturn:
    stopped = interrupted(exc, run)
    sys.stderr.write(f"{stopped.line}\n")
    raise SystemExit(stopped.status) from None


def one_line_failures(
    migrate: Callable[[], None],
    run: Run,
    *,
    raiseerr: bool = False,
) -> None:
    """Run ``migrate``; an operator's problem becomes one line on stderr and
    ``SystemExit`` with its status (Alembic lets ``SystemExit`` from ``env.py`` through).
    A bug, and everything under ``raiseerr``, is raised as it is."""
    try:
        with sigterm_interrupts():
            migrate()
    except KeyboardInterrupt as exc:
        if raiseerr:
            raise
        _stopped_by(exc, run)
    except Exception as exc:
        stop = interrupt_under(exc)
        if stop is not None and not raiseerr:
            _stopped_by(stop, run)
        failure = describe(exc, run)
        if failure is None or raiseerr:
            raise
        sys.stderr.write(f"FAILED: {failure.line}\n")
        raise SystemExit(failure.status) from None
