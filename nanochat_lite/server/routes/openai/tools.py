"""Tool calls for `/v1/chat/completions`, in llama-server's "generic" format.

Small chat models (SmolLM2's template among them) have no tool-call format of their
own, so every model gets the same one: the tools are described in the system
message, and the answer is constrained (through the engine's `json_schema`) to one
JSON object, either

    {"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    {"response": "plain text"}               (only when tool_choice is "auto")

with `arguments` matching the tool's `parameters` schema. The server turns that
object back into OpenAI's `tool_calls` (or `content`). History turns go the other
way: an assistant's `tool_calls` become that JSON again, a `role: "tool"` result
becomes a user turn `{"tool_response": {...}}`.

Not handled: models' native tool formats (Qwen's `<tool_call>` tags...), several
calls in one answer (`parallel_tool_calls` is accepted, one call is made), and
`logprobs` or `response_format` together with tools (400).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

from ...wire.errors import RequestError
from ...wire.schemas import NamedToolChoice, OAIChatRequest, OAIMessage, Tool
from .params import check_schema

MAX_TOOLS = 64
TOOL_STRING_CHARS = 256  # a free-form string argument, at most (see _bounded)
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
TOOL_PROMPT = (
    "You can call these tools (JSON Schema of their arguments in `parameters`):\n{tools}\n"
    "{how}"
)
HOW_AUTO = ('To call a tool, answer only with {"tool_call": {"name": <tool name>, "arguments": {...}}}. '
            'Otherwise answer with {"response": <your answer>}.')
HOW_CALL = 'Answer only with {"tool_call": {"name": <tool name>, "arguments": {...}}}.'


@dataclass(frozen=True)
class ToolPlan:
    """What tools change in a request: the system text to add and the answer's schema."""

    system: str
    schema: dict[str, Any]
    allow_text: bool  # tool_choice "auto": the model may answer {"response": ...}
    # (where, schema) of each callable tool's parameters alone: with "auto", a tool whose
    # parameters no answer can satisfy leaves the text branch valid, so the whole schema
    # compiles; each tool is checked on its own too, so such a tool is a 400, not a tool
    # that silently can never be called.
    calls: tuple[tuple[str, dict[str, Any]], ...] = ()


def plan(req: OAIChatRequest) -> ToolPlan | None:
    """Check `tools` / `tool_choice`; None when no tool may be called (no tools, or "none")."""
    tools = req.tools or []
    choice = req.tool_choice
    if choice is not None and not tools:
        raise RequestError("`tool_choice` needs `tools`", param="tool_choice")
    if len(tools) > MAX_TOOLS:
        raise RequestError(f"`tools` holds {len(tools)} tools; the limit is {MAX_TOOLS}", param="tools")
    names: set[str] = set()
    for i, t in enumerate(tools):
        if t.type != "function":
            raise RequestError(f"tools[{i}].type must be \"function\", got {t.type!r}", param=f"tools[{i}].type")
        if not _NAME.match(t.function.name):
            raise RequestError(f"tools[{i}].function.name must be 1 to 64 letters, digits, '_', '-' or '.'",
                               param=f"tools[{i}].function.name")
        if t.function.name in names:
            raise RequestError(f"tools[{i}]: a second tool named {t.function.name!r}", param=f"tools[{i}]")
        names.add(t.function.name)
        if t.function.parameters is not msgspec.UNSET and t.function.parameters is not None:
            check_schema(t.function.parameters, f"tools[{i}].function.parameters")
    if not tools or choice == "none":
        return None
    if isinstance(choice, NamedToolChoice):
        if choice.type != "function" or choice.function.name not in names:
            raise RequestError(f"`tool_choice` names {choice.function.name!r}, which is not in `tools`",
                               param="tool_choice")
        chosen = [t for t in tools if t.function.name == choice.function.name]
    elif choice in (None, "auto", "required"):
        chosen = tools
    else:
        raise RequestError(f"`tool_choice` must be \"none\", \"auto\", \"required\" or "
                           f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {choice!r}",
                           param="tool_choice")
    if req.logprobs:
        raise RequestError("`logprobs` together with tools is not supported", code="unsupported_parameter",
                           param="logprobs")
    if req.response_format is not None and req.response_format.type != "text":
        raise RequestError("`response_format` together with tools is not supported", code="unsupported_parameter",
                           param="response_format")
    allow_text = choice in (None, "auto")
    defs: dict[str, Any] = {}
    calls = [_call_schema(t, defs) for t in chosen]
    where = [f"tools[{next(i for i, t in enumerate(tools) if t is c)}].function.parameters" for c in chosen]
    options: list[dict[str, Any]] = [{"type": "object", "properties": {"tool_call": c}, "required": ["tool_call"],
                            "additionalProperties": False} for c in calls]
    if allow_text:
        options.append({"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"],
                        "additionalProperties": False})
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    if defs:
        schema = {**schema, "$defs": defs}
    described = json.dumps([_describe(t) for t in tools], ensure_ascii=False, indent=1)
    system = TOOL_PROMPT.format(tools=described, how=HOW_AUTO if allow_text else HOW_CALL)
    alone = tuple((w, {**c["properties"]["arguments"], "$defs": defs} if defs and isinstance(
        c["properties"]["arguments"], dict) else c["properties"]["arguments"]) for w, c in zip(where, calls))
    return ToolPlan(system, schema, allow_text, alone)


def _params(t: Tool) -> Any:
    p = t.function.parameters
    return {"type": "object"} if p is msgspec.UNSET or p is None else p


def _call_schema(t: Tool, defs: dict[str, Any]) -> dict[str, Any]:
    """The schema of one call. The tool's `$defs` (pydantic writes them) move to the
    answer schema's root, where its `#/$defs/...` references then point."""
    params = _params(t)
    where = f"tool {t.function.name!r}"
    for ref in _refs(params):
        if not ref.startswith("#/$defs/"):
            raise RequestError(f"{where}: only \"#/$defs/...\" references are supported in tool parameters, "
                               f"got {ref!r}", param="tools")
    if isinstance(params, dict) and "$defs" in params:
        params = dict(params)
        for name, sub in params.pop("$defs").items():
            if name in defs and defs[name] != sub:
                raise RequestError(f"{where}: two tools define $defs/{name} differently; rename one",
                                   param="tools")
            defs[name] = sub
    return {"type": "object", "properties": {"name": {"const": t.function.name}, "arguments": _bounded(params)},
            "required": ["name", "arguments"], "additionalProperties": False}


def _bounded(node: Any) -> Any:
    """The schema with every free-form string argument bounded to TOOL_STRING_CHARS: a small
    model once wrote a time zone on and on until max_tokens, and the cut JSON came back as
    content instead of a tool call. Strings the tool bounds itself (maxLength, enum, const,
    pattern, format) are left alone.

    _bounded({"type": "string"}) -> {"type": "string", "maxLength": 256}
    """
    if isinstance(node, list):
        return [_bounded(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _bounded(v) for k, v in node.items()}
    types = out.get("type")
    if (types == "string" or types == ["string"]) and not any(
            k in out for k in ("maxLength", "enum", "const", "pattern", "format")):
        out["maxLength"] = TOOL_STRING_CHARS
    return out


def _refs(node: Any) -> list[str]:
    """Every `$ref` string in a schema. _refs({"items": {"$ref": "#/$defs/a"}}) -> ["#/$defs/a"]"""
    if isinstance(node, dict):
        out = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        for v in node.values():
            out += _refs(v)
        return out
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _describe(t: Tool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": t.function.name}
    if t.function.description:
        out["description"] = t.function.description
    out["parameters"] = _params(t)
    return out


# -- history ----------------------------------------------------------------------------

def assistant_text(i: int, m: OAIMessage, content: str | None) -> str:
    """An assistant turn with `tool_calls`, as the JSON the model would have written.
    Raises RequestError for malformed calls (arguments must be a JSON object's text)."""
    parts = [content] if content else []
    for j, call in enumerate(m.tool_calls or []):
        where = f"messages[{i}].tool_calls[{j}]"
        if call.type != "function":
            raise RequestError(f"{where}.type must be \"function\", got {call.type!r}", param=f"{where}.type")
        if not call.function.name:
            raise RequestError(f"{where}.function.name must not be empty", param=f"{where}.function.name")
        try:
            args = json.loads(call.function.arguments)
        except ValueError as e:
            raise RequestError(f"{where}.function.arguments is not valid JSON ({e})",
                               param=f"{where}.function.arguments") from None
        if not isinstance(args, dict):
            raise RequestError(f"{where}.function.arguments must be a JSON object, got {type(args).__name__}",
                               param=f"{where}.function.arguments")
        parts.append(json.dumps({"tool_call": {"name": call.function.name, "arguments": args}},
                                ensure_ascii=False))
    return "\n".join(parts)


def tool_result_text(i: int, m: OAIMessage, content: str | None, calls: dict[str, str]) -> str:
    """A `role: "tool"` turn as a user turn's text; `calls` maps earlier call ids to names."""
    if content is None:
        raise RequestError(f"messages[{i}].content is required for a tool message", param=f"messages[{i}].content")
    if not m.tool_call_id:
        raise RequestError(f"messages[{i}].tool_call_id is required for a tool message",
                           param=f"messages[{i}].tool_call_id")
    if m.tool_call_id not in calls:
        raise RequestError(f"messages[{i}].tool_call_id {m.tool_call_id!r} answers no earlier assistant tool call",
                           param=f"messages[{i}].tool_call_id")
    return json.dumps({"tool_response": {"name": calls[m.tool_call_id], "tool_call_id": m.tool_call_id,
                                         "content": content}}, ensure_ascii=False)


# -- the answer ---------------------------------------------------------------------------

def parse_answer(text: str) -> tuple[str | None, list[dict[str, Any]] | None]:
    """The model's constrained JSON -> (content, tool_calls). Text that is not the
    expected JSON (cut by max_tokens) comes back as content, unchanged.

    '{"tool_call": {"name": "f", "arguments": {"a": 1}}}' -> (None, [{"id": "call_…", "type": "function",
                                                             "function": {"name": "f", "arguments": '{"a": 1}'}}])
    '{"response": "hi"}' -> ("hi", None)
    """
    try:
        obj = json.loads(text)
    except ValueError:
        return text, None
    if isinstance(obj, dict) and isinstance(obj.get("response"), str):
        return obj["response"], None
    call = obj.get("tool_call") if isinstance(obj, dict) else None
    if isinstance(call, dict) and isinstance(call.get("name"), str) and isinstance(call.get("arguments"), dict):
        return None, [{"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                       "function": {"name": call["name"],
                                    "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}]
    return text, None
