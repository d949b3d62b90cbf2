"""JSON Schema constraints as the engine enforces them, checked before a request is accepted.

The engine (this llama.cpp build) compiles a `json_schema` with llguidance when the request
starts, and when it cannot (a 50,000-string enum: "schema too large"; an integer range past
64 bits; a keyword it does not implement, such as `not`) it logs the reason and samples
*unconstrained* text: a 200 with free text where the client asked for JSON. So the server
asks the same compiler first (the `llguidance` package: the library the engine links) and
refuses what it would refuse. One class llguidance accepts and no finite answer can satisfy
is checked here too: a required property whose schema leads back to itself (`{"next":
{"$ref": "#"}}` required), which the engine "enforces" by nesting until max_tokens.

A llama.cpp built without llguidance (`scripts/build-native.sh` builds one offline) converts
schemas with its own GBNF converter instead, which raises on what it cannot do: then that
converter is the one asked.

`engine_schema` is the one place that shapes a schema for the engine: the local engine
sends what it returns, and `check` validates exactly that.
"""

from __future__ import annotations

import json
from typing import Any


class GrammarError(ValueError):
    """The engine cannot enforce this schema; the message says why."""


def engine_schema(schema: Any) -> Any:
    """The schema as the engine gets it.

    - Compact JSON: llguidance's JSON grammar allows any run of whitespace between tokens,
      and a 135M model then fills max_tokens with newlines (seen: 300 "\\n   " tokens inside
      an array). A schema that sets its own "x-guidance" options keeps them.
    - Draft-4 tuples (`"items": [A, B]`) become `"prefixItems": [A, B]` with no further
      items, as llama.cpp's own converter reads them.
    """
    schema = _tuples_to_prefix_items(schema)
    if isinstance(schema, dict) and "x-guidance" not in schema:
        return {"x-guidance": {"whitespace_flexible": False}, **schema}
    return schema


def check(schema: Any) -> None:
    """Raise GrammarError when the engine could not enforce `schema`. Blocks for a few
    milliseconds (a large schema: longer): call it off the event loop."""
    shaped = engine_schema(schema)
    unending = _unending_path(shaped)
    if unending is not None:
        raise GrammarError(f"{unending} requires a value of its own schema again, so no finite JSON matches it; "
                           "make the property optional or give the recursion a way to end (anyOf with null)")
    text = json.dumps(shaped)
    try:
        import xllamacpp
    except ImportError:  # a front whose only engine is remote: the upstream decides
        return
    try:
        converted = str(xllamacpp.json_schema_to_grammar(text))
    except (ValueError, RuntimeError) as e:  # llama.cpp's own converter refused it
        raise GrammarError(str(e)) from None
    if not converted.startswith("%llguidance"):
        return  # a GBNF build: converted is enforceable
    from llguidance import LLMatcher  # the engine compiles with llguidance: ask it
    try:
        grammar = LLMatcher.grammar_from_json_schema(text)
        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    except (ValueError, RuntimeError, TypeError) as e:
        raise GrammarError(str(e)) from None
    if is_error:
        raise GrammarError("; ".join(messages) or "the grammar compiler refused it")


def _tuples_to_prefix_items(node: Any) -> Any:
    if isinstance(node, list):
        return [_tuples_to_prefix_items(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _tuples_to_prefix_items(v) for k, v in node.items()}
    if isinstance(out.get("items"), list) and "prefixItems" not in out:
        extra = out.pop("additionalItems", False)
        out["prefixItems"] = out.pop("items")
        out["items"] = extra
    return out


def _unending_path(root: Any) -> str | None:
    """Where a schema requires itself without end, as a JSON pointer-ish path; else None.

    A schema is *finite* when some JSON value of finite size matches it. The least fixed
    point over the local `$ref` targets: start with every target unknown (not finite),
    mark finite what can be built from finite parts, repeat until nothing changes. Only
    the keywords that force a nested value are followed (required properties, minItems,
    prefixItems, allOf, anyOf/oneOf); everything else is taken as finite.

    _unending_path({"type": "object", "properties": {"n": {"$ref": "#"}}, "required": ["n"]}) -> "#"
    _unending_path({"type": "object", "properties": {"n": {"$ref": "#"}}}) -> None
    """
    if not isinstance(root, dict):
        return None
    targets = _ref_targets(root)
    finite: dict[str, bool] = {ref: False for ref in targets}

    def ok(node: Any) -> bool:
        if not isinstance(node, dict):
            return node is not False
        if "$ref" in node:
            ref = node["$ref"]
            if isinstance(ref, str) and ref in finite and not finite[ref]:
                return False
        if any(not ok(s) for s in node.get("allOf", [])):
            return False
        for key in ("anyOf", "oneOf"):
            if key in node and isinstance(node[key], list) and not any(ok(s) for s in node[key]):
                return False
        types = node.get("type")
        if types is None or types == "object" or (isinstance(types, list) and types == ["object"]):
            props = node.get("properties")
            required = node.get("required")
            if isinstance(props, dict) and isinstance(required, list):
                if any(name in props and not ok(props[name]) for name in required):
                    return False
        if types is None or types == "array" or (isinstance(types, list) and types == ["array"]):
            if any(not ok(s) for s in node.get("prefixItems", []) if isinstance(node.get("prefixItems"), list)):
                return False
            min_items = node.get("minItems", 0)
            if isinstance(min_items, int) and min_items > len(node.get("prefixItems", []) or []) \
                    and "items" in node and not ok(node["items"]):
                return False
        return True

    changed = True
    while changed:
        changed = False
        for ref, target in targets.items():
            if not finite[ref] and ok(target):
                finite[ref] = changed = True
    if "#" in finite and not finite["#"]:
        return "#"
    if not ok(root):
        return next((ref for ref, good in finite.items() if not good), "#")
    return None


def _ref_targets(root: dict[str, Any]) -> dict[str, Any]:
    """Every local `$ref` in the schema -> the node it points to (unresolvable ones left out:
    the request check reports those)."""
    refs: set[str] = set()
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
                refs.add(ref)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    out: dict[str, Any] = {}
    for ref in refs:
        found, target = resolve_pointer(root, ref)
        if found:
            out[ref] = target
    return out



def resolve_pointer(root: Any, ref: str) -> tuple[bool, Any]:
    """(found, node) for a local JSON pointer ("#", "#/$defs/Name", "#/items/0"; "~1" is "/",
    "~0" is "~").

    resolve_pointer({"$defs": {"a": 1}}, "#/$defs/a") -> (True, 1)
    resolve_pointer({"$defs": {}}, "#/$defs/a") -> (False, None)
    """
    target: Any = root
    for piece in ref[2:].split("/") if ref != "#" else ():
        piece = piece.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and piece in target:
            target = target[piece]
        elif isinstance(target, list) and piece.isdigit() and int(piece) < len(target):
            target = target[int(piece)]
        else:
            return False, None
    return True, target
