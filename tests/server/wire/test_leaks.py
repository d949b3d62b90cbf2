"""Small leaks (issue #11, item 7): client-facing errors name files, never where they
are on this machine; an embedding model without a vocabulary refuses token-id input
with a 4xx, not a 500."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from nanochat_lite.history import ConversationStore
from nanochat_lite.redact import redact_paths
from nanochat_lite.server import Runtime, create_app
from nanochat_lite.server.guards.security import SecurityConfig


class _NoVocabEmbedder:
    model_name = "fake-embed"
    dim = 4  # no model_dir: nothing to read token ids with

    def embed(self, texts: list[str]):  # pragma: no cover - never reached here
        raise AssertionError("token ids must be refused before embedding")


class _MissingVocabEmbedder(_NoVocabEmbedder):
    model_dir = "/root/secret-home/models/fake-embed"  # no vocab.txt there


@pytest.fixture(params=[_NoVocabEmbedder, _MissingVocabEmbedder])
def client(request) -> Iterator[TestClient]:
    rt = Runtime(store=ConversationStore(":memory:"), model_name="fake", embedder_factory=request.param)
    app = create_app(rt, security=SecurityConfig(allowed_hosts=("testserver",)))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
    rt.store.close()


def test_token_ids_without_a_vocabulary_are_a_4xx_naming_the_model(client):
    r = client.post("/v1/embeddings", json={"input": [[1, 2, 3]], "model": "x"})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "token_ids_unsupported" and "'fake-embed'" in error["message"]
    assert "/root" not in r.text and "secret-home" not in r.text


@pytest.mark.parametrize("message, shown", [
    ("llama.cpp could not load /root/.cache/nanochat-lite/models/m/SmolLM2.gguf: bad magic",
     "llama.cpp could not load SmolLM2.gguf: bad magic"),
    ("/home/ann/models/x.gguf: no tokenizer.ggml.tokens list", "x.gguf: no tokenizer.ggml.tokens list"),
    ("cannot read '/srv/my models/c/d.json' (denied)", "cannot read 'd.json' (denied)"),
    ("see https://example.org/a/b", "see https://example.org/a/b"),
    ("1/2/3 of the slots", "1/2/3 of the slots"),
])
def test_redact_paths(message, shown):
    assert redact_paths(message) == shown
