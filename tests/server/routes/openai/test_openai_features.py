"""The OpenAI API's features on a real server process with the real model (SmolLM2
135M), through the official `openai` client and raw HTTP: schema-constrained output,
logprobs, logit bias, n, prefill, legacy completions, token-id embeddings.

Kept small (few samples, short answers): the machine has two cores. The contract
side (shapes, 400s) is in tests/server/routes/openai/test_openai_contract.py and
test_openai_completions.py, with the fake engine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from serverproc import ServerProc

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20},
                   "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
SCHEMAS = [
    PERSON,
    {"type": "object", "properties": {"colors": {"type": "array", "minItems": 1, "maxItems": 3,
                                                 "items": {"type": "string", "enum": ["red", "green", "blue"]}}},
     "required": ["colors"], "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "grade": {"type": "string", "enum": ["A", "B", "C"]}},
     "required": ["ok", "grade"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9}, "minItems": 2, "maxItems": 4},
    {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                                      "population": {"type": "integer", "minimum": 0, "maximum": 99999999}},
     "required": ["city", "population"], "additionalProperties": False},
]
# The acceptance figures (100 schema-constrained answers, 50 with a banned
# token) take minutes here: they run under pytest --acceptance (tests/conftest.py); the
# default is a few of each.
SAMPLES, ACCEPTANCE_SCHEMA_SAMPLES, ACCEPTANCE_BIAS_SAMPLES = 5, 100, 50
# Greedy and no repeat penalty: answers that can be compared token for token.
GREEDY = {"temperature": 0, "extra_body": {"repeat_penalty": 1.0}}
CAPITAL = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="module")
def server(tmp_path_factory, chat_model_path):
    with ServerProc(tmp_path_factory.mktemp("oai"), "--threads", "2", "--parallel", "3") as s:
        yield s


@pytest.fixture(scope="module")
def client(server) -> Iterator[openai.OpenAI]:
    # timeout: a hang guard. Closed at the module's end: left to the garbage collector, its
    # pooled socket was reported (ResourceWarning) in the next module's first test.
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600) as c:
        yield c


def valid(obj: Any, schema: dict) -> bool:
    """The JSON Schema keywords SCHEMAS use, checked by hand (no jsonschema package here)."""
    t = schema.get("type")
    if "enum" in schema and obj not in schema["enum"]:
        return False
    if t == "object":
        props = schema.get("properties", {})
        return (isinstance(obj, dict) and set(schema.get("required", ())) <= set(obj)
                and (schema.get("additionalProperties", True) or set(obj) <= set(props))
                and all(valid(v, props[k]) for k, v in obj.items() if k in props))
    if t == "array":
        return (isinstance(obj, list) and schema.get("minItems", 0) <= len(obj) <= schema.get("maxItems", 10**9)
                and all(valid(v, schema["items"]) for v in obj))
    if t == "string":
        return isinstance(obj, str) and len(obj) <= schema.get("maxLength", 10**9)
    if t == "integer":
        return (isinstance(obj, int) and not isinstance(obj, bool)
                and schema.get("minimum", -10**18) <= obj <= schema.get("maximum", 10**18))
    if t == "boolean":
        return isinstance(obj, bool)
    return t is None


def matches_person(obj: Any) -> bool:
    return valid(obj, PERSON)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# -- response_format -------------------------------------------------------------------

def test_json_schema_output_parses_and_matches(client, acceptance: bool):
    samples = ACCEPTANCE_SCHEMA_SAMPLES if acceptance else SAMPLES
    bad = []
    for k in range(samples):
        schema = SCHEMAS[k % len(SCHEMAS)]
        fmt = {"type": "json_schema", "json_schema": {"name": f"s{k % len(SCHEMAS)}", "schema": schema,
                                                      "strict": True}}
        r = client.chat.completions.create(model="x", messages=ask("Answer with the JSON asked for."),
                                           response_format=fmt, temperature=0.8, seed=k, max_tokens=80)
        text = r.choices[0].message.content
        try:
            ok = r.choices[0].finish_reason == "stop" and valid(json.loads(text), schema)
        except ValueError:
            ok = False
        if not ok:
            bad.append((k, r.choices[0].finish_reason, text))
    print(f"\nschema-constrained answers: {samples - len(bad)}/{samples} valid")
    assert bad == [], f"{len(bad)}/{samples} invalid: {bad[:3]}"


def test_json_schema_stream(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    stream = client.chat.completions.create(model="x", messages=ask("Describe a person as JSON."),
                                            response_format=fmt, stream=True, max_tokens=60, seed=1)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert matches_person(json.loads(text)), text


def test_json_object_output_parses(client):
    r = client.chat.completions.create(model="x", messages=ask("Give the capital of France as a JSON object."),
                                       response_format={"type": "json_object"}, max_tokens=60, **GREEDY)
    text = r.choices[0].message.content
    # Room enough for the whole object (greedy: ~20 tokens): it must end, and parse.
    assert r.choices[0].finish_reason == "stop", (r.choices[0].finish_reason, text)
    assert isinstance(json.loads(text), dict), text


def test_bad_schema_is_400(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="x", messages=ask("hi"), response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}})


# -- logprobs, logit_bias --------------------------------------------------------------

def test_logprobs_are_consistent(client):
    r = client.chat.completions.create(model="x", messages=ask(CAPITAL), logprobs=True, top_logprobs=3,
                                       max_tokens=12, **GREEDY)
    choice = r.choices[0]
    content = choice.logprobs.content
    assert content and len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == choice.message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token
        tops = [a.logprob for a in t.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert t.top_logprobs[0].token == t.token and abs(t.top_logprobs[0].logprob - t.logprob) < 1e-4

    # The stream carries the same tokens and figures.
    stream = client.chat.completions.create(model="x", messages=ask(CAPITAL), logprobs=True, top_logprobs=3,
                                            max_tokens=12, stream=True, **GREEDY)
    streamed = [t for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert all(abs(a.logprob - b.logprob) < 1e-3 for a, b in zip(streamed, content))


def test_logit_bias_bans_a_token(server, client, acceptance: bool):
    first = client.chat.completions.create(model="x", messages=ask(CAPITAL), logprobs=True, max_tokens=12,
                                           **GREEDY)
    tokens = [t.token for t in first.choices[0].logprobs.content]
    banned = next(t for t in tokens if "Paris" in t)
    ids = httpx.post(server.url + "/api/tokenize", json={"text": banned, "with_pieces": False}).json()["tokens"]
    assert len(ids) == 1
    for seed in range(ACCEPTANCE_BIAS_SAMPLES if acceptance else SAMPLES):
        r = client.chat.completions.create(model="x", messages=ask(CAPITAL), logprobs=True, max_tokens=12,
                                           logit_bias={str(ids[0]): -100}, temperature=0.8, seed=seed)
        answer = [t.token for t in r.choices[0].logprobs.content]
        assert answer and banned not in answer, answer


def test_logit_bias_outside_vocabulary_is_400(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="x", messages=ask("hi"), logit_bias={"49152": 1})


# -- n, prefill -------------------------------------------------------------------------

def test_n_gives_n_choices(client):
    r = client.chat.completions.create(model="x", messages=ask("Name a colour."), n=3, max_tokens=8, seed=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content for c in r.choices)
    assert r.usage.completion_tokens <= 3 * 8 and r.usage.total_tokens == r.usage.prompt_tokens + \
        r.usage.completion_tokens


def test_prefill_continues_the_answer(client):
    whole = client.chat.completions.create(model="x", messages=ask(CAPITAL), logprobs=True, max_tokens=16,
                                           **GREEDY)
    tokens = [t.token for t in whole.choices[0].logprobs.content]
    assert len(tokens) >= 4
    head = "".join(tokens[:3])
    rest = client.chat.completions.create(model="x", messages=ask(CAPITAL) + [
        {"role": "assistant", "content": head}], max_tokens=16 - 3, **GREEDY)
    # Greedy from the same tokens: the continuation is the rest of the whole answer.
    assert head + rest.choices[0].message.content == whole.choices[0].message.content


# -- /v1/completions, aliases, embeddings -------------------------------------------------------

def test_completions_echo_and_chat_parity(server, client):
    r = client.completions.create(model="x", prompt="The capital of France is", max_tokens=5, echo=True,
                                  **GREEDY)
    assert r.choices[0].text.startswith("The capital of France is") and len(r.choices[0].text) > 24
    # A template-formatted prompt (control tokens parsed) is the chat request's prompt.
    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    raw = (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{CAPITAL}<|im_end|>\n"
           "<|im_start|>assistant\n")
    legacy = client.completions.create(model="x", prompt=raw, max_tokens=12, **GREEDY)
    chat = client.chat.completions.create(model="x", messages=ask(CAPITAL), max_tokens=12, **GREEDY)
    assert legacy.usage.prompt_tokens == chat.usage.prompt_tokens
    assert legacy.choices[0].text == chat.choices[0].message.content


def test_completions_stream_and_logprobs(client):
    stream = client.completions.create(model="x", prompt="One, two, three,", max_tokens=6, stream=True,
                                       logprobs=2, **GREEDY)
    chunks = [c for c in stream if c.choices]
    text = "".join(c.choices[0].text for c in chunks)
    tokens = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert text and "".join(tokens) == text


def test_unprefixed_aliases(server):
    assert httpx.get(server.url + "/models").json()["data"][0]["id"] == "smollm2-135m-instruct"
    r = httpx.post(server.url + "/chat/completions", json={"messages": ask("hi"), "max_tokens": 3}, timeout=60)
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"


def test_embeddings_token_ids(server, embedding_model_dir):
    from tokenizers import Tokenizer

    text = "The cat sits on the mat."
    ids = Tokenizer.from_file(str(embedding_model_dir / "tokenizer.json")).encode(text).ids
    by_text = httpx.post(server.url + "/v1/embeddings", json={"input": text}, timeout=60).json()
    by_ids = httpx.post(server.url + "/v1/embeddings", json={"input": [ids, ids[1:-1]]}, timeout=60).json()
    v = np.array(by_text["data"][0]["embedding"])
    assert [d["index"] for d in by_ids["data"]] == [0, 1], by_ids
    for d in by_ids["data"]:
        assert np.allclose(np.array(d["embedding"]), v, atol=1e-5)
    r = httpx.post(server.url + "/v1/embeddings", json={"input": [10**6]}, timeout=60)
    assert r.status_code == 400


def test_leaving_an_n_stream_stops_every_generation(server):
    before = server.stats()
    body = {"messages": ask("Write the numbers from 1 to 500, separated by commas."), "n": 2, "stream": True,
            "max_tokens": 1000, "temperature": 0, "repeat_penalty": 1.0}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        seen = set()
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"role"' not in line:
                seen.add(json.loads(line[6:])["choices"][0]["index"])
                if seen == {0, 1}:
                    break
    # A wait, not the check (the cores are shared). The client left, so no Done counts
    # these answers' tokens: the engine's are the seconds it took to go idle times its own
    # measured decode speed, and must be far short of max_tokens (both scale alike when busy).
    took = server.wait_idle(within=120)
    deadline = time.monotonic() + 120
    while (after := server.stats())["requests"]["cancelled"] == before["requests"]["cancelled"]:
        assert time.monotonic() < deadline, after["requests"]
        time.sleep(0.02)
    if not after["decode_tokens_per_s"]["mean"]:  # no finished answer yet to measure the speed by
        httpx.post(server.url + "/api/chat", json={"message": "Count to twenty.", "max_tokens": 24}, timeout=600)
    tokens_per_s = server.stats()["decode_tokens_per_s"]["mean"]
    assert tokens_per_s, server.stats()
    assert took * tokens_per_s < body["max_tokens"] // 2, (took, tokens_per_s)


def test_tool_choice_required_gives_a_valid_call(server, client):
    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                       "required": ["city"], "additionalProperties": False}}}
    r = client.chat.completions.create(model="x", messages=ask("What is the weather in Paris?"), tools=[weather],
                                       tool_choice="required", max_tokens=60, **GREEDY)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    args = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and set(args) == {"city"} and isinstance(args["city"], str)

    assert call.id.startswith("call_"), call.id

    # The call and its result go back into the conversation: the model reads the result
    # (greedy, it answers with it), and the prompt grows by exactly the tokens a longer
    # result adds. The call goes back under a fixed id, as a client replaying a recorded
    # conversation sends it: the id is in the prompt (the result names the call it
    # answers) and the server's ids are random (24 hex digits), so with `call.id` the
    # greedy follow-up read a different prompt each run; this model answers by quoting
    # the whole tool_response, id included, and a random id is where it could go astray.
    replayed = {**call.model_dump(), "id": "call_weather_0"}

    def follow(result: str, max_tokens: int) -> Any:
        return client.chat.completions.create(model="x", max_tokens=max_tokens, tools=[weather], tool_choice="none",
                                              messages=[*ask("What is the weather in Paris?"),
                                                        {"role": "assistant", "content": None,
                                                         "tool_calls": [replayed]},
                                                        {"role": "tool", "tool_call_id": replayed["id"],
                                                         "content": result}],
                                              **GREEDY)

    def tokens(text: str) -> int:
        return len(httpx.post(server.url + "/api/tokenize", json={"text": text}, timeout=30).json()["tokens"])

    short, long = "22 degrees, sunny", "22 degrees, sunny, with a light breeze from the west"
    answer = follow(short, 80)
    reply = answer.choices[0].message
    assert answer.choices[0].finish_reason == "stop" and not reply.tool_calls, answer
    assert short in reply.content, reply.content
    longer = follow(long, 1)
    assert longer.usage.prompt_tokens - answer.usage.prompt_tokens == tokens(long) - tokens(short)


@pytest.mark.parametrize("stream", [False, True])
def test_context_overflow_is_a_400_before_any_stream(server, stream):
    body = {"messages": ask("\U0001d518" * 7000), "stream": stream}  # > 4096 tokens in 7,000 characters
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json"), r.text
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["n_prompt_tokens"] > err["n_ctx"] == 4096
