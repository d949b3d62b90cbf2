"""Fixtures of the document tests: the real MiniLM embedder (one per module) and the
store each test runs against (SQLite in a temp file, or the throwaway PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanochat_lite.embeddings import Embedder


@pytest.fixture(scope="module")
def embedder(embedding_model_dir: Path) -> Embedder:
    return Embedder(embedding_model_dir, threads=2)


@pytest.fixture(params=["sqlite", "postgres"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database a test's store opens: an SQLite file, or the PostgreSQL cluster's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "h.db")
    return str(request.getfixturevalue("pg_url"))
