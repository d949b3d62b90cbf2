"""Fitting document sources into a chat prompt (server/chat/grounding.py), with a fake
prompt builder whose tokens are words: what the `documents` field accepts, whole text
when it fits half of what the history leaves, and otherwise the best-ranked chunks the
budget holds, lowest-ranked dropped first, with room kept for the history and the answer."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from nanochat_lite.generation import SamplingParams
from nanochat_lite.server.chat import grounding
from nanochat_lite.server.chat.grounding import Found, Selection, Source
from nanochat_lite.server.wire.errors import RequestError


class WordPrompts:
    """Tokens are whitespace-separated words; each message costs 2 more (its role
    markers), as a chat template's control tokens would."""

    def __init__(self, n_ctx: int) -> None:
        self.n_ctx = n_ctx
        self.prepared: list[list[dict[str, str]]] = []

    def tokenize(self, text: str) -> list[int]:
        return [0] * len(text.split())

    def prompt_tokens(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return [0] * sum(len(m["content"].split()) + 2 for m in messages)

    def prepare(self, messages: Sequence[dict[str, str]], params: SamplingParams) -> object:
        self.prepared.append([dict(m) for m in messages])
        return len(self.prompt_tokens(messages))


def words(n: int, tag: str) -> str:
    return " ".join([tag] * n)


def src(name: str, n_words: int, page: int | None = 1, score: float | None = 0.5) -> Source:
    return Source(document_id=f"id-{name}", name=name, page=page, text=words(n_words, name), score=score)


HISTORY = [{"role": "user", "content": words(10, "hello")}]


@pytest.mark.parametrize("raw, expected", [
    (None, None), (False, None), (True, Selection(collection="default")),
    ({"collection": " papers "}, Selection(collection="papers")),
    (["a", "b", "a"], Selection(ids=("a", "b"))),
])
def test_selection_accepts(raw: object, expected: Selection | None) -> None:
    assert grounding.selection(raw) == expected


@pytest.mark.parametrize("raw, says", [
    (1, "got int"), ("default", "got str"), ({"collection": 3}, "printable"), ({"collection": ""}, "printable"),
    ({"name": "x"}, "nothing else"), ({"collection": "x", "k": 3}, "nothing else"), ([], "empty"),
    ([1, 2], "strings"), (["x"] * 0 + [str(i) for i in range(101)], "at most 100"),
])
def test_selection_refuses_naming_the_field(raw: object, says: str) -> None:
    with pytest.raises(RequestError) as e:
        grounding.selection(raw)
    assert e.value.status == 400 and e.value.code == "invalid_request" and e.value.param == "documents"
    assert says in str(e.value) and "`documents`" in str(e.value)


def test_whole_text_when_it_fits_half_of_what_the_history_leaves() -> None:
    prompts = WordPrompts(n_ctx=1000)
    whole = [src("a", 100, page=1, score=None), src("a", 100, page=2, score=None)]
    found = Found(ranked=[src("a", 100, page=2)], whole=whole)
    system = [{"role": "system", "content": "Be brief."}]
    messages, grounded = grounding.fit(prompts, system + HISTORY, SamplingParams(max_tokens=100), found)
    assert grounded.mode == "whole" and grounded.sources == whole
    assert messages[0]["content"].startswith("Be brief.\n\n" + grounding.INSTRUCTION)
    assert "[1] (a, p. 1) a a" in messages[0]["content"] and "[2] (a, p. 2) a a" in messages[0]["content"]
    assert messages[1:] == HISTORY
    cites = grounded.metadata()
    assert cites["documents_mode"] == "whole"
    assert [(c["n"], c["page"], c["score"]) for c in cites["citations"]] == [(1, 1, None), (2, 2, None)]


def test_too_long_to_give_whole_is_searched() -> None:
    prompts = WordPrompts(n_ctx=1000)
    # 600 words of whole text: more than half of the ~985 tokens the history leaves.
    whole = [src("a", 300, score=None), src("a", 300, page=2, score=None)]
    found = Found(ranked=[src("a", 300, page=2, score=0.9)], whole=whole)
    messages, grounded = grounding.fit(prompts, HISTORY, SamplingParams(max_tokens=100), found)
    assert grounded.mode == "search" and [s.page for s in grounded.sources] == [2]
    assert messages[0]["role"] == "system" and messages[1:] == HISTORY


def test_the_budget_keeps_room_for_history_and_answer_and_drops_the_lowest_ranked() -> None:
    n_ctx, max_tokens = 600, 200
    prompts = WordPrompts(n_ctx=n_ctx)
    ranked = [src("best", 150), src("big", 250), src("third", 100), src("fourth", 100)]
    messages, grounded = grounding.fit(prompts, HISTORY, SamplingParams(max_tokens=max_tokens),
                                       Found(ranked=ranked, whole=None))
    # History 12 + answer 200 leave ~388: best (150) fits, big (250) does not after it,
    # third (100) does, fourth would pass the budget.
    assert [s.name for s in grounded.sources] == ["best", "third"]
    assert len(prompts.prompt_tokens(messages)) + max_tokens <= n_ctx
    text = messages[0]["content"]
    assert "[1] (best, p. 1)" in text and "[2] (third, p. 1)" in text and "big" not in text
    assert [c["n"] for c in grounded.citations()] == [1, 2]


def test_answer_room_is_capped_so_sources_still_fit() -> None:
    prompts = WordPrompts(n_ctx=1000)
    # max_tokens as large as the context: the answer keeps half of it, sources get the rest.
    _, grounded = grounding.fit(prompts, HISTORY, SamplingParams(max_tokens=1000),
                                Found(ranked=[src("a", 100)], whole=None))
    assert [s.name for s in grounded.sources] == ["a"]


def test_nothing_fits_and_nothing_found() -> None:
    prompts = WordPrompts(n_ctx=300)
    messages, grounded = grounding.fit(prompts, HISTORY, SamplingParams(max_tokens=100),
                                       Found(ranked=[src("huge", 500)], whole=None))
    assert grounded.sources == [] and messages == HISTORY and grounded.citations() == []
    messages, grounded = grounding.fit(prompts, HISTORY, SamplingParams(max_tokens=100), Found([], []))
    assert (grounded.mode, grounded.sources, messages) == ("search", [], HISTORY)


def test_an_engine_that_cannot_count_gets_the_best_few() -> None:
    class Remote:  # no tokenizer here: the upstream counts its own tokens
        n_ctx = 0

    ranked = [src(str(i), 10) for i in range(10)]
    _, grounded = grounding.fit(Remote(), HISTORY, SamplingParams(), Found(ranked, None))
    assert [s.name for s in grounded.sources] == [str(i) for i in range(grounding.NO_TOKENIZER_SOURCES)]


def test_fitter_prepares_the_grounded_messages() -> None:
    prompts = WordPrompts(n_ctx=1000)
    fitter = grounding.Fitter(prompts, Found(ranked=[src("a", 20, page=None)], whole=None))
    assert fitter.metadata() == {}
    fitter.prepare(HISTORY, SamplingParams(max_tokens=50))
    assert prompts.prepared[0][0]["content"].endswith("[1] (a) " + words(20, "a"))
    assert fitter.metadata()["citations"][0]["page"] is None
    assert grounding.last_user_text([{"role": "user", "content": "q1"}, {"role": "assistant", "content": "x"},
                                     {"role": "user", "content": "q2"}, {"role": "assistant", "content": ""}]) == "q2"
