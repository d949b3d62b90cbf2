"""A throwaway PostgreSQL cluster for the tests: `initdb` in a temp folder, `pg_ctl start`
on a free loopback port (Unix socket in the same folder), one fresh database per test,
`pg_ctl stop` and the folder removed at the end.

PostgreSQL refuses to run as root; as root the cluster runs as the `postgres` user
(created by Debian's package), in a folder owned by it. `scripts/test.sh` installs the
package when it is missing. When PostgreSQL cannot be found or started, the tests that
need it fail if the CI environment variable is set, and skip with the reason otherwise.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from serverproc import free_port

# fsync off: the tests kill processes, never the machine; a process kill loses nothing
# committed either way, and the 2-core box is shared.
_SERVER_OPTIONS = "-c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=60"


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def unavailable(reason: str) -> None:
    """Fail under CI (a missing PostgreSQL must never pass silently there), skip otherwise."""
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason} "
                "(install it with `apt-get install postgresql`, or run scripts/test.sh)")


class PgCluster:
    def __init__(self) -> None:
        bindir = _bin_dir()
        if bindir is None:
            raise FileNotFoundError("initdb not found in /usr/lib/postgresql/*/bin or on PATH")
        self.bindir = bindir
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
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.dir} {_SERVER_OPTIONS}", "start")
        self.started = True
        return self

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
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed (pip install -e '.[postgres]')")
    try:
        cluster = PgCluster()
    except (FileNotFoundError, KeyError) as e:
        unavailable(str(e))
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        cluster.stop()
        unavailable(f"could not start a cluster: {e}")
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
