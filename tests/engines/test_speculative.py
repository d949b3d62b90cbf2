"""Draft-free speculative decoding (`Engine(speculative=...)`): how the modes reach llama.cpp's
parameters, the bound that keeps every slot's draft inside one batch, and, on the real model,
that a speculating engine answers token for token what a plain one answers at temperature 0
while it really drafted (and had drafts both kept and thrown away)."""

from __future__ import annotations

import pytest
import xllamacpp

from nanochat_lite.engines.local import (SPEC_DRAFT, SPEC_NGRAM, SPECULATIVE_MODES, Engine, _request_body,
                                         _set_speculative)
from nanochat_lite.generation import Done, SamplingParams

T = xllamacpp.common_speculative_type


def params(batch: int, parallel: int) -> xllamacpp.CommonParams:
    p = xllamacpp.CommonParams()
    p.n_batch, p.n_parallel = batch, parallel
    return p


@pytest.mark.parametrize(("mode", "kind", "field"), [
    ("ngram-simple", T.COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE, "ngram_simple"),
    ("ngram-map-k", T.COMMON_SPECULATIVE_TYPE_NGRAM_MAP_K, "ngram_map_k"),
    ("ngram-map-k4v", T.COMMON_SPECULATIVE_TYPE_NGRAM_MAP_K4V, "ngram_map_k4v"),
])
def test_a_mode_sets_its_type_and_lookup(mode, kind, field):
    p = params(512, 10)
    assert _set_speculative(p, mode) == mode
    assert p.speculative.types == [kind]
    lookup = getattr(p.speculative, field)
    assert (lookup.size_n, lookup.size_m) == (SPEC_NGRAM, SPEC_DRAFT)


def test_off_leaves_llama_cpps_default():
    p = params(512, 10)
    assert _set_speculative(p, "off") == "off"
    assert p.speculative.types == [T.COMMON_SPECULATIVE_TYPE_NONE]


@pytest.mark.parametrize(("batch", "parallel", "draft"), [(64, 10, 5), (64, 1, SPEC_DRAFT), (64, 32, 1)])
def test_every_slots_draft_fits_the_batch(batch, parallel, draft):
    # 10 slots in a 64-token batch: 10 x (1 sampled + 5 drafted) = 60 <= 64; 6 drafted would be 70
    p = params(batch, parallel)
    _set_speculative(p, "ngram-simple")
    assert p.speculative.ngram_simple.size_m == draft
    assert parallel * (1 + draft) <= batch


def test_refusals_say_why():
    with pytest.raises(ValueError, match="ngram-map-k4v, got 'ngram-mod'"):
        _set_speculative(params(512, 10), "ngram-mod")  # shared among slots: not offered
    with pytest.raises(ValueError, match="at least 2 tokens per slot: batch 64, 33 slots"):
        _set_speculative(params(64, 33), "ngram-simple")
    assert "off" in SPECULATIVE_MODES


# Greedy, this answer repeats its own lines ("Item 1 ... Item 2 ..."), so drafts are proposed,
# and some are wrong.
REPEATING = "Write a Python list of 8 dictionaries, each with the keys 'name', 'age' and 'city'."
GREEDY = SamplingParams(temperature=0.0, max_tokens=120)


@pytest.fixture(scope="module")
def engines(chat_model_path):
    plain = Engine(chat_model_path, n_ctx=1024, threads=2, parallel=2)
    spec = Engine(chat_model_path, n_ctx=1024, threads=2, parallel=2, speculative="ngram-simple")
    yield plain, spec
    plain.close()
    spec.close()


def answer(engine: Engine, text: str) -> Done:
    events = list(engine.generate([{"role": "user", "content": text}], GREEDY))
    done = events[-1]
    assert isinstance(done, Done)
    return done


@pytest.mark.model
def test_a_speculative_answer_is_the_plain_one(engines):
    plain, spec = engines
    assert spec.speculative == "ngram-simple" and plain.speculative == "off"
    expected = answer(plain, REPEATING)
    assert expected.completion_tokens > 60, expected.text  # long enough to repeat itself
    got = answer(spec, REPEATING)
    assert got.text == expected.text
    assert got.completion_tokens == expected.completion_tokens
    # It did speculate: the engine's own counts, in the last chunk of the same request.
    prep = spec.prompts.prepare([{"role": "user", "content": REPEATING}], GREEDY)
    chunks: list[dict] = []

    def keep(chunk: dict) -> bool:
        chunks.append(chunk)
        return False  # go on

    spec._complete(_request_body(prep, GREEDY, 0, -1) | {"cache_prompt": False}, keep)
    assert "".join(c.get("choices", [{}])[0].get("text") or "" for c in chunks if c.get("choices")) == expected.text
    timings = [c["timings"] for c in chunks if c.get("timings")][-1]
    assert 0 < timings["draft_n_accepted"] < timings["draft_n"], timings
