"""A JSON Schema the engine cannot enforce is a 400 on every door that takes one
(`response_format`, tool `parameters`; streamed or not), found before the request reaches
the engine — never a 200 with unconstrained text. In-process with the fake engine: the
check under test is the real one (engines/grammar.py, the engine's own compiler)."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient

from fakes import FakeEngine
from openai_helpers import chat, error, user
from schema_cases import ENFORCEABLE, HOSTILE


def _format(schema: dict, name: str | None = "answer") -> dict:
    spec: dict = {"schema": schema}
    if name is not None:
        spec["name"] = name
    return {"type": "json_schema", "json_schema": spec}


def _tool(schema: dict) -> list[dict]:
    return [{"type": "function", "function": {"name": "f", "parameters": schema}}]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("name", HOSTILE)
def test_unenforceable_response_format_is_a_400_before_the_engine(client: TestClient, fake: FakeEngine,
                                                                  name: str, stream: bool) -> None:
    schema, reason = HOSTILE[name]
    t0 = time.perf_counter()
    r = chat(client, response_format=_format(schema, name=None), stream=stream)
    elapsed = time.perf_counter() - t0
    err = error(r, 400)
    assert err["type"] == "invalid_request_error" and err["param"].startswith("response_format"), err
    assert reason.lower() in err["message"].lower(), err
    assert elapsed < 2.0, elapsed
    assert fake.calls == []  # nothing reached the engine


@pytest.mark.parametrize("name", HOSTILE)
def test_unenforceable_tool_parameters_are_a_400(client: TestClient, fake: FakeEngine, name: str) -> None:
    schema, reason = HOSTILE[name]
    # Tools may refer only to #/$defs/...: a reference to the root is refused by that rule first.
    root_ref = "#" in _refs(schema)
    for choice in ("auto", "required", {"type": "function", "function": {"name": "f"}}):
        r = chat(client, tools=_tool(schema), tool_choice=choice)
        err = error(r, 400)
        said = err["message"].lower()
        assert err["param"].startswith("tools"), (choice, err)
        assert ("references are supported" in said) if root_ref else (reason.lower() in said), (choice, err)
    assert fake.calls == []


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


@pytest.mark.parametrize("name", ENFORCEABLE)
def test_enforceable_schemas_reach_the_engine_shaped_for_it(client: TestClient, fake: FakeEngine, name: str) -> None:
    # OpenAI requires a name; llama-server and most clients send none: both are accepted.
    for spec_name in (None, "answer"):
        r = chat(client, response_format=_format(ENFORCEABLE[name], name=spec_name))
        assert r.status_code == 200, r.text
    assert len(fake.calls) == 2
    assert all(c.params.json_schema == ENFORCEABLE[name] for c in fake.calls)


def test_a_bad_schema_name_is_still_refused(client: TestClient) -> None:
    r = chat(client, messages=[user("hi")], response_format=_format({"type": "object"}, name="no spaces allowed"))
    error(r, 400, param="response_format.json_schema.name")
