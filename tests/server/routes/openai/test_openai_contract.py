"""The OpenAI-compatible chat API's contract, in-process with the fake engine
(`tests/fakes.py`): what reaches the engine and what the client gets back.

Messages and usage, response_format, logprobs and logit_bias, n, prefill. Cases ported
(re-expressed, not copied) from llama.cpp's own server tests
(`tools/server/tests/unit/test_chat_completion.py`) where they belong to the OpenAI
contract, plus the issue #12 contract failures. /v1/completions, embeddings and tool
calls are test_openai_completions.py; the real model's side (schema-constrained
output, real logprobs, a banned token) is test_openai_features.py.
"""

from __future__ import annotations

import pytest
from fakes import OVERFLOW, REPLY, FakeEngine
from openai_helpers import TEXT, chat, error, events, user

from nanochat_lite.server.routes.openai.params import check_schema
from nanochat_lite.server.wire import limits as L
from nanochat_lite.server.wire.errors import RequestError


@pytest.fixture
def fake() -> FakeEngine:
    return FakeEngine(parallel=4)  # n > 1 needs a slot per choice


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


def test_json_schema_name_is_optional(client, fake):
    # OpenAI requires one; llama-server and most clients send none (commit 3f65afd).
    fmt = {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}
    assert chat(client, response_format=fmt).status_code == 200
    assert fake.calls[-1].params.json_schema == {"type": "object"}


def test_text_format_is_free_text(client, fake):
    assert chat(client, response_format={"type": "text"}).status_code == 200
    assert fake.calls[-1].params.json_schema is None


@pytest.mark.parametrize("fmt", [
    {"type": "xml"},
    {"type": 5},
    {},
    "json",
    {"type": "json_schema"},
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


def _with_ref(ref: str) -> dict:
    return {"$defs": {"a": {"type": "integer"}, "a/b": {"type": "string"}},
            "type": "object", "properties": {"pair": {"prefixItems": [{"type": "integer"}, {"type": "string"}]},
                                             "x": {"$ref": ref}}}


@pytest.mark.parametrize("ref", ["#", "#/$defs/a", "#/$defs/a~1b", "#/properties/pair/prefixItems/1"])
def test_local_refs_are_accepted_and_reach_the_engine_as_given(client, fake, ref):
    schema = _with_ref(ref)
    r = chat(client, response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    assert r.status_code == 200, r.text
    assert fake.calls[-1].params.json_schema == schema


@pytest.mark.parametrize("ref", ["#/$defs/b", "#/$defs/a/type/x", "#/$defs/a~1c", "#/properties/pair/prefixItems/2",
                                 "#/$defs/a/", "defs/a"])
def test_a_local_ref_to_nothing_is_400_naming_it(client, fake, ref):
    fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": _with_ref(ref)}}
    err = error(chat(client, response_format=fmt), 400)
    assert ref in err["message"], err
    assert fake.calls == []


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


def test_a_plain_request_asks_for_free_text_without_probabilities(client, fake):
    assert chat(client).status_code == 200
    params = fake.calls[-1].params
    assert (params.json_schema, params.n_probs, params.logit_bias) == (None, 0, ())


def test_prefill_template_leaves_the_turn_open():
    from nanochat_lite.engines.template import CHATML, ChatTemplate

    t = ChatTemplate(CHATML)
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure <|im_end|> and"}]
    parts = t.render_parts(msgs, add_generation_prompt=False, continue_final=True)
    assert "".join(p.text for p in parts) == ("<|im_start|>user\nhi<|im_end|>\n"
                                              "<|im_start|>assistant\nSure <|im_end|> and")
    # The assistant's text stays content (never control tokens), and nothing follows it.
    assert parts[-1].text == "Sure <|im_end|> and" and parts[-1].is_content


def test_prefill_with_empty_assistant_text_opens_the_turn():
    from nanochat_lite.engines.template import CHATML, ChatTemplate

    t = ChatTemplate(CHATML)
    parts = t.render_parts([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],
                           add_generation_prompt=False, continue_final=True)
    assert "".join(p.text for p in parts).endswith("<|im_start|>assistant\n")
