"""Shared fixtures. Real models come through the model store into one cache for the
whole run (NANOCHAT_LITE_HOME, else the user's cache folder), pulled once.
``llama_ref`` is llama.cpp's own tokenizer on the chat model (tests/llama_ref.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from llama_ref import LlamaRef
from pgcluster import pg_cluster, pg_url  # noqa: F401  (fixtures: a throwaway PostgreSQL)
from nanochat_lite import models
from nanochat_lite.config import default_home


@pytest.fixture(scope="session")
def model_home() -> Path:
    return default_home(os.environ)


@pytest.fixture(scope="session")
def chat_model_path(model_home: Path) -> Path:
    return models.ensure(model_home, models.DEFAULT_CHAT, progress=print)


@pytest.fixture(scope="session")
def embedding_model_dir(model_home: Path) -> Path:
    return models.ensure(model_home, models.DEFAULT_EMBEDDING, progress=print)


@pytest.fixture(scope="session")
def llama_ref(chat_model_path: Path) -> Iterator[LlamaRef]:
    """One in-process llama-server (xllamacpp) on the chat model, for the whole run."""
    with LlamaRef(chat_model_path) as ref:
        yield ref
