"""The fork server's own process (:mod:`cowrieprocessor.testing.forkserver` starts it).

Run as a script by the interpreter of the commands it serves (so a virtualenv's server
imports that virtualenv's packages): it imports what every command of ours imports
(:data:`PRELOADED`), and forks a child per command.

Protocol, over a ``SOCK_SEQPACKET`` Unix socket (one connection per child): the client
sends one JSON message ``{"argv", "env", "cwd"}`` (``argv[0]`` a Python script) with
three file descriptors (the child's stdin, stdout and stderr); the server answers
``{"pid": N}`` once it has forked, then ``{"status": S}`` when the child has ended
(``S`` as ``Popen.returncode``: the exit status, or ``-signal``). The server exits
when its stdin (a pipe from the client's process) closes. It stays one thread: a fork
copies only the calling thread. Importing it runs nothing (:mod:`.runners` takes
:func:`exit_status` from here).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import io
import json
import os
import runpy
import selectors
import signal
import socket
import sys
import threading
import traceback
from typing import TextIO

# what every `alembic` and `cowrie-db` imports before it does anything: 0.6-0.9 s of CPU
# per process on this machine, paid here once. Our own modules too: none of them reads
# the environment or the working directory at import (settings are read at each call),
# which tests/test_test_harness.py checks by comparing with new interpreters.
PRELOADED = (
    "sqlalchemy",
    "sqlalchemy.dialects.postgresql.psycopg2",
    "sqlalchemy.dialects.sqlite.pysqlite",
    "sqlalchemy.ext.compiler",
    "psycopg2",
    "psycopg2.extensions",
    "psycopg2.extras",
    "alembic.command",
    "alembic.config",
    "alembic.runtime.environment",
    "alembic.runtime.migration",
    "alembic.script",
    "alembic.op",
    "logging.config",
    "cowrieprocessor.cli",
    "cowrieprocessor.backfill",
    "cowrieprocessor.db.adoption",
    "cowrieprocessor.db.partitioned_ddl",
    "cowrieprocessor.migrate",
)
MAX_MESSAGE = 1 << 20


def main(path: str) -> None:
    del sys.path[0]  # this file's folder: nothing here is to be imported by a child
    for module in PRELOADED:
        importlib.import_module(module)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(sys.stdin, selectors.EVENT_READ, "lifeline")
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, connection)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        for key, _events in selector.select():
            if key.data == "lifeline":
                if not os.read(sys.stdin.fileno(), 4096):
                    return  # the client's process is gone: so is this one
            elif key.data == "accept":
                conn, _ = listener.accept()
                message, fds, _flags, _addr = socket.recv_fds(conn, MAX_MESSAGE, 3)
                request = json.loads(message)
                pid = os.fork()
                if pid == 0:
                    run_child(request, fds)  # never returns
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                children[pidfd] = (pid, conn)
                selector.register(pidfd, selectors.EVENT_READ, "child")
                _send(conn, {"pid": pid})
            else:
                pidfd = key.fd
                pid, conn = children.pop(pidfd)
                selector.unregister(pidfd)
                os.close(pidfd)
                _, status = os.waitpid(pid, 0)
                _send(conn, {"status": os.waitstatus_to_exitcode(status)})
                conn.close()


def _send(conn: socket.socket, message: dict[str, int]) -> None:
    with contextlib.suppress(OSError):  # the client stopped listening (its test ended)
        conn.send(json.dumps(message).encode())


def run_child(request: dict[str, object], fds: list[int]) -> None:
    """In the forked child: become the process ``argv`` would have started, run the
    script as the interpreter runs it, exit as it exits."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # as Popen's close_fds
    os.chdir(str(request["cwd"]))
    env = request["env"]
    assert isinstance(env, dict)
    os.environ.clear()
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a new interpreter's
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    argv = request["argv"]
    assert isinstance(argv, list)
    sys.argv = [str(a) for a in argv]
    sys.path.insert(0, os.path.dirname(sys.argv[0]))  # a script's own folder
    sys.dont_write_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
    sys.stdin, sys.stdout, sys.stderr = _stdio()
    os._exit(_run(sys.argv[0]))


def _stdio() -> tuple[io.TextIOWrapper, io.TextIOWrapper, io.TextIOWrapper]:
    """The standard streams as a new interpreter makes them on fds 0-2 with this
    environment (PYTHONUNBUFFERED read again: it may differ from the server's)."""
    encoding, errors = sys.stdout.encoding, sys.stdout.errors or "strict"
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))

    def writer(fd: int, errors: str, line: bool) -> io.TextIOWrapper:
        raw = io.FileIO(fd, "w", closefd=False)
        binary: io.RawIOBase | io.BufferedWriter = raw if unbuffered else io.BufferedWriter(raw)
        return io.TextIOWrapper(
            binary,  # type: ignore[arg-type]
            encoding=encoding,
            errors=errors,
            line_buffering=line or raw.isatty(),
            write_through=unbuffered,
        )

    stdin = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding=encoding, errors=errors
    )
    return stdin, writer(1, errors, False), writer(2, "backslashreplace", True)


def _run(script: str) -> int:
    """The script run as ``__main__``, as the interpreter runs it, and what the
    interpreter does after: the exit status it was given; a traceback and 1 for an
    uncaught exception; the threads waited for, ``atexit`` run, the streams flushed (120
    when stdout cannot be); an uncaught Ctrl-C ends the process by SIGINT, as Python's
    does."""
    status, interrupted = 0, False
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        status = exit_status(exc.code, sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc()
        interrupted = True
    except BaseException:
        sys.excepthook(*sys.exc_info())
        status = 1
    threading._shutdown()  # type: ignore[attr-defined]  # as Py_FinalizeEx
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except Exception:
        status = 120
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return status


def exit_status(code: object, stderr: TextIO) -> int:
    """The status a process exits with for ``sys.exit(code)`` (a code that is not a
    number is written to ``stderr``). Also :func:`.runners.cowrie_db_here`'s."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    stderr.write(f"{code}\n")
    return 1


if __name__ == "__main__":
    main(sys.argv[1])
