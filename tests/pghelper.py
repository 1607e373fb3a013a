"""A throwaway PostgreSQL server for tests and benchmarks.

- `PgServer`: `initdb` a cluster under a fresh temporary directory (superuser `hepfast` with a
  password, scram-sha-256 on TCP), start it on 127.0.0.1 and a free port (no other address,
  its Unix socket in the same directory), `restart()`, `terminate_backends()`, `stop()` (which
  removes everything). As root the server programs run as the `postgres` user (PostgreSQL
  refuses root) through `runuser`. Every wait is bounded.
- `pg_server` fixture (module scope): one server per test module, stopped at teardown even when
  a test fails; `pg_db` (function scope) a fresh database on it, its DSN returned. Both skip with
  the reason when the Debian `postgresql` server or psycopg is missing (the test command installs
  them: scripts/ensure-deps.sh).
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

PASSWORD = "pg-" + uuid.uuid4().hex[:16]       # a value no log line contains by accident
USER = "hepfast"


def pg_bindir() -> str | None:
    """Directory of initdb/pg_ctl: the newest Debian /usr/lib/postgresql/N/bin, else PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1])
    exe = shutil.which("initdb")
    return os.path.dirname(exe) if exe else None


def missing_reason() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg not installed (scripts/ensure-deps.sh: pip install 'psycopg[binary]')"
    if pg_bindir() is None:
        return ("PostgreSQL server not installed (scripts/ensure-deps.sh: apt-get install "
                "postgresql)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and no `postgres` user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.bindir = pg_bindir()
        # Under /tmp as root: the `postgres` user must reach it (TMPDIR may be private).
        self.dir = tempfile.mkdtemp(prefix="hepfast-pg-",
                                    dir="/tmp" if os.geteuid() == 0 else None)
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        self.port = _free_port()
        self.settings = {"listen_addresses": "127.0.0.1", "unix_socket_directories": self.dir,
                         "fsync": "off", "synchronous_commit": "off",
                         "full_page_writes": "off", "max_connections": "50",
                         **(settings or {})}
        self._as: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        pwfile = os.path.join(self.dir, "pw")
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        if self._as:
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        self._run([f"{self.bindir}/initdb", "-D", self.data, "-U", USER, f"--pwfile={pwfile}",
                   "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8",
                   "--locale=C"], timeout=120)
        os.unlink(pwfile)
        self.start()

    def _run(self, cmd: list[str], timeout: float = 60) -> None:
        # cwd: the server's own directory (the caller's may be closed to the postgres user)
        r = subprocess.run(self._as + cmd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, cwd=self.dir)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}{r.stderr}\n"
                               f"{self.server_log()}")

    def server_log(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def start(self) -> None:
        opts = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        self._run([f"{self.bindir}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60",
                   "-o", f"-p {self.port} {opts}", "start"], timeout=90)

    def stop_server(self) -> None:
        self._run([f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60",
                   "stop"], timeout=90)

    def restart(self) -> None:
        self.stop_server()
        self.start()

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str = "postgres", **kw):
        import psycopg

        return psycopg.connect(self.dsn(db), connect_timeout=10, **kw)

    def create_db(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        with self.connect(autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return name

    def terminate_backends(self, db: str) -> int:
        """pg_terminate_backend every other connection to `db`; how many there were."""
        with self.connect(autocommit=True) as c:
            rows = c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = %s AND pid <> pg_backend_pid()", (db,)).fetchall()
        return len(rows)

    def stop(self) -> None:
        try:
            self.stop_server()
        except Exception:  # noqa: BLE001 - removing it is what matters now
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_for(pred, timeout: float = 60.0, every: float = 0.1):
    """pred() until truthy (returned) or timeout (the last value returned)."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= end:
            return v
        time.sleep(every)


@pytest.fixture(scope="module")
def pg_server():
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    srv = PgServer()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def pg_db(pg_server) -> str:
    """A fresh database on the module's server; returns its name."""
    return pg_server.create_db()
