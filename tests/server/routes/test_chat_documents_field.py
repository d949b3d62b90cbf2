"""The chat doors' `documents` field with the fake engine (no documents on this app):
bad values are 400s naming the field on /api/chat, the WebSocket and /v1 (before any
store or engine work); a good one on a server without documents is a 404 saying so; the
OpenAPI document describes the field. Real retrieval: tests/server/test_citations.py."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

BAD = ["yes", 3, {"collection": ""}, {"name": "x"}, [], [7]]


@pytest.mark.parametrize("value", BAD)
def test_bad_values_are_400_naming_the_field(client: TestClient, value: object) -> None:
    r = client.post("/api/chat", json={"message": "hi", "documents": value})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and "`documents`" in error["message"]
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "documents": value})
    assert r.status_code == 400 and r.json()["error"]["param"] == "documents", r.text
    with client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "chat", "message": "hi", "documents": value})
        frame = ws.receive_json()
        assert frame["type"] == "error" and frame["code"] == "invalid_request" and "`documents`" in frame["message"]
    assert client.get("/api/conversations").json()["data"]["total"] == 0  # nothing stored


def test_off_means_no_documents_and_without_documents_on_the_server_a_404(client: TestClient) -> None:
    for off in (None, False):
        r = client.post("/api/chat", json={"message": "hi", "documents": off, "max_tokens": 4})
        assert r.status_code == 200 and "citations" not in r.json()["data"], r.text
    r = client.post("/api/chat", json={"message": "hi", "documents": True})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_available", r.text
    assert "documents are not enabled" in r.json()["error"]["message"]


def test_openapi_describes_the_field(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    for name in ("ChatRequest", "WSChat", "OAIChatRequest"):
        field = doc["components"]["schemas"][name]["properties"]["documents"]
        assert "citations" in field["description"] and len(field["anyOf"]) == 4
    chat = doc["paths"]["/api/chat"]["post"]["responses"]
    assert "document_not_found" in chat["404"]["description"] and "citations" in chat["200"]["description"]
