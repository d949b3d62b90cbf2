"""Helpers of the OpenAI-compatible API's contract tests (`tests/server/routes/openai/test_openai_*.py`):
post a chat, decode an SSE body, assert an OpenAI error body.

Imported by name; the `client` and `fake` fixtures are in conftest.py (the contract tests
override `fake` with a 4-slot engine, for `n`).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.testclient import TestClient

from fakes import REPLY

TEXT = "".join(REPLY)
V = "/v1/chat/completions"


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def chat(client: TestClient, path: str = V, **body: Any) -> Any:
    body.setdefault("messages", [user("hi")])
    return client.post(path, json=body)


def events(r: Any) -> list[Any]:
    assert r.status_code == 200, r.text
    out = []
    for block in r.text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            data = block[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def error(r: Any, status: int = 400, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"], err
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err
