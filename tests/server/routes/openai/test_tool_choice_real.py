"""`tool_choice: "required"` and a named function always come back as `tool_calls` whose
arguments validate against the tool's schema (issue #20 item 4: once a JSON text came back
in `content`). The real model through the official `openai` client; 12 requests by default,
100 with `--acceptance`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import pytest

from serverproc import ServerProc

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"],
                   "additionalProperties": False}}}
QUESTIONS = ["What's the weather in Paris?", "Is it cold in Oslo today?", "Tell me a joke.",
             "What time is it in Tokyo?", "hi", "Summarise the French revolution in one line."]


@pytest.fixture(scope="module")
def server(tmp_path_factory, chat_model_path) -> Iterator[ServerProc]:
    with ServerProc(tmp_path_factory.mktemp("tools"), "--threads", "2", "--parallel", "4") as s:
        yield s


def _valid(name: str, args: dict) -> bool:
    if name == "get_weather":
        return set(args) == {"city", "unit"} and isinstance(args["city"], str) and args["unit"] in (
            "celsius", "fahrenheit")
    return name == "get_time" and set(args) == {"zone"} and isinstance(args["zone"], str)


def test_required_and_named_tool_choice_always_give_valid_tool_calls(server: ServerProc, request) -> None:
    from openai import OpenAI

    count = 100 if request.config.getoption("--acceptance", default=False) else 12
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    seen: Counter[str] = Counter()
    for i in range(count):
        choice = "required" if i % 2 == 0 else {"type": "function", "function": {"name": "get_time"}}
        r = client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            tools=[WEATHER, TIME], tool_choice=choice, temperature=0.8, seed=i, max_tokens=200)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.tool_calls, (i, c)
        call = c.message.tool_calls[0].function
        args = json.loads(call.arguments)
        assert _valid(call.name, args), (i, call)
        if isinstance(choice, dict):
            assert call.name == "get_time", (i, call)
        seen[call.name] += 1
    print(f"\n{count} requests: {count} with tool_calls whose arguments validate; by tool: {dict(seen)}")
