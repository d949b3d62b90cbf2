"""JSON Schemas the engine cannot enforce (HOSTILE: name -> (schema, words its refusal
must contain)) and schemas it can (ENFORCEABLE), shared by tests/engines/test_grammar.py
and the doors' tests (tests/server/routes/openai/test_schema_refusal.py).

The first three of HOSTILE are the ones the owners issue (#20) found: the engine logged
"Too many items" (or nothing) and answered with unconstrained text; a required recursive
`$ref` it "enforced" by nesting until max_tokens."""

from __future__ import annotations

NODE = {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}, "required": ["next"]}

# name -> (schema, words the reason must contain)
HOSTILE: dict[str, tuple[dict, str]] = {
    "enum of 50,000 strings": ({"type": "string", "enum": [f"v{i}" for i in range(50_000)]}, "too large"),
    "required recursive $ref": ({"$defs": {"n": NODE}, "$ref": "#/$defs/n"}, "no finite JSON"),
    "integer range of ±1e300": ({"type": "integer", "minimum": -1e300, "maximum": 1e300}, "integer range"),
    "required self-reference at the root": (
        {"type": "object", "properties": {"me": {"$ref": "#"}}, "required": ["me"]}, "no finite JSON"),
    "mutual recursion through an array": (
        {"$defs": {"a": {"type": "object", "properties": {"b": {"$ref": "#/$defs/b"}}, "required": ["b"]},
                   "b": {"type": "array", "prefixItems": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"},
        "no finite JSON"),
    "not (unimplemented)": ({"not": {"type": "string"}}, "not"),
    "minLength over maxLength": ({"type": "string", "minLength": 5, "maxLength": 2}, "minLength"),
    "minimum over maximum": ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum"),
    "minItems over maxItems": ({"type": "array", "minItems": 5, "maxItems": 2}, "minItems"),
    "allOf of incompatible types": ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "incompatible"),
    "const of the wrong type": ({"type": "integer", "const": "x"}, "incompatible"),
    "multipleOf 0": ({"type": "number", "multipleOf": 0}, "multiple"),
    "unknown string format": ({"type": "string", "format": "no-such-format"}, "format"),
    "$ref to nowhere": ({"type": "object", "properties": {"a": {"$ref": "#/nope"}}}, "nope"),
    "enum of 50,000 inside an array of objects": (
        {"type": "array", "items": {"type": "string", "enum": [f"w{i}" for i in range(50_000)]}}, "too large"),
}

ENFORCEABLE: dict[str, dict] = {
    "object with a required integer": {"type": "object", "properties": {"age": {"type": "integer"}},
                                       "required": ["age"]},
    "optional recursion (a tree)": {"type": "object", "properties": {"kids": {"type": "array",
                                                                              "items": {"$ref": "#"}}}},
    "recursion that can end (anyOf null)": {"$defs": {"n": {"type": "object", "properties": {
        "next": {"anyOf": [{"$ref": "#/$defs/n"}, {"type": "null"}]}}, "required": ["next"]}}, "$ref": "#/$defs/n"},
    "draft-4 tuple items": {"type": "array", "items": [{"type": "string"}, {"type": "integer"}]},
    "enum of 1,000": {"enum": [f"e{i}" for i in range(1000)]},
    "64-bit integer range": {"type": "integer", "minimum": -(2**62), "maximum": 2**62},
}
