"""`/api/tokenize` with the served model's real tokenizer (in-process; the engine is the
fake, tokenizing does not use it): the answer is bounded by the request (issue #20 item 5:
1 MB in once answered 11.5 MB, ~25 bytes of JSON per one-byte piece); past the bound, a
413 that says how to ask."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from fakes import attach_fake
from nanochat_lite.history import ConversationStore
from nanochat_lite.server import Runtime, create_app
from nanochat_lite.server.routes.tokenize import OUTPUT_FACTOR, OUTPUT_FLOOR_BYTES
from nanochat_lite.tokenizer import Tokenizer
from server_helpers import TEST_SECURITY, assert_error


@pytest.fixture
def client(chat_model_path: Path) -> Iterator[TestClient]:
    tok = Tokenizer.from_gguf(chat_model_path)
    rt = Runtime(store=ConversationStore(":memory:"), model_name="fake", tokenizer_factory=lambda: tok)
    attach_fake(rt)
    with TestClient(create_app(rt, security=TEST_SECURITY), raise_server_exceptions=False) as c:
        yield c
    rt.close()
    rt.store.close()


def test_small_requests_get_every_piece(client: TestClient, chat_model_path: Path) -> None:
    r = client.post("/api/tokenize", json={"text": "Hello world"})
    assert r.status_code == 200, r.text
    ids = Tokenizer.from_gguf(chat_model_path).encode("Hello world")
    assert r.json() == {"tokens": [{"id": i, "text": t} for i, t in zip(ids, ["Hello", " world"])], "count": 2}


def test_the_answer_is_at_most_four_times_the_request(client: TestClient) -> None:
    text = "a b c " * 60_000  # 360 kB of one-byte pieces: with pieces, ~10x the request
    r = client.post("/api/tokenize", json={"text": text})
    err = assert_error(r, "/api/tokenize", 413, "output_too_large")
    assert "with_pieces: false" in err["message"] and f"{OUTPUT_FACTOR}x" in err["message"], err
    ids_only = client.post("/api/tokenize", json={"text": text, "with_pieces": False})
    assert ids_only.status_code == 200, ids_only.text
    assert ids_only.json()["count"] >= 180_000  # really one token per letter or space
    assert len(ids_only.content) <= max(OUTPUT_FACTOR * len(ids_only.request.content), OUTPUT_FLOOR_BYTES)


def test_under_the_floor_even_the_costliest_text_is_answered(client: TestClient) -> None:
    text = "a b " * 500  # 2 kB in, ~25 kB out: within OUTPUT_FLOOR_BYTES
    r = client.post("/api/tokenize", json={"text": text})
    assert r.status_code == 200 and r.json()["count"] >= 1000, r.text
    assert len(r.content) <= OUTPUT_FLOOR_BYTES
