"""OpenAI request extras turned into engine fields, checked in one place:
`response_format` (a JSON Schema for the engine's `json_schema`), `logprobs` /
`top_logprobs`, `logit_bias`, `n`; and the logprobs the answers carry back, in the
chat and the legacy styles. (Usage is in frames.py, errors in errors.py.)

The JSON Schema check is a sanity check of the keywords llama.cpp's converter reads
(types, nesting, local `$ref`s, patterns), not a full meta-schema validation: it
catches a schema that cannot mean anything (`{"type": "nonsense"}`, a `$ref` to
nowhere) before the request takes a slot. Unknown keywords are ignored, as
llama.cpp ignores them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ....engines import grammar
from ....generation import SamplingParams
from ...wire import limits
from ...wire.errors import RequestError
from ...wire.schemas import ResponseFormat

JSON_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SCHEMA_ONE = ("items", "additionalProperties", "not", "contains", "if", "then", "else", "propertyNames")
_NUMBER_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_COUNT_KEYS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# -- JSON Schema ------------------------------------------------------------------

def check_schema(schema: Any, param: str) -> None:
    """Raise RequestError (400) when `schema` is not a usable JSON Schema.

    check_schema({"type": "object"}, "p") -> None
    check_schema({"type": "nonsense"}, "p") -> RequestError("p.type: ...")
    """
    if not isinstance(schema, dict):
        raise RequestError(f"`{param}` must be a JSON Schema object, got {type(schema).__name__}", param=param)
    count = [0]
    _check_node(schema, schema, param, 0, count)


def _check_node(node: Any, root: dict[str, Any], where: str, depth: int, count: list[int]) -> None:
    if isinstance(node, bool):
        return  # true / false are schemas too
    if not isinstance(node, dict):
        raise RequestError(f"{where}: a schema must be an object or a boolean, got {type(node).__name__}",
                           param=where)
    count[0] += 1
    if depth > limits.MAX_SCHEMA_DEPTH or count[0] > limits.MAX_SCHEMA_NODES:
        raise RequestError(f"{where}: the schema nests deeper than {limits.MAX_SCHEMA_DEPTH} levels or has more "
                           f"than {limits.MAX_SCHEMA_NODES} subschemas", param=where)
    t = node.get("type")
    if t is not None:
        types = t if isinstance(t, list) else [t]
        if not types or any(not isinstance(x, str) or x not in JSON_TYPES for x in types):
            raise RequestError(f"{where}.type must be one of {', '.join(sorted(JSON_TYPES))} (or a list of them), "
                               f"got {t!r}", param=where)
    for key in _SCHEMA_LISTS:
        if key in node:
            items = node[key]
            if not isinstance(items, list) or not items:
                raise RequestError(f"{where}.{key} must be a non-empty list of schemas", param=where)
            for i, sub in enumerate(items):
                _check_node(sub, root, f"{where}.{key}[{i}]", depth + 1, count)
    for key in _SCHEMA_MAPS:
        if key in node:
            subs = node[key]
            if not isinstance(subs, dict):
                raise RequestError(f"{where}.{key} must be an object of schemas", param=where)
            for name, sub in subs.items():
                _check_node(sub, root, f"{where}.{key}.{name}", depth + 1, count)
    for key in _SCHEMA_ONE:
        if key in node:
            sub = node[key]
            if key == "items" and isinstance(sub, list):  # draft-4 tuple form
                for i, s in enumerate(sub):
                    _check_node(s, root, f"{where}.items[{i}]", depth + 1, count)
            else:
                _check_node(sub, root, f"{where}.{key}", depth + 1, count)
    if "required" in node:
        req = node["required"]
        if not isinstance(req, list) or any(not isinstance(x, str) for x in req):
            raise RequestError(f"{where}.required must be a list of property names", param=where)
    if "enum" in node and (not isinstance(node["enum"], list) or not node["enum"]):
        raise RequestError(f"{where}.enum must be a non-empty list", param=where)
    for key in _NUMBER_KEYS:
        v = node.get(key)
        if key in node and (isinstance(v, bool) or not isinstance(v, (int, float))):
            if not (key.startswith("exclusive") and isinstance(v, bool)):  # draft-4 booleans
                raise RequestError(f"{where}.{key} must be a number, got {v!r}", param=where)
    for key in _COUNT_KEYS:
        v = node.get(key)
        if key in node and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise RequestError(f"{where}.{key} must be a non-negative integer, got {v!r}", param=where)
    if "pattern" in node:
        pattern = node["pattern"]
        if not isinstance(pattern, str):
            raise RequestError(f"{where}.pattern must be a string", param=where)
        try:
            re.compile(pattern)
        except re.error as e:
            raise RequestError(f"{where}.pattern is not a valid regular expression: {e}", param=where) from None
    if "$ref" in node:
        _resolve_ref(node["$ref"], root, where)


def _resolve_ref(ref: Any, root: dict[str, Any], where: str) -> None:
    if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
        raise RequestError(f"{where}.$ref must point inside the schema (\"#/$defs/Name\"), got {ref!r}; "
                           "remote references are not fetched", param=where)
    if not grammar.resolve_pointer(root, ref)[0]:
        raise RequestError(f"{where}.$ref {ref!r} points to nothing in the schema", param=where)


async def check_schema_with_engine(schema: Any, param: str) -> None:
    """Our check, then the engine's own grammar compiler (off the loop: a large schema takes
    a while). A schema the engine could not enforce is a 400, never unconstrained text."""
    check_schema(schema, param)
    try:
        await asyncio.to_thread(grammar.check, schema)
    except grammar.GrammarError as e:
        raise RequestError(f"`{param}`: the engine cannot enforce this schema: {e}", param=param) from None


def response_schema(fmt: ResponseFormat | None) -> Any:
    """The JSON Schema a response_format asks for; None for free text.

    {"type": "json_object"} -> {"type": "object"}
    {"type": "json_schema", "json_schema": {"name": "x", "schema": S}} -> S
    """
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        if fmt.schema is not msgspec.UNSET and fmt.schema is not None:
            return fmt.schema  # llama-server's extension
        return {"type": "object"}
    if fmt.type == "json_schema":
        spec = fmt.json_schema
        if spec is None:
            raise RequestError("`response_format.json_schema` is required when type is \"json_schema\"",
                               param="response_format.json_schema")
        # OpenAI requires a name; llama-server and most clients send none, so it is optional here.
        if spec.name is not None and not _NAME.match(spec.name):
            raise RequestError("`response_format.json_schema.name` must be 1 to 64 letters, digits, "
                               "underscores or dashes", param="response_format.json_schema.name")
        if spec.schema is msgspec.UNSET or spec.schema is None:
            # OpenAI's default: any JSON object.
            return {"type": "object"}
        return spec.schema
    raise RequestError(f"`response_format.type` must be \"text\", \"json_object\" or \"json_schema\", "
                       f"got {fmt.type!r}", param="response_format.type")


# -- logprobs and logit bias --------------------------------------------------------

def n_probs(logprobs: bool | None, top_logprobs: int | None) -> int:
    """The engine's n_probs for chat `logprobs` / `top_logprobs` (0: none)."""
    limits.check_range("top_logprobs", top_logprobs, limits.TOP_LOGPROBS_MIN, limits.TOP_LOGPROBS_MAX)
    if top_logprobs is not None and not logprobs:
        raise RequestError("`top_logprobs` needs `logprobs: true`", param="top_logprobs")
    if not logprobs:
        return 0
    return max(1, top_logprobs or 0)  # the engine sends the chosen token's logprob only with n_probs >= 1


def logit_bias(bias: Mapping[str, float] | None, n_vocab: int | None) -> tuple[tuple[int, float | bool], ...]:
    """OpenAI's {"token id": bias} to the engine's pairs; -100 bans the token (False).

    {"15": -100, "42": 2.5} -> ((15, False), (42, 2.5))
    """
    if not bias:
        return ()
    if len(bias) > limits.MAX_LOGIT_BIAS:
        raise RequestError(f"`logit_bias` has {len(bias)} entries; the limit is {limits.MAX_LOGIT_BIAS}",
                           param="logit_bias")
    out: list[tuple[int, float | bool]] = []
    for key, value in bias.items():
        k = key.strip()
        if not (k.isascii() and k.isdigit()):
            raise RequestError(f"`logit_bias` keys must be token ids (\"15043\"), got {key!r}", param="logit_bias")
        tok = int(k)
        if n_vocab is not None and tok >= n_vocab:
            raise RequestError(f"`logit_bias`: token id {tok} is outside the vocabulary (0..{n_vocab - 1})",
                               param="logit_bias")
        limits.check_range(f"logit_bias[{key!r}]", value, limits.LOGIT_BIAS_MIN, limits.LOGIT_BIAS_MAX)
        out.append((tok, False if value <= limits.LOGIT_BIAS_MIN else float(value)))
    return tuple(out)


def choice_count(n: int | None) -> int:
    limits.check_range("n", n, 1, limits.MAX_N)
    return n or 1


def _lp(value: Any) -> float:
    # llama.cpp writes -inf (a banned or grammar-excluded token) as null.
    return float(value) if isinstance(value, (int, float)) else -9999.0


def chat_logprobs(entries: Sequence[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """llama.cpp's per-token entries in OpenAI's chat shape (`choices[i].logprobs.content`)."""
    out = []
    for e in entries:
        alts = e.get("top_logprobs") or []
        out.append({"token": e.get("token", ""), "logprob": _lp(e.get("logprob")), "bytes": e.get("bytes"),
                    "top_logprobs": [{"token": a.get("token", ""), "logprob": _lp(a.get("logprob")),
                                      "bytes": a.get("bytes")} for a in alts[:top]]})
    return out


def legacy_logprobs(entries: Sequence[dict[str, Any]], top: int, offset: int) -> dict[str, Any]:
    """The legacy completions shape: parallel lists, `top_logprobs` as {token: logprob}."""
    tokens, lps, tops, offsets = [], [], [], []
    pos = offset
    for e in entries:
        tok = e.get("token", "")
        tokens.append(tok)
        lps.append(_lp(e.get("logprob")))
        tops.append({a.get("token", ""): _lp(a.get("logprob")) for a in (e.get("top_logprobs") or [])[:top]})
        offsets.append(pos)
        pos += len(tok)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


# -- choices --------------------------------------------------------------------------

def seeded(params: SamplingParams, count: int) -> list[SamplingParams]:
    """One SamplingParams per choice: with a seed, choice i uses seed + i, so the
    choices differ and the request stays reproducible."""
    if params.seed is None:
        return [params] * count
    return [params.with_overrides(seed=(params.seed + i) % (limits.SEED_MAX + 1)) for i in range(count)]
