"""The test harness itself: required components fail the run unless opted out by name
(tests/optout.py), and the throwaway PostgreSQL and nginx survive a port another
process took between our pick and their bind (they cannot bind port 0 and report it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import nginxproc
import pgcluster
from optout import ENV, opted_out, skip_if_opted_out

TESTS = Path(__file__).resolve().parent
# One quick test that needs PostgreSQL (the pg_cluster fixture, no model).
PG_TEST = "tests/history/test_postgres.py::test_missing_database_names_createdb"


def test_opt_out_names_are_parsed_and_a_misspelt_one_is_refused() -> None:
    assert opted_out({}) == frozenset()
    assert opted_out({ENV: " Postgres, nginx ,"}) == {"postgres", "nginx"}
    with pytest.raises(ValueError, match="postgress"):
        opted_out({ENV: "postgress"})  # else it would opt out of nothing and say nothing


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in (ENV, pgcluster.BINDIR_ENV, "CI")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=TESTS.parent, env={**clean, **env}, capture_output=True, text=True, timeout=300)


def test_missing_postgres_fails_the_run_for_a_user_too(tmp_path: Path) -> None:
    """No CI variable, PostgreSQL's binaries hidden: the test fails, naming the fix."""
    p = _pytest(PG_TEST, **{pgcluster.BINDIR_ENV: str(tmp_path)})
    assert p.returncode == 1, p.stdout + p.stderr
    assert "1 error" in p.stdout and "skipped" not in p.stdout, p.stdout
    assert f"{pgcluster.BINDIR_ENV}={tmp_path} has no initdb, pg_ctl, postgres" in p.stdout, p.stdout
    assert f"{ENV}=postgres" in p.stdout  # the way out is named


def test_opting_out_skips_and_the_summary_says_so(tmp_path: Path) -> None:
    p = _pytest(PG_TEST, **{ENV: "postgres", pgcluster.BINDIR_ENV: str(tmp_path)})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "1 skipped" in p.stdout, p.stdout
    assert f"SKIPPED BY OPT-OUT: postgres ({ENV}): 1 tests not run" in p.stdout, p.stdout


def test_a_misspelt_opt_out_stops_the_run() -> None:
    p = _pytest(PG_TEST, **{ENV: "postgress"})
    assert p.returncode == 4 and "unknown component(s) postgress" in p.stderr, p.stdout + p.stderr


def _free_port_after(taken: int, monkeypatch: pytest.MonkeyPatch, module: object) -> None:
    """`module`'s next free_port() returns `taken`, as if another process had just bound it."""
    real = module.free_port  # type: ignore[attr-defined]
    picks = iter([taken])
    monkeypatch.setattr(module, "free_port", lambda: next(picks, None) or real())


def _listening(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_pg_cluster_retries_on_a_port_taken_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    skip_if_opted_out("postgres")
    with _listening(0) as holder:
        taken = holder.getsockname()[1]
        _free_port_after(taken, monkeypatch, pgcluster)
        cluster = pgcluster.PgCluster()
        assert cluster.port == taken  # the race, lost
        try:
            cluster.start()
            assert cluster.port != taken
            assert "could not bind" in cluster.log.read_text(errors="replace")  # the clash really happened
            import psycopg

            with psycopg.connect(cluster.url(), autocommit=True) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            cluster.stop()


def test_nginx_retries_on_a_port_taken_meanwhile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    skip_if_opted_out("nginx")
    with _listening(0) as holder:
        taken = holder.getsockname()[1]
        _free_port_after(taken, monkeypatch, nginxproc)
        nginx = nginxproc.Nginx(tmp_path / "nginx", ["127.0.0.1:9"])  # no replica needed: any answer will do
        try:
            nginx.start()
            assert nginx.port != taken
            assert "Address already in use" in nginx.log()  # the clash really happened
        finally:
            nginx.stop()
