"""A throwaway PostgreSQL cluster for tests and benchmarks.

``initdb`` into a temporary directory, ``pg_ctl start`` on a free port on 127.0.0.1
(its socket in the same directory), and on ``stop()`` the server is stopped and the
directory removed. The binaries are found in ``$COWRIE_PG_BINDIR``, else on PATH, else under
``/usr/lib/postgresql/<version>/bin`` (the newest). PostgreSQL refuses to run as root,
so when we are root the server runs as the ``postgres`` user (or ``nobody``).

Nothing here is used in production; it lives in the package so that the test suite
and the benchmarks start their servers the same way.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

PG_GLOB = "/usr/lib/postgresql/*/bin"
ENV_BINDIR = "COWRIE_PG_BINDIR"  # use exactly this folder (tests use it to hide PostgreSQL)


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started here; the message says why."""


def find_bindir() -> Path:
    forced = os.environ.get(ENV_BINDIR)
    if forced:
        if not Path(forced, "initdb").exists():
            raise PostgresUnavailable(f"{ENV_BINDIR}={forced} has no initdb")
        return Path(forced)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates = [p for p in glob.glob(PG_GLOB) if Path(p, "initdb").exists()]
    if not candidates:
        raise PostgresUnavailable(
            f"no initdb on PATH nor under {PG_GLOB}: install the PostgreSQL server "
            "(e.g. apt-get install postgresql) or set TEST_POSTGRES_URL"
        )
    return Path(max(candidates, key=version))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> str | None:
    """The unprivileged user to run the server as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and no 'postgres' or 'nobody' user exists")


@dataclass
class EphemeralPostgres:
    """One throwaway cluster. ``durable=False`` turns fsync off: fine for tests only."""

    durable: bool = False
    extra_settings: dict[str, str] = field(default_factory=dict)
    port: int = 0
    basedir: Path | None = None
    _bindir: Path | None = None
    _user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self._user is not None:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def start(self) -> str:
        self._bindir = find_bindir()
        self._user = _server_user()
        self.basedir = Path(tempfile.mkdtemp(prefix="cowrie-pg-"))
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.basedir, entry.pw_uid, entry.pw_gid)
        data = self.basedir / "data"
        init = self._run(
            str(self._bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )
        if init.returncode != 0:
            self.stop()
            raise PostgresUnavailable(f"initdb failed: {init.stderr.strip() or init.stdout}")
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.basedir),
            "max_connections": "50",
            "shared_buffers": "256MB",
        }
        if not self.durable:
            # fsync off, but synchronous_commit stays on: with asynchronous commits VACUUM
            # cannot set hint bits or the visibility map for just-committed rows, and
            # index-only scans would then visit the heap (not what production does).
            settings |= {"fsync": "off", "full_page_writes": "off"}
        settings |= self.extra_settings
        last_error = ""
        for _attempt in range(3):  # a port picked as free can be taken before we bind it
            self.port = _free_port()
            options = " ".join(f"-c {k}={v}" for k, v in settings.items())
            started = self._run(
                str(self._bindir / "pg_ctl"),
                "-D",
                str(data),
                "-w",
                "-t",
                "60",
                "-l",
                str(self.basedir / "server.log"),
                "-o",
                f"-p {self.port} {options}",
                "start",
            )
            if started.returncode == 0:
                return self.url
            last_error = started.stderr.strip() or started.stdout.strip()
        log_tail = ""
        log_file = self.basedir / "server.log"
        if log_file.exists():
            log_tail = log_file.read_text(errors="replace")[-2000:]
        self.stop()
        raise PostgresUnavailable(f"pg_ctl start failed: {last_error}\n{log_tail}")

    def stop(self) -> None:
        if self.basedir is None:
            return
        data = self.basedir / "data"
        if self._bindir is not None and (data / "postmaster.pid").exists():
            self._run(str(self._bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.basedir, ignore_errors=True)
        self.basedir = None

    def __enter__(self) -> EphemeralPostgres:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
