"""Embedding endpoints on a real server with the real MiniLM model, through the
official `openai` client and plain HTTP."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from serverproc import ServerProc


@pytest.fixture(scope="module")
def server(tmp_path_factory, chat_model_path, embedding_model_dir):
    with ServerProc(tmp_path_factory.mktemp("emb"), "--threads", "2") as s:
        yield s


def test_openai_client_embeddings(server, openai_client):
    client = openai_client(base_url=server.url + "/v1", api_key="unused")
    r = client.embeddings.create(model="all-minilm-l6-v2", input=["The cat sits on the mat.",
                                                                  "A cat is sitting on a mat.",
                                                                  "Stock markets fell sharply today."])
    v = np.array([d.embedding for d in r.data])
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    sims = v @ v.T
    assert sims[0, 1] > 0.7 > sims[0, 2]  # a paraphrase beats an unrelated sentence
    assert r.usage.prompt_tokens > 10 and r.model == "all-minilm-l6-v2"


def test_base64_and_single_string(server):
    f = httpx.post(server.url + "/v1/embeddings", json={"input": "hello", "encoding_format": "float"}).json()
    b = httpx.post(server.url + "/v1/embeddings", json={"input": "hello", "encoding_format": "base64"}).json()
    vec = np.frombuffer(base64.b64decode(b["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(vec, f["data"][0]["embedding"], atol=1e-6)


def test_api_embeddings_and_truncation(server):
    r = httpx.post(server.url + "/api/embeddings", json={"input": ["", "word " * 600]}).json()
    assert r["success"] is True
    d = r["data"]
    assert d["dimensions"] == 384 and len(d["embeddings"]) == 2
    assert d["truncated"] == [False, True]


BOTH = ("/v1/embeddings", "/api/embeddings")


@pytest.mark.parametrize("body,status,paths", [
    ({"input": []}, 400, BOTH),
    ({"input": ["x"] * 257}, 400, BOTH),
    ({"input": "x" * 8001}, 400, BOTH),
    ({"input": [1, 2, 3]}, 400, BOTH[1:]),  # token ids: valid OpenAI input on /v1 (issue #12), not on /api
    ({"input": "x", "encoding_format": "int8"}, 400, BOTH[:1]),
    ({}, 400, BOTH),
])
def test_limits(server, body, status, paths):
    for path in paths:
        r = httpx.post(server.url + path, json=body)
        assert r.status_code == status, (path, r.text)
    assert httpx.post(server.url + "/v1/embeddings", json={"input": ["x"] * 256}).status_code == 200
    assert httpx.post(server.url + "/v1/embeddings", json={"input": "x" * 8000}).status_code == 200


def test_semantic_search_ranks_by_meaning(server):
    def chat(message):
        r = httpx.post(server.url + "/api/chat", json={"message": message, "max_tokens": 12}, timeout=60)
        return r.json()["data"]["conversation_id"]

    bread = chat("How do I bake sourdough bread at home?")
    bike = chat("What is the best way to repair a flat bicycle tire?")
    r = httpx.get(server.url + "/api/search", params={"q": "baking loaves in the oven", "mode": "semantic"})
    assert r.status_code == 200, r.text
    hits = r.json()["data"]["results"]
    assert hits[0]["conversation_id"] == bread
    assert hits[0]["score"] > max(h["score"] for h in hits if h["conversation_id"] == bike)
    # Deleting a conversation removes its vectors from the ranking.
    httpx.delete(f"{server.url}/api/conversations/{bread}")
    hits = httpx.get(server.url + "/api/search", params={"q": "baking loaves", "mode": "semantic"}).json()
    assert all(h["conversation_id"] != bread for h in hits["data"]["results"])
