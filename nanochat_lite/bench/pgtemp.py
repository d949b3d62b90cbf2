"""A throwaway PostgreSQL cluster for a benchmark: `initdb` in a temp folder, `pg_ctl
start` on a free loopback port, `pg_ctl stop` and the folder removed at the end.

    with TempCluster.start() as pg:      # PgUnavailable says why when it cannot
        url = pg.create_database("bench1")

Binaries are found as the tests find them (tests/pgcluster.py): NANOCHAT_PG_BINDIR when
set (and only there), else the newest /usr/lib/postgresql/*/bin, else `initdb` on PATH.
PostgreSQL refuses to run as root; as root the cluster runs as the `postgres` user that
Debian's package creates. fsync is off: a benchmark's data is thrown away anyway.
Not handled: retrying when another process takes the picked port first (the start fails
and the section says so).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from .common import free_port

BINDIR_ENV = "NANOCHAT_PG_BINDIR"
_PROGRAMS = ("initdb", "pg_ctl", "postgres")
_OPTIONS = "-c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"


class PgUnavailable(RuntimeError):
    """PostgreSQL cannot run here; the message says what is missing and how to get it."""


def bin_dir() -> Path:
    """The folder with initdb, pg_ctl and postgres; PgUnavailable says where we looked."""
    if os.environ.get(BINDIR_ENV):
        found = Path(os.environ[BINDIR_ENV])
        lacking = [p for p in _PROGRAMS if not os.access(found / p, os.X_OK)]
        if lacking:
            raise PgUnavailable(f"{BINDIR_ENV}={found} has no {', '.join(lacking)}")
        return found
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if versions:
        return Path(versions[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PgUnavailable("PostgreSQL's initdb is not in /usr/lib/postgresql/*/bin nor on PATH "
                        f"(install PostgreSQL, or set {BINDIR_ENV} to its bin folder)")


class TempCluster:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="nanochat-bench-pg-"))
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.dir, ignore_errors=True)
                raise PgUnavailable("running as root, and there is no `postgres` user to run PostgreSQL as "
                                    "(PostgreSQL refuses root)") from None
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.started = False

    @classmethod
    def start(cls) -> TempCluster:
        """A running cluster; psycopg and the binaries are checked first (PgUnavailable)."""
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise PgUnavailable("psycopg is not installed (pip install 'nanochat-lite[postgres]')") from None
        cluster = cls(bin_dir())
        try:
            data, log = cluster.dir / "data", cluster.dir / "server.log"
            cluster._run(str(cluster.bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                         "--locale=C", "--encoding=UTF8", "--no-sync")
            cluster._run(str(cluster.bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                         "-o", f"-p {cluster.port} -k {cluster.dir} {_OPTIONS}", "start")
            cluster.started = True
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _run(self, *cmd: str) -> None:
        result = subprocess.run([*self._as, *cmd], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.dir / "server.log"
            raise PgUnavailable(f"{Path(cmd[0]).name} failed ({result.returncode}): "
                                f"{(result.stdout + result.stderr).strip()[-800:]}"
                                f"{' ' + log.read_text(errors='replace')[-800:] if log.exists() else ''}")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database `name` (letters, digits, _); returns its URL."""
        import psycopg

        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r}: letters, digits and _ only")
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def version(self) -> str:
        out = subprocess.run([str(self.bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or "unknown"

    def stop(self) -> None:
        if self.started:
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
            finally:
                self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> TempCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
