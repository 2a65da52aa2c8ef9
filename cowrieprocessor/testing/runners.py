"""The project's commands as the tests run them: Alembic in-process or as the real
``alembic`` command (run to the end, or as a child process to watch and ``kill -9``),
and ``cowrie-db`` (the real command, or its ``main`` in this process).

Every child process gets the environment of the test run without ``COWRIE_DB_URL``: the
database is always named on the command line, never picked up from the operator's shell.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config
from sqlalchemy.exc import DBAPIError

from cowrieprocessor.backfill.progress import progress_table as progress
from cowrieprocessor.backfill.progress import workers_of
from cowrieprocessor.settings import PROJECT_ROOT
from cowrieprocessor.testing import forkserver
from cowrieprocessor.testing.forkserver_main import exit_status

ALEMBIC_BIN = Path(sys.executable).parent / "alembic"
COWRIE_DB = Path(sys.executable).parent / "cowrie-db"
RUN_TIMEOUT = 300.0
# how often a test looks at a running command's progress: every look is a query (3 ms of
# CPU here, client and server); 20 ms is finer than any batch the tests wait for
POLL_S = 0.02


def alembic_config(url: str, **x: str) -> Config:
    """Config for the project's alembic.ini with ``-x db=URL`` (and other -x knobs)."""
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.attributes["configure_logger"] = False
    x_args = [f"db={url}", *(f"{k}={v}" for k, v in x.items())]
    cfg.cmd_opts = argparse.Namespace(x=x_args)
    return cfg


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test run's environment without ``COWRIE_DB_URL``, plus ``env``."""
    full = {k: v for k, v in os.environ.items() if k != "COWRIE_DB_URL"}
    full.update(env or {})
    return full


# the real ``alembic`` on the project's alembic.ini
ALEMBIC = [str(ALEMBIC_BIN), "-c", str(PROJECT_ROOT / "alembic.ini")]


def alembic_argv(url: str, *args: str, x: Mapping[str, str] | None = None) -> list[str]:
    """``alembic -c alembic.ini -x db=URL [-x knob=value ...] ARGS``."""
    x_opts = ["-x", f"db={url}"]
    for key, value in (x or {}).items():
        x_opts += ["-x", f"{key}={value}"]
    return [*ALEMBIC, *x_opts, *args]


def run_to_end(
    argv: list[str], env: Mapping[str, str] | None = None, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a command of ours in the project folder to its end; stdout and stderr apart
    (forked from the fork server when it starts ``argv``: :mod:`.forkserver`)."""
    return forkserver.run(argv, child_env(env), PROJECT_ROOT, timeout)


def run_alembic(
    url: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    x: Mapping[str, str] | None = None,
    timeout: float = RUN_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run the real ``alembic`` command against ``url`` to its end; stdout and stderr apart."""
    return run_to_end(alembic_argv(url, *args, x=x), env, timeout)


def cowrie_db(*args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run the real ``cowrie-db`` command to its end; stdout and stderr apart."""
    return run_to_end([str(COWRIE_DB), *args], timeout=timeout)


def cowrie_db_here(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``cowrie-db ARGS`` as :func:`cowrie_db` runs it, but its ``main`` in this process:
    the same stdout, stderr and exit status, without the 0.6 s a new process takes to
    import Python, SQLAlchemy and Alembic. For a command that ends by itself: a refusal,
    an error, a quick read. A job to watch, kill or interrupt, and what only a process
    shows (its environment, its exit as the shell sees it), stay with :func:`cowrie_db`.

    As in the child: the environment without ``COWRIE_DB_URL`` plus ``env``, the project
    folder as the working directory, stdin empty (not a terminal), the root logger
    without handlers (``main``'s ``logging.basicConfig`` writes to the captured stderr),
    ``SystemExit`` an exit status, and an uncaught exception a traceback on stderr and
    status 1. Everything ``main`` may change in this process (the environment, the
    working directory, the standard streams, the loggers, the SIGINT and SIGTERM
    handlers, the warning filters) is put back afterwards. One call at a time, from the
    thread that runs the test."""
    from cowrieprocessor.cli import main  # not imported by the modules that only run children

    stdout, stderr = io.StringIO(), io.StringIO()
    with _as_a_child(env, stdout, stderr):
        try:
            status = exit_status(main(list(args)), stderr)
        except SystemExit as exc:  # argparse (bad usage, --help, --version)
            status = exit_status(exc.code, stderr)
        except Exception:  # a bug: Python's own last words
            traceback.print_exc(file=stderr)
            status = 1
    return subprocess.CompletedProcess(
        [str(COWRIE_DB), *args],
        status,
        forkserver.universal_newlines(stdout.getvalue()),
        forkserver.universal_newlines(stderr.getvalue()),
    )


@contextmanager
def _as_a_child(
    env: Mapping[str, str] | None, stdout: io.StringIO, stderr: io.StringIO
) -> Iterator[None]:
    """This process set up as :func:`run_to_end` sets up its child, and put back after."""
    saved_environ = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    root = logging.getLogger()
    loggers = [root, *list(logging.Logger.manager.loggerDict.values())]
    saved_loggers = [
        (lg, lg.level, list(lg.handlers), lg.propagate, lg.disabled)
        for lg in loggers
        if isinstance(lg, logging.Logger)
    ]
    saved_disable = logging.root.manager.disable
    main_thread = threading.current_thread() is threading.main_thread()
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with warnings.catch_warnings():
            os.environ.pop("COWRIE_DB_URL", None)
            os.environ.update(env or {})
            os.chdir(PROJECT_ROOT)
            logging.disable(logging.NOTSET)
            root.handlers = []  # pytest's capture handlers: basicConfig adds its own
            root.setLevel(logging.WARNING)  # a new process's
            sys.stdin, sys.stdout, sys.stderr = io.StringIO(), stdout, stderr
            yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        if main_thread:
            for signum, on_signal in saved_signals.items():
                if signal.getsignal(signum) is not on_signal and on_signal is not None:
                    signal.signal(signum, on_signal)
        known = {lg for lg, *_ in saved_loggers}
        for lg in list(logging.Logger.manager.loggerDict.values()):
            # a logger made during the call keeps what its module gave it at import,
            # not a handler on the captured streams
            if isinstance(lg, logging.Logger) and lg not in known:
                for handler in list(lg.handlers):
                    if getattr(handler, "stream", None) in (stdout, stderr):
                        lg.removeHandler(handler)
                        handler.close()
        for lg, level, handlers, propagate, disabled in saved_loggers:
            for handler in lg.handlers:
                if handler not in handlers:
                    handler.close()
            lg.handlers, lg.propagate, lg.disabled = handlers, propagate, disabled
            lg.setLevel(level)  # also clears the logging module's cache of levels
        logging.disable(saved_disable)
        os.chdir(saved_cwd)
        for key in set(os.environ) - set(saved_environ):
            del os.environ[key]
        for key, value in saved_environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def progress_state(engine: sa.Engine, job: str) -> tuple[str, str | None, int]:
    """(phase or 'no-row' or 'no-table', last_key, batches committed) of ``job``."""
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.select(progress.c.phase, progress.c.last_key, progress.c.batches).where(
                    progress.c.job == job
                )
            ).first()
    except DBAPIError:  # no progress table (yet, or any more): one query, not a reflection
        return "no-table", None, 0
    if row is None:
        return "no-row", None, 0
    return str(row[0]), row[1], int(row[2])


def batches_committed(engine: sa.Engine, job: str) -> int:
    """How many batches ``job`` has committed (0 before its progress row exists), its
    workers' stripes included (their rows are "<job>/<n>")."""
    try:
        with engine.connect() as conn:
            where = (progress.c.job == job) | workers_of(job)
            found = conn.execute(sa.select(sa.func.sum(progress.c.batches)).where(where))
            return int(found.scalar() or 0)
    except DBAPIError:  # no progress table (yet, or any more): one query, not a reflection
        return 0


def wait_until(what: str, predicate: Callable[[], object], timeout: float = 60.0) -> None:
    """Wait until ``predicate()`` is true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def heartbeat_at(engine: sa.Engine, job: str) -> object:
    """When ``job``'s run last wrote its state to the progress row (None before)."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(progress.c.heartbeat_at).where(progress.c.job == job)
        ).scalar_one_or_none()


def wait_for_heartbeats(engine: sa.Engine, job: str, count: int, timeout: float = 60.0) -> None:
    """Wait until ``job``'s run has written its state ``count`` more times: each is one
    look the run took at its commands and at the server, and one decision it made (a run
    that waits writes one every ``governor.POLL_S``)."""
    seen = [heartbeat_at(engine, job)]

    def written() -> bool:
        now = heartbeat_at(engine, job)
        if now != seen[-1]:
            seen.append(now)
        return len(seen) > count

    wait_until(f"{count} heartbeat(s) of {job}", written, timeout)


class Child:
    """A command as a child process, its output (stdout and stderr, merged) read line by
    line as it comes: to watch a run, time it, and ``kill -9`` it."""

    name = "the command"

    def __init__(
        self,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.lines: list[tuple[float, str]] = []
        self.started = time.monotonic()
        self.proc: subprocess.Popen[str] | forkserver.Forked
        if preexec_fn is None and forkserver.serves(argv):  # :mod:`.forkserver`
            self.proc = forkserver.spawn_piped(argv, child_env(env), PROJECT_ROOT)
        else:
            self.proc = subprocess.Popen(
                argv,
                cwd=PROJECT_ROOT,
                env=child_env(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                preexec_fn=preexec_fn,  # resource limits and capabilities of the child only
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        """Its exit status (``-9`` once killed); fails, killing it, after ``timeout`` s."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} still running after {timeout} s:\n{self.output}"
            ) from None
        self._reader.join(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return rc

    def kill(self) -> None:
        """``kill -9`` (our own child, by its pid), and wait for it."""
        self.proc.send_signal(signal.SIGKILL)
        self.wait(30)

    def wait_for_batches(
        self, engine: sa.Engine, job: str, batches: int, timeout: float = RUN_TIMEOUT
    ) -> bool:
        """Wait until ``job`` has committed ``batches`` batches (True), or the command has
        ended before that (False); fails after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while batches_committed(engine, job) < batches:
            if not self.running():
                return False
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(
                    f"{job}: fewer than {batches} batches after {timeout} s:\n{self.output}"
                )
            time.sleep(POLL_S)
        return True

    def kill_after(
        self,
        engine: sa.Engine,
        job: str,
        batches: int,
        delay: float = 0.0,
        timeout: float = RUN_TIMEOUT,
    ) -> bool:
        """``kill -9`` the command ``delay`` seconds after ``job`` has committed ``batches``
        batches. True when it died of the kill; False when it ended by itself first (it
        has then been waited for: :meth:`wait` gives its status)."""
        if self.wait_for_batches(engine, job, batches, timeout):
            try:
                self.proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                self.kill()
                return self.proc.returncode == -signal.SIGKILL
        self.wait()
        return False

    @property
    def output(self) -> str:
        return "\n".join(line for _t, line in self.lines)

    def times_of(self, text: str) -> list[float]:
        """When each output line containing ``text`` was read."""
        return [t for t, line in self.lines if text in line]


class Alembic(Child):
    """``alembic -x db=URL ...`` as a child process (see :class:`Child`)."""

    name = "alembic"

    def __init__(
        self,
        url: str,
        *args: str,
        x: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(alembic_argv(url, *args, x=x), env, preexec_fn)


class CowrieDb(Child):
    """``cowrie-db ARGS`` as a child process (see :class:`Child`)."""

    name = "cowrie-db"

    def __init__(self, *args: str) -> None:
        super().__init__([str(COWRIE_DB), *args])
