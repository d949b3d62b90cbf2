"""The engine's JSON-schema constraints, checked before a request is accepted
(`nanochat_lite/engines/grammar.py`): what the engine could not enforce is refused with
its reason; what it can passes untouched. Known answers, no model needed: the compiler
is the `llguidance` package, the library the engine links.

The engine itself samples free text for the first three of HOSTILE (seen with the real
model before this check existed; tests/schema_cases.py)."""

from __future__ import annotations

import time

import pytest

from nanochat_lite.engines.grammar import GrammarError, _unending_path, check, engine_schema
from schema_cases import ENFORCEABLE, HOSTILE, NODE

@pytest.mark.parametrize("name", HOSTILE)
def test_what_the_engine_cannot_enforce_is_refused_with_its_reason(name: str) -> None:
    schema, reason = HOSTILE[name]
    t0 = time.perf_counter()
    with pytest.raises(GrammarError) as info:
        check(schema)
    assert reason.lower() in str(info.value).lower(), str(info.value)
    assert time.perf_counter() - t0 < 2.0  # the bound; it takes milliseconds


@pytest.mark.parametrize("name", ENFORCEABLE)
def test_what_the_engine_can_enforce_passes(name: str) -> None:
    check(ENFORCEABLE[name])


def test_engine_schema_asks_for_compact_json_and_reads_tuples_as_llama_cpp_does() -> None:
    assert engine_schema({"type": "array", "items": [{"type": "string"}, {"type": "integer"}]}) == {
        "x-guidance": {"whitespace_flexible": False}, "type": "array",
        "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False}
    # draft-4 additionalItems says what may follow the tuple
    assert engine_schema({"items": [{"type": "string"}], "additionalItems": {"type": "null"}})["items"] == {
        "type": "null"}
    # a schema's own options are kept; nested tuples are converted too
    mine = {"x-guidance": {"whitespace_flexible": True}, "properties": {"t": {"items": [True]}}}
    assert engine_schema(mine) == {"x-guidance": {"whitespace_flexible": True},
                                   "properties": {"t": {"prefixItems": [True], "items": False}}}


def test_unending_path_names_where_the_recursion_is_forced() -> None:
    assert _unending_path({"type": "object", "properties": {"n": {"$ref": "#"}}, "required": ["n"]}) == "#"
    assert _unending_path({"type": "object", "properties": {"n": {"$ref": "#"}}}) is None
    assert _unending_path({"$defs": {"n": NODE}, "$ref": "#/$defs/n"}) == "#/$defs/n"
    # an array that must hold at least one of itself never ends; one that may be empty does
    looping = {"$defs": {"l": {"type": "array", "items": {"$ref": "#/$defs/l"}, "minItems": 1}}, "$ref": "#/$defs/l"}
    assert _unending_path(looping) == "#/$defs/l"
    looping["$defs"]["l"]["minItems"] = 0
    assert _unending_path(looping) is None
