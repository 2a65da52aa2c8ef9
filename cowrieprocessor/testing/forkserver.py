"""``alembic`` and ``cowrie-db`` as child processes forked from a Python that has
already imported what they import, instead of a new interpreter each.

A new ``alembic`` spends 0.6-0.9 s of CPU on this machine importing SQLAlchemy,
psycopg2, Alembic and our modules before it reads its first argument, and the suite
starts some 500 commands. The fork server (:mod:`.forkserver_main`, one per interpreter
in each test process, started on first use) pays that once. Each command is still a
process of its own: forked from the server, it takes its own arguments, environment,
working directory and standard streams; runs the console script file itself as
``__main__`` (``runpy``: the script's own import and ``sys.exit(main())``, so a wrong
entry point fails here as it would in a shell); exits with the status a new
interpreter would (a traceback and 1, 130 on Ctrl-C by our handler, death by SIGINT
otherwise); and is signalled and ``kill -9``-ed by its pid. :class:`Forked` answers as
``subprocess.Popen`` does.

What stays a new interpreter (plain ``subprocess``): a command with a ``preexec_fn``
(resource limits, another user), anything that is not a Python script, and every
command when ``COWRIE_TEST_NO_FORKSERVER`` is set. ``tests/test_test_harness.py`` runs
the same commands both ways and compares what they print and how they exit.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

NO_FORKSERVER = "COWRIE_TEST_NO_FORKSERVER"  # set: every command is a new interpreter
SERVER = Path(__file__).with_name("forkserver_main.py")
# a script's first line, naming a Python interpreter
_SHEBANG = re.compile(r"#!(?P<python>/\S+/python[\d.]*)\n")


@functools.cache
def interpreter(program: str) -> str | None:
    """The Python interpreter of ``program`` when it is a Python script (a console script
    ``alembic``, ``cowrie-db``, as pip and uv write them); else None."""
    try:
        with open(program, "rb") as script:
            first = script.readline().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    found = _SHEBANG.fullmatch(first)
    return found["python"] if found else None


def serves(argv: Sequence[str]) -> bool:
    """True when ``argv`` is a command the fork server starts (see the module's doc)."""
    return bool(argv) and not os.environ.get(NO_FORKSERVER) and interpreter(argv[0]) is not None


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
        """As ``Popen.send_signal``: a child that ended (and was reaped by the server)
        after :meth:`poll` looked is not an error; its status follows by :meth:`wait`."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The server process for one interpreter, and a connection to it per command."""

    def __init__(self, python: str) -> None:
        self._folder = tempfile.mkdtemp(prefix="cowrie-forkserver-")
        self.path = os.path.join(self._folder, "socket")
        self.process = subprocess.Popen(
            [python, str(SERVER), self.path],
            stdin=subprocess.PIPE,  # the lifeline: closed when this process ends
            stdout=subprocess.PIPE,
        )  # its environment reaches no child: each is given its own
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
        """Fork the Python script ``argv[0]`` with fds ``stdio`` as its 0, 1, 2."""
        request = {"argv": argv, "env": dict(env), "cwd": os.fspath(cwd)}
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


_servers: dict[str, ForkServer] = {}
_servers_lock = threading.Lock()


def server(argv: Sequence[str]) -> ForkServer:
    """The fork server of ``argv[0]``'s interpreter in this process, started on first
    use and stopped at its exit."""
    python = interpreter(argv[0])
    assert python is not None, argv[0]
    with _servers_lock:
        found = _servers.get(python)
        if found is None or found.process.poll() is not None:
            found = _servers[python] = ForkServer(python)
            atexit.register(found.close)
        return found


def spawn_piped(argv: list[str], env: Mapping[str, str], cwd: Path) -> Forked:
    """``Popen(argv, stdin=DEVNULL, stdout=PIPE, stderr=STDOUT, text=True)``, forked."""
    read_end, write_end = os.pipe()
    with open(os.devnull, "rb") as devnull:
        try:
            proc = server(argv).spawn(argv, env, cwd, (devnull.fileno(), write_end, write_end))
        finally:
            os.close(write_end)
    proc.stdout = open(read_end, encoding="utf-8", errors="replace")  # noqa: SIM115
    return proc


def run(
    argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
    timeout=timeout)``, forked when the server starts ``argv`` (killed on the timeout as
    ``subprocess.run`` kills)."""
    if not serves(argv):
        return subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
    with (
        open(os.devnull, "rb") as devnull,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        proc = server(argv).spawn(argv, env, cwd, (devnull.fileno(), out.fileno(), err.fileno()))
        try:
            status = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        texts = []
        for stream in (out, err):
            stream.seek(0)
            texts.append(universal_newlines(stream.read().decode("utf-8", errors="replace")))
    return subprocess.CompletedProcess(argv, status, texts[0], texts[1])


def universal_newlines(text: str) -> str:
    """What ``subprocess.run(text=True)`` gives for ``text``: universal newlines."""
    return text.replace("\r\n", "\n").replace("\r", "\n")
