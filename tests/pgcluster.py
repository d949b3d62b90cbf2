"""A throwaway PostgreSQL cluster for the tests: `initdb` in a temp folder, `pg_ctl start`
on a free loopback port (Unix socket in the same folder), one fresh database per test,
`pg_ctl stop` and the folder removed at the end.

PostgreSQL refuses to run as root; as root the cluster runs as the `postgres` user
(created by Debian's package), in a folder owned by it. `scripts/test.sh` installs the
package when it is missing. PostgreSQL is required: when it cannot be found or started,
the tests that need it fail (tests/optout.py: NANOCHAT_TEST_SKIP=postgres skips them on
purpose). Its binaries come from NANOCHAT_PG_BINDIR when set (and only from there), else
the newest /usr/lib/postgresql/*/bin, else `initdb` on PATH.

PostgreSQL cannot bind port 0 and tell us the port, so the port is a free one picked
here; when another process takes it before the postmaster binds it, the start is
retried on another.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from optout import missing, skip_if_opted_out

from nanochat_lite.bench import pgtemp
from serverproc import free_port

# fsync off: the tests kill processes, never the machine; a process kill loses nothing
# committed either way, and the 2-core box is shared.
_SERVER_OPTIONS = "-c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=60"
BINDIR_ENV = pgtemp.BINDIR_ENV
START_ATTEMPTS = 5  # ports tried when the picked one is taken meanwhile
_FIX = ("install it (`apt-get install postgresql`, or run scripts/test.sh, which does), "
        f"or point {BINDIR_ENV} at its bin folder")


def _bin_dir() -> Path:
    """The folder with initdb, pg_ctl and postgres, found as the benchmark finds it
    (bench/pgtemp.bin_dir); FileNotFoundError says where we looked."""
    try:
        return pgtemp.bin_dir()
    except pgtemp.PgUnavailable as e:
        raise FileNotFoundError(str(e)) from None


class PortTaken(RuntimeError):
    """The postmaster could not bind its port: someone took it after we picked it."""


class PgCluster:
    def __init__(self) -> None:
        self.bindir = _bin_dir()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="nanochat-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")  # KeyError if the package did not create it
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._names = itertools.count()
        self.started = False

    def _run(self, *cmd: str) -> None:
        result = subprocess.run([*self._as, *cmd], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
                               f"{self.log.read_text(errors='replace') if self.log.exists() else ''}")

    def start(self) -> PgCluster:
        # Locale C: the text-search parser then treats every non-ASCII character (CJK,
        # emoji) as a letter, as SQLite's tokenizer does; see nanochat_lite/history/postgres.py.
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--locale=C", "--encoding=UTF8", "--no-sync")
        for attempt in range(START_ATTEMPTS):
            try:
                self._start_postmaster()
                break
            except PortTaken:
                if attempt == START_ATTEMPTS - 1:
                    raise
                self.port = free_port()
        self.started = True
        return self

    def _start_postmaster(self) -> None:
        """`pg_ctl start` on self.port; PortTaken when that port was in use."""
        seen = self.log.stat().st_size if self.log.exists() else 0
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                      "-o", f"-p {self.port} -k {self.dir} {_SERVER_OPTIONS}", "start")
        except RuntimeError as e:
            if self.log.exists():
                with open(self.log, errors="replace") as f:  # this attempt's lines only
                    f.seek(seen)
                    if "could not bind" in f.read():  # "could not bind IPv4 address ...: Address already in use"
                        raise PortTaken(f"port {self.port} was taken: {e}") from e
            raise

    def stop(self) -> None:
        if self.started:
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
            finally:
                self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    skip_if_opted_out("postgres")
    # missing() is called outside the `except` blocks: its message then stands alone
    # (inside, pytest would print the caught exception above it as well).
    problem = fix = ""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        problem, fix = "psycopg is not installed", "pip install -e '.[postgres]' (scripts/test.sh does)"
    if problem:
        missing("postgres", problem, fix)
    try:
        cluster = PgCluster()
    except (FileNotFoundError, KeyError) as e:
        problem, fix = f"PostgreSQL cannot run: {e}", _FIX
    if problem:
        missing("postgres", problem, fix)
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        cluster.stop()
        problem = f"a throwaway PostgreSQL cluster did not start: {e}"
    if problem:
        missing("postgres", problem, "read PostgreSQL's error above")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh database on the session's cluster, dropped after the test."""
    url = pg_cluster.create_database()
    try:
        yield url
    finally:
        pg_cluster.drop_database(url)
