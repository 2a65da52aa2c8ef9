"""``alembic`` and ``cowrie-db`` as child processes, forked from a Python that has
already imported SQLAlchemy, psycopg2 and Alembic, instead of a new interpreter each.

A new ``alembic`` spends 0.6-0.9 s of CPU importing them before it reads its first
argument; the suite starts some 500 of them. The fork server
(:mod:`.forkserver_main`, one per test process, started on first use) pays that once;
each command is then a process of its own, forked from it, that runs the same console
script entry point (``alembic.config:main``, ``cowrieprocessor.cli:main``) with its own
arguments, environment, working directory and standard streams, imports our modules
afresh, exits with the status the command's own process would, and can be signalled and
``kill -9``-ed by its pid. :class:`Forked` answers as ``subprocess.Popen`` does.

What stays a new interpreter (``subprocess``): a command with a ``preexec_fn`` (resource
limits, another user), any other program, the wheel's commands, and every command when
``COWRIE_TEST_NO_FORKSERVER`` is set. ``tests/test_test_harness.py`` runs the same
commands both ways and compares what they print and how they exit.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

BIN = Path(sys.executable).parent
# each command of ours the fork server can start, by its console script: the entry
# point the script runs (pyproject.toml's [project.scripts], alembic's own)
ENTRY_POINTS = {
    str(BIN / "alembic"): "alembic.config:main",
    str(BIN / "cowrie-db"): "cowrieprocessor.cli:main",
}
NO_FORKSERVER = "COWRIE_TEST_NO_FORKSERVER"  # set: every command is a new interpreter
SERVER = Path(__file__).with_name("forkserver_main.py")


def serves(argv: Sequence[str]) -> bool:
    """True when ``argv`` is a command the fork server starts (see the module's doc)."""
    return bool(argv) and argv[0] in ENTRY_POINTS and not os.environ.get(NO_FORKSERVER)


class Forked:
    """A command forked by the server, as much of ``subprocess.Popen`` as the tests use:
    ``pid``, ``args``, ``returncode``, ``stdout``, ``poll``, ``wait``, ``send_signal``,
    ``kill``."""

    def __init__(self, conn: socket.socket, pid: int, args: list[str]) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self.stdout: IO[str] | None = None

    def _receive(self, timeout: float | None) -> int | None:
        """The exit status once the server has sent it, waiting up to ``timeout`` s
        (None: for ever; 0: not at all)."""
        with self._lock:
            if self.returncode is None:
                self._conn.settimeout(timeout)
                try:
                    message = self._conn.recv(4096)
                except (TimeoutError, BlockingIOError):
                    return None
                if not message:
                    raise RuntimeError(f"the fork server went away before pid {self.pid} ended")
                self.returncode = int(json.loads(message)["status"])
                self._conn.close()
            return self.returncode

    def poll(self) -> int | None:
        return self._receive(0)

    def wait(self, timeout: float | None = None) -> int:
        status = self._receive(timeout)
        if status is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return status

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The server process, and a connection to it per command."""

    def __init__(self) -> None:
        self._folder = tempfile.mkdtemp(prefix="cowrie-forkserver-")
        self.path = os.path.join(self._folder, "socket")
        self.process = subprocess.Popen(
            [sys.executable, str(SERVER), self.path],
            stdin=subprocess.PIPE,  # the lifeline: closed when this process ends
            stdout=subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if k != "COWRIE_DB_URL"},
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()  # or b"" when it died on the way
        if ready != b"ready\n":
            raise RuntimeError(f"the fork server did not start (it said {ready!r})")

    def spawn(
        self,
        argv: list[str],
        env: Mapping[str, str],
        cwd: str | os.PathLike[str],
        stdio: tuple[int, int, int],
    ) -> Forked:
        """Fork ``argv`` (one of :data:`ENTRY_POINTS`) with fds ``stdio`` as its 0, 1, 2."""
        request = {"argv": argv, "entry": ENTRY_POINTS[argv[0]], "env": dict(env)}
        request["cwd"] = os.fspath(cwd)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.connect(self.path)
        socket.send_fds(conn, [json.dumps(request).encode()], list(stdio))
        reply = conn.recv(4096)
        if not reply:
            conn.close()
            raise RuntimeError(f"the fork server did not start {argv[0]}")
        return Forked(conn, int(json.loads(reply)["pid"]), argv)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self._folder, ignore_errors=True)


_server: ForkServer | None = None
_server_lock = threading.Lock()


def server() -> ForkServer:
    """This process's fork server, started on first use and stopped at its exit."""
    global _server
    with _server_lock:
        if _server is None or _server.process.poll() is not None:
            _server = ForkServer()
            atexit.register(_server.close)
        return _server


def spawn_piped(argv: list[str], env: Mapping[str, str], cwd: Path) -> Forked:
    """``Popen(argv, stdin=DEVNULL, stdout=PIPE, stderr=STDOUT, text=True)``, forked."""
    read_end, write_end = os.pipe()
    with open(os.devnull, "rb") as devnull:
        try:
            proc = server().spawn(argv, env, cwd, (devnull.fileno(), write_end, write_end))
        finally:
            os.close(write_end)
    proc.stdout = open(read_end, encoding="utf-8", errors="replace")  # noqa: SIM115
    return proc


def run_captured(
    argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(argv, capture_output=True, text=True, timeout=...)``, forked:
    stdout and stderr apart, killed on the timeout as ``subprocess.run`` kills."""
    with (
        open(os.devnull, "rb") as devnull,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        proc = server().spawn(argv, env, cwd, (devnull.fileno(), out.fileno(), err.fileno()))
        try:
            status = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        texts = []
        for stream in (out, err):
            stream.seek(0)
            data = stream.read().decode("utf-8", errors="replace")
            texts.append(data.replace("\r\n", "\n").replace("\r", "\n"))
    return subprocess.CompletedProcess(argv, status, texts[0], texts[1])
