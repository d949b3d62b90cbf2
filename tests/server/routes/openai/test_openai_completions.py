"""The OpenAI-compatible API beyond chat messages, in-process with the fake engine:
/v1/completions and the unprefixed aliases, embeddings of token ids, tool calls.

Cases ported (re-expressed, not copied) from llama.cpp's own server tests
(`tools/server/tests/unit/test_completion.py`, `test_embedding.py`) where they belong to
the OpenAI contract. The chat contract itself is test_openai_contract.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fakes import OVERFLOW, REPLY, FakeEngine, attach_fake
from openai_helpers import TEXT, V, chat, error, events, user
from starlette.testclient import TestClient

from nanochat_lite.history import ConversationStore
from nanochat_lite.server import Runtime, create_app
from nanochat_lite.server.routes.openai.tools import TOOL_STRING_CHARS
from nanochat_lite.server.guards.security import SecurityConfig


@pytest.fixture
def fake() -> FakeEngine:
    return FakeEngine(parallel=4)  # n > 1 needs a slot per choice


# -- 6. /v1/completions and the unprefixed aliases ----------------------------------------

C = "/v1/completions"


def test_completion_non_stream(client, fake):
    body = client.post(C, json={"prompt": "Once upon a time", "max_tokens": 3}).json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert choice == {"text": "".join(REPLY[:3]), "index": 0, "logprobs": None, "finish_reason": "length"}
    assert fake.prepared[-1] == [{"role": "raw", "content": "Once upon a time"}]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def test_completion_echo(client):
    body = client.post(C, json={"prompt": "Say:", "echo": True}).json()
    assert body["choices"][0]["text"] == "Say:" + TEXT


def test_completion_stream_with_echo_and_usage(client):
    evs = events(client.post(C, json={"prompt": "Say:", "echo": True, "stream": True,
                                      "stream_options": {"include_usage": True}}))
    assert evs[-1] == "[DONE]" and evs[-2]["choices"] == [] and evs[-2]["usage"]["completion_tokens"] == 4
    assert all(c["object"] == "text_completion" for c in evs[:-1])
    assert "".join(c["choices"][0]["text"] for c in evs[:-2]) == "Say:" + TEXT
    assert evs[-3]["choices"][0]["finish_reason"] == "stop"


def test_completion_logprobs_legacy_shape(client, fake):
    body = client.post(C, json={"prompt": "x", "logprobs": 2}).json()
    lp = body["choices"][0]["logprobs"]
    assert fake.calls[-1].params.n_probs == 2
    assert lp["tokens"] == list(REPLY) and all(v <= 0 for v in lp["token_logprobs"])
    assert all(len(t) == 2 and REPLY[k] in t for k, t in enumerate(lp["top_logprobs"]))
    assert lp["text_offset"] == [0, 5, 6, 12]


def test_completion_prompt_shapes(client, fake):
    body = client.post(C, json={"prompt": ["a", "b c"], "n": 2}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert sorted(m[0]["content"] for m in fake.prepared[-2:]) == ["a", "b c"]
    assert body["usage"]["prompt_tokens"] == 2 + 3  # each prompt once
    client.post(C, json={"prompt": [5, 6, 7]})
    assert fake.prepared[-1] == [{"role": "raw", "content": "5 6 7"}]
    body = client.post(C, json={"prompt": [[1, 2], [3]], "echo": True}).json()
    assert [c["text"] for c in body["choices"]] == ["1 2" + TEXT, "3" + TEXT]


@pytest.mark.parametrize("body", [
    {"prompt": ""}, {"prompt": []}, {"prompt": [[]]}, {"prompt": 5}, {"prompt": None}, {"prompt": ["a", 1]},
    {"prompt": [1, "a"]}, {"prompt": [True]}, {"prompt": {"text": "a"}}, {},
    {"prompt": [1000]},  # outside the fake's vocabulary
    {"prompt": "a", "suffix": "b"}, {"prompt": "a", "best_of": 3},
    {"prompt": "a", "echo": True, "logprobs": 1}, {"prompt": "a", "logprobs": 21},
    {"prompt": ["a"] * 3, "n": 3}, {"prompt": "a", "n": 0},
    {"prompt": "a", "logit_bias": {"x": 1}}, {"prompt": "a", "max_tokens": 0},
])
def test_bad_completion_is_400(client, fake, body):
    error(client.post(C, json=body), 400)
    assert fake.calls == []


def test_completion_overflow(client):
    err = error(client.post(C, json={"prompt": "a " + OVERFLOW}), 400, "context_length_exceeded", "prompt")
    assert err["n_ctx"] == 2048


@pytest.mark.parametrize("path", ["/chat/completions", "/completions", "/models"])
def test_unprefixed_aliases(client, path):
    if path == "/models":
        assert client.get(path).json()["data"][0]["id"] == "fake"
    elif path == "/completions":
        assert client.post(path, json={"prompt": "a"}).json()["choices"][0]["text"] == TEXT
    else:
        assert chat(client, path).json()["choices"][0]["message"]["content"] == TEXT


# -- 7. embeddings with token ids -----------------------------------------------------------

class FakeEmbedder:
    model_name = "fake-emb"
    dim = 2

    def __init__(self, model_dir):
        self.model_dir = model_dir
        self.texts: list[list[str]] = []

    def embed(self, texts):
        import numpy as np

        from nanochat_lite.embeddings import EmbeddingResult

        self.texts.append(list(texts))
        vectors = np.array([[1.0, 0.0]] * len(texts), np.float32)
        return EmbeddingResult(vectors, [len(t.split()) + 2 for t in texts], [False] * len(texts))


@pytest.fixture
def emb_client(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nem\n##bed\nit\n.\n", encoding="utf-8")
    embedder = FakeEmbedder(tmp_path)
    rt = Runtime(store=ConversationStore(":memory:"), model_name="fake", embedder_factory=lambda: embedder)
    attach_fake(rt, FakeEngine())
    with TestClient(create_app(rt, security=SecurityConfig(allowed_hosts=("testserver",))),
                    raise_server_exceptions=False) as c:
        yield c, embedder
    rt.close()
    rt.store.close()


def test_embedding_token_ids(emb_client):
    c, emb = emb_client
    r = c.post("/v1/embeddings", json={"input": [2, 4, 5, 6, 7, 3]})
    assert r.status_code == 200, r.text
    assert emb.texts[-1] == ["embed it ."]
    r = c.post("/embeddings", json={"input": [[4, 5], [6]]})
    assert r.status_code == 200 and len(r.json()["data"]) == 2
    assert emb.texts[-1] == ["embed", "it"]


@pytest.mark.parametrize("value", [[8], [-1], [[4], []], [[4], "a"], [4, "a"], [True], 5, None, [[4.5]]])
def test_bad_embedding_input_is_400(emb_client, value):
    c, emb = emb_client
    error(c.post("/v1/embeddings", json={"input": value}), 400)
    assert emb.texts == []


# -- 8. tool calls ---------------------------------------------------------------------------

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
CALL_JSON = '{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}'


def split(text: str) -> list[str]:
    return [text[k:k + 7] for k in range(0, len(text), 7)]


def test_required_tool_call(client, fake):
    fake.reply = split(CALL_JSON)
    body = chat(client, messages=[user("Weather in Paris?")], tools=[WEATHER, TIME], tool_choice="required").json()
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    msg = choice["message"]
    assert msg["content"] is None
    (call,) = msg["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    schema = fake.calls[-1].params.json_schema
    assert [o["properties"]["tool_call"]["properties"]["name"] for o in schema["anyOf"]] == [
        {"const": "get_weather"}, {"const": "get_time"}]
    system = fake.prepared[-1][0]
    assert system["role"] == "system" and "get_weather" in system["content"] and "Current weather" in system["content"]


def test_named_tool_choice_constrains_to_that_tool(client, fake):
    fake.reply = split(CALL_JSON)
    r = chat(client, tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert r.json()["choices"][0]["finish_reason"] == "tool_calls"
    schema = fake.calls[-1].params.json_schema
    # the tool's parameters, its free-form string bounded (tools._bounded: a runaway argument
    # would be cut by max_tokens and come back as content)
    params = WEATHER["function"]["parameters"]
    bounded = {**params, "properties": {k: {**v, "maxLength": TOOL_STRING_CHARS} if v == {"type": "string"} else v
                                        for k, v in params["properties"].items()}}
    assert schema["properties"]["tool_call"]["properties"]["arguments"] == bounded


def test_auto_may_answer_in_text(client, fake):
    fake.reply = split('{"response": "It is sunny."}')
    body = chat(client, tools=[WEATHER]).json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "It is sunny."}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert {"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"],
            "additionalProperties": False} in fake.calls[-1].params.json_schema["anyOf"]


def test_tool_choice_none_is_plain_chat(client, fake):
    body = chat(client, tools=[WEATHER], tool_choice="none").json()
    assert body["choices"][0]["message"]["content"] == TEXT
    assert fake.calls[-1].params.json_schema is None and fake.prepared[-1] == [user("hi")]


def test_tool_call_stream(client, fake):
    fake.reply = split(CALL_JSON)
    chunks = events(chat(client, tools=[WEATHER], tool_choice="required", stream=True))[:-1]
    calls = [c["choices"][0]["delta"]["tool_calls"] for c in chunks if c["choices"][0]["delta"].get("tool_calls")]
    assert len(calls) == 1 and calls[0][0]["index"] == 0
    assert json.loads(calls[0][0]["function"]["arguments"]) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_turns_in_the_history(client, fake):
    msgs = [user("Weather in Paris?"),
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                   "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "22 C, sunny"}]
    r = chat(client, messages=msgs, tools=[WEATHER])
    assert r.status_code == 200, r.text
    sent = fake.prepared[-1]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert json.loads(sent[2]["content"]) == {"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    assert json.loads(sent[3]["content"]) == {"tool_response": {"name": "get_weather", "tool_call_id": "call_1",
                                                                "content": "22 C, sunny"}}
    # Without `tools` in this request, the history is still accepted.
    assert chat(client, messages=msgs).status_code == 200


def _call(arguments: Any) -> dict:
    return {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                 "function": {"name": "get_weather", "arguments": arguments}}]}


@pytest.mark.parametrize("body", [
    {"messages": [user("x"), _call("{not json"), user("y")]},
    {"messages": [user("x"), _call("[1, 2]"), user("y")]},
    {"messages": [user("x"), _call(5), user("y")]},
    {"messages": [user("x"), _call('{"city": "P"}'), {"role": "tool", "content": "ok"}]},  # no tool_call_id
    {"messages": [user("x"), _call('{"city": "P"}'), {"role": "tool", "tool_call_id": "zz", "content": "ok"}]},
    {"messages": [user("x"), _call('{"city": "P"}'), {"role": "tool", "tool_call_id": "c1"}]},  # no content
    {"messages": [{"role": "tool", "tool_call_id": "c1", "content": "ok"}]},
    {"messages": [user("x")], "tool_choice": "required"},  # without tools
    {"messages": [user("x")], "tools": [WEATHER], "tool_choice": "sometimes"},
    {"messages": [user("x")], "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
    {"messages": [user("x")], "tools": [{"type": "retrieval", "function": {"name": "a"}}]},
    {"messages": [user("x")], "tools": [{"type": "function", "function": {"name": "bad name"}}]},
    {"messages": [user("x")], "tools": [WEATHER, WEATHER]},
    {"messages": [user("x")], "tools": [{"type": "function", "function": {"name": "f",
                                                                         "parameters": {"type": "nonsense"}}}]},
    {"messages": [user("x")], "tools": [WEATHER], "logprobs": True},
    {"messages": [user("x")], "tools": [WEATHER], "response_format": {"type": "json_object"}},
    {"messages": [user("x"), {"role": "assistant", "content": "partial"}], "tools": [WEATHER]},
])
def test_bad_tool_requests_are_400(client, fake, body):
    error(client.post(V, json=body), 400)
    assert fake.calls == []


def test_aliases_need_the_key_like_v1(fake):
    rt = Runtime(store=ConversationStore(":memory:"), model_name="fake")
    attach_fake(rt, fake)
    app = create_app(rt, security=SecurityConfig(allowed_hosts=("testserver",), keys={"alice": "k" * 32}))
    with TestClient(app, raise_server_exceptions=False) as c:
        for method, path in [("POST", "/chat/completions"), ("POST", "/completions"), ("GET", "/models"),
                             ("POST", "/embeddings")]:
            r = c.request(method, path, json={"messages": [user("hi")], "prompt": "a", "input": "a"})
            assert r.status_code == 401, (path, r.text)
            assert r.headers["cache-control"] == "no-store"
        r = c.get("/models", headers={"Authorization": "Bearer " + "k" * 32})
        assert r.status_code == 200 and r.json()["data"][0]["id"] == "fake"
    rt.close()
    rt.store.close()
    assert fake.calls == []


def test_completion_stream_usage_once_without_include_usage(client):
    chunks = events(client.post(C, json={"prompt": ["a", "b"], "stream": True}))[:-1]
    assert [c for c in chunks if "usage" in c] == [chunks[-1]]
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 8, "total_tokens": 12}


def test_tool_defs_move_to_the_answer_schema_root(client, fake):
    fake.reply = split('{"tool_call": {"name": "add", "arguments": {"a": {"v": 1}}}}')
    tool = {"type": "function", "function": {"name": "add", "parameters": {
        "$defs": {"Num": {"type": "object", "properties": {"v": {"type": "integer"}}}},
        "type": "object", "properties": {"a": {"$ref": "#/$defs/Num"}}, "required": ["a"]}}}
    r = chat(client, tools=[tool], tool_choice="required")
    assert r.status_code == 200, r.text
    schema = fake.calls[-1].params.json_schema
    assert schema["$defs"] == {"Num": {"type": "object", "properties": {"v": {"type": "integer"}}}}
    assert "$defs" not in schema["properties"]["tool_call"]["properties"]["arguments"]
    bad = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"$ref": "#/properties/b"}, "b": {"type": "string"}}}}}
    error(chat(client, tools=[bad], tool_choice="required"), 400)
