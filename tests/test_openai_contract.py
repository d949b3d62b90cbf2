"""The OpenAI-compatible API's contract, in-process with the fake engine
(`tests/fakes.py`): what reaches the engine and what the client gets back.

Cases ported (re-expressed, not copied) from llama.cpp's own server tests
(`tools/server/tests/unit/test_chat_completion.py`, `test_completion.py`,
`test_embedding.py`) where they belong to the OpenAI contract, plus the issue #12
contract failures. The real model's side (schema-constrained output, real logprobs,
a banned token) is in test_openai_features.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from fakes import OVERFLOW, REPLY, FakeEngine
from nanochat_lite.engine import SamplingParams
from nanochat_lite.history import ConversationStore
from nanochat_lite.server import Runtime, create_app
from nanochat_lite.server import limits as L
from nanochat_lite.server.openai_params import check_schema
from nanochat_lite.server.limits import RequestError
from nanochat_lite.server.security import SecurityConfig

TEXT = "".join(REPLY)
V = "/v1/chat/completions"


@pytest.fixture
def fake() -> FakeEngine:
    return FakeEngine(parallel=4)


@pytest.fixture
def client(fake: FakeEngine) -> Iterator[TestClient]:
    rt = Runtime(store=ConversationStore(":memory:"), model_name="fake")
    rt.set_engine(fake)
    app = create_app(rt, security=SecurityConfig(allowed_hosts=("testserver",)))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
    rt.close()
    rt.store.close()


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


# -- 1. contract -------------------------------------------------------------------

@pytest.mark.parametrize("message", [
    {"role": "user"}, {"role": "user", "content": ""}, {"role": "user", "content": None},
    {"role": "user", "content": []}, {"role": "system", "content": ""}, {"role": "developer"},
    {"role": "assistant"},
])
@pytest.mark.parametrize("stream", [False, True])
def test_message_without_content_is_400(client, fake, message, stream):
    r = chat(client, messages=[user("hi"), message, user("again")] if message["role"] == "assistant"
             else [message], stream=stream)
    error(r, 400, param=None)
    assert fake.calls == []


def test_usage_only_on_the_final_empty_chunk(client):
    evs = events(chat(client, stream=True, stream_options={"include_usage": True}))
    assert evs[-1] == "[DONE]"
    chunks = evs[:-1]
    with_usage = [c for c in chunks if c.get("usage")]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": len(REPLY),
                                   "total_tokens": 2 + len(REPLY)}
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and "usage" not in finish[0]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == TEXT


@pytest.mark.parametrize("n", [1, 3])
def test_without_include_usage_usage_rides_once_on_the_last_finish(client, n):
    # llama-server's place for it (and ours before include_usage existed); once only.
    chunks = events(chat(client, stream=True, n=n))[:-1]
    assert [c for c in chunks if "usage" in c] == [chunks[-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == n * len(REPLY)


@pytest.mark.parametrize("stream", [False, True])
def test_context_overflow_is_context_length_exceeded(client, fake, stream):
    r = chat(client, messages=[user("hi " + OVERFLOW)], stream=stream)
    err = error(r, 400, "context_length_exceeded", "messages")
    assert err["n_prompt_tokens"] == fake.n_ctx + 1 and err["n_ctx"] == fake.n_ctx
    assert err["type"] == "invalid_request_error"
    assert r.headers["content-type"].startswith("application/json")


def test_our_api_keeps_context_overflow(client):
    r = client.post("/api/chat", json={"message": "hi " + OVERFLOW})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_overflow"


def test_plain_request_still_has_the_openai_shape(client):
    body = chat(client).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice == {"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop",
                      "logprobs": None}
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}


def test_max_tokens_gives_length(client):
    body = chat(client, max_tokens=2).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "".join(REPLY[:2])


# -- 2. response_format --------------------------------------------------------------

def test_json_object_sends_an_object_schema(client, fake):
    assert chat(client, response_format={"type": "json_object"}).status_code == 200
    assert fake.calls[-1].params.json_schema == {"type": "object"}


def test_json_schema_reaches_the_engine(client, fake):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
    for stream in (False, True):
        r = chat(client, response_format=fmt, stream=stream)
        assert r.status_code == 200, r.text
        assert fake.calls[-1].params.json_schema == schema


def test_text_format_is_free_text(client, fake):
    assert chat(client, response_format={"type": "text"}).status_code == 200
    assert fake.calls[-1].params.json_schema is None


@pytest.mark.parametrize("fmt", [
    {"type": "xml"},
    {"type": 5},
    {},
    "json",
    {"type": "json_schema"},
    {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},  # no name
    {"type": "json_schema", "json_schema": {"name": "has space", "schema": {"type": "object"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": "string"}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "https://example.com/s.json"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "(("}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "required": "a"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"properties": {"a": 5}}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"anyOf": []}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "minLength": -1}}},
    {"type": "json_object", "schema": {"type": ["object", "bogus"]}},
])
@pytest.mark.parametrize("stream", [False, True])
def test_invalid_response_format_is_400(client, fake, fmt, stream):
    error(chat(client, response_format=fmt, stream=stream), 400)
    assert fake.calls == []


def test_schema_depth_is_limited():
    deep: dict = {"type": "string"}
    for _ in range(L.MAX_SCHEMA_DEPTH + 2):
        deep = {"type": "array", "items": deep}
    with pytest.raises(RequestError, match="nests deeper"):
        check_schema(deep, "response_format")


def test_local_refs_resolve():
    check_schema({"$defs": {"a": {"type": "integer"}}, "type": "object",
                  "properties": {"x": {"$ref": "#/$defs/a"}, "self": {"$ref": "#"}}}, "p")


# -- 3. logprobs and logit_bias --------------------------------------------------------

def test_logprobs_non_stream(client, fake):
    body = chat(client, logprobs=True, top_logprobs=3).json()
    assert fake.calls[-1].params.n_probs == 3
    content = body["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == list(REPLY)
    for c in content:
        assert set(c) == {"token", "logprob", "bytes", "top_logprobs"}
        assert c["logprob"] <= 0 and c["bytes"] == list(c["token"].encode())
        assert len(c["top_logprobs"]) == 3
        assert c["top_logprobs"][0]["token"] == c["token"]
        assert set(c["top_logprobs"][0]) == {"token", "logprob", "bytes"}


def test_logprobs_without_top(client, fake):
    body = chat(client, logprobs=True).json()
    assert fake.calls[-1].params.n_probs == 1
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == len(REPLY) and all(c["top_logprobs"] == [] for c in content)


def test_logprobs_stream(client):
    chunks = events(chat(client, stream=True, logprobs=True, top_logprobs=2))[:-1]
    tokens = []
    for c in chunks:
        ch = c["choices"][0]
        if ch["delta"].get("content"):
            lp = ch["logprobs"]["content"]
            assert "".join(x["token"] for x in lp) == ch["delta"]["content"]
            assert all(len(x["top_logprobs"]) == 2 for x in lp)
            tokens += [x["token"] for x in lp]
    assert tokens == list(REPLY)


def test_no_logprobs_by_default(client, fake):
    assert chat(client).json()["choices"][0]["logprobs"] is None
    assert fake.calls[-1].params.n_probs == 0


@pytest.mark.parametrize("body", [
    {"top_logprobs": 2},  # without logprobs: true
    {"logprobs": True, "top_logprobs": 21},
    {"logprobs": True, "top_logprobs": -1},
    {"logprobs": "yes"},
])
def test_bad_logprobs_are_400(client, fake, body):
    error(chat(client, **body), 400)
    assert fake.calls == []


def test_logit_bias_reaches_the_engine(client, fake):
    assert chat(client, logit_bias={"15": -100, "42": 2.5, "0": 100}).status_code == 200
    assert fake.calls[-1].params.logit_bias == ((15, False), (42, 2.5), (0, 100.0))


@pytest.mark.parametrize("bias", [
    {"abc": 1}, {"-1": 1}, {"1.5": 1}, {"1000": 1},  # the fake's vocabulary has 1000 ids
    {"5": 100.5}, {"5": -101}, {"5": "high"},
    {str(i): 1 for i in range(L.MAX_LOGIT_BIAS + 1)},
])
def test_bad_logit_bias_is_400(client, fake, bias):
    error(chat(client, logit_bias=bias), 400)
    assert fake.calls == []


# -- 4. n ---------------------------------------------------------------------------

def test_n_choices(client, fake):
    body = chat(client, n=3, seed=7).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == TEXT for c in body["choices"])
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3 * len(REPLY),
                             "total_tokens": 2 + 3 * len(REPLY)}
    assert sorted(c.params.seed for c in fake.calls) == [7, 8, 9]


def test_n_stream_interleaves_by_index(client):
    evs = events(chat(client, n=3, stream=True, stream_options={"include_usage": True}))
    assert evs[-1] == "[DONE]"
    text = {0: "", 1: "", 2: ""}
    finishes = {}
    roles = set()
    for c in evs[:-2]:
        (ch,) = c["choices"]
        if ch["delta"].get("role"):
            roles.add(ch["index"])
        text[ch["index"]] += ch["delta"].get("content") or ""
        if ch["finish_reason"]:
            finishes[ch["index"]] = ch["finish_reason"]
    assert roles == {0, 1, 2}
    assert text == {0: TEXT, 1: TEXT, 2: TEXT} and finishes == {0: "stop", 1: "stop", 2: "stop"}
    assert evs[-2]["choices"] == [] and evs[-2]["usage"]["completion_tokens"] == 3 * len(REPLY)


@pytest.mark.parametrize("n", [0, -1, L.MAX_N + 1])
def test_bad_n_is_400(client, fake, n):
    error(chat(client, n=n), 400, param="n")
    assert fake.calls == []


# -- 5. prefill ---------------------------------------------------------------------

def test_trailing_assistant_message_is_continued(client, fake):
    msgs = [user("Count to five."), {"role": "assistant", "content": "1, 2,"}]
    body = chat(client, messages=msgs).json()
    assert body["choices"][0]["message"]["content"] == TEXT
    assert fake.prepared[-1] == [{"role": "user", "content": "Count to five."},
                                 {"role": "assistant", "content": "1, 2,"}]


def test_default_params_untouched():
    assert SamplingParams().json_schema is None and SamplingParams().n_probs == 0


def test_prefill_template_leaves_the_turn_open():
    from nanochat_lite.template import CHATML, ChatTemplate

    t = ChatTemplate(CHATML)
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure <|im_end|> and"}]
    parts = t.render_parts(msgs, add_generation_prompt=False, continue_final=True)
    assert "".join(p.text for p in parts) == ("<|im_start|>user\nhi<|im_end|>\n"
                                              "<|im_start|>assistant\nSure <|im_end|> and")
    # The assistant's text stays content (never control tokens), and nothing follows it.
    assert parts[-1].text == "Sure <|im_end|> and" and parts[-1].is_content


def test_prefill_with_empty_assistant_text_opens_the_turn():
    from nanochat_lite.template import CHATML, ChatTemplate

    t = ChatTemplate(CHATML)
    parts = t.render_parts([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],
                           add_generation_prompt=False, continue_final=True)
    assert "".join(p.text for p in parts).endswith("<|im_start|>assistant\n")


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
    rt.set_engine(FakeEngine())
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
    assert schema["properties"]["tool_call"]["properties"]["arguments"] == WEATHER["function"]["parameters"]


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
    rt.set_engine(fake)
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
