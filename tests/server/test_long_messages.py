"""Messages are bounded by the model's context in tokens, not by a fixed count of
characters: on a real `nanochat-lite serve` (SmolLM2 135M, 4,096-token context),

- a 17,000-character message of prose (~3,500 tokens: it fits) is served whole on
  `/api/chat` and `/v1/chat/completions` (a fixed 8,000-character limit refused it);
- a 17,000-character message that does not fit (digits: one token each) is a 400 that
  names the tokens it needs and the context's size;
- `/api/limits` reports the context and a character bound above both messages.

The token counts are checked against the project's own tokenizer of the same GGUF file."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nanochat_lite.tokenizer import Tokenizer
from serverproc import ServerProc

CHARS = 17_000
CTX = 4096  # the server's default --ctx-size
SENTENCES = [
    "The village stood at the edge of a wide river, and every morning the fishermen walked down to their boats.",
    "Children followed them along the path, carrying baskets of bread and talking about the weather.",
    "In the afternoon the market filled with farmers who had travelled from the hills to sell their apples.",
    "Nobody in the village could remember a winter as long as the one that had just ended.",
    "The old teacher wrote the names of the months on the board and asked the class to read them aloud.",
    "When the bells rang in the evening, the families gathered in the square to hear the news of the day.",
]
QUICK = {"max_tokens": 4, "temperature": 0, "repeat_penalty": 1.0}


def prose(chars: int) -> str:
    """`chars` characters of plain English (about 4.8 characters a SmolLM2 token)."""
    out: list[str] = []
    i = 0
    while sum(map(len, out)) + len(out) < chars:
        s = SENTENCES[i % len(SENTENCES)]
        out.append(f"Day {i // len(SENTENCES) + 1}: {s}" if i % len(SENTENCES) == 0 else s)
        i += 1
    return " ".join(out)[:chars]


def digits(chars: int) -> str:
    """`chars` characters that SmolLM2 reads one token a character: '0, 1, 2, ...'."""
    return ", ".join(str(i) for i in range(chars))[:chars]


@pytest.fixture(scope="module")
def tok(chat_model_path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(chat_model_path)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, chat_model_path: Path) -> Iterator[ServerProc]:
    with ServerProc(tmp_path_factory.mktemp("long-messages"), "--parallel", "1") as s:
        yield s


def test_the_messages_are_what_they_claim(tok: Tokenizer) -> None:
    # The premise of the tests below: the same length, one fits and one does not.
    fits, too_big = prose(CHARS), digits(CHARS)
    assert len(fits) == len(too_big) == CHARS
    assert 3_000 < len(tok.encode(fits)) < CTX - 200, len(tok.encode(fits))
    assert len(tok.encode(too_big)) > CTX, len(tok.encode(too_big))


def test_a_long_message_that_fits_is_served_on_api_chat(server: ServerProc, tok: Tokenizer) -> None:
    message = prose(CHARS)
    r = httpx.post(server.url + "/api/chat", json={"message": message, **QUICK}, timeout=900)
    assert r.status_code == 200, r.text[:500]
    data = r.json()["data"]
    # The whole message reached the model (its tokens, plus the template's few dozen).
    prompt_tokens = data["usage"]["promptTokens"]
    assert len(tok.encode(message)) < prompt_tokens < len(tok.encode(message)) + 100, data
    stored = httpx.get(server.url + f"/api/conversations/{data['conversation_id']}").json()["data"]["messages"]
    assert stored[0]["role"] == "user" and stored[0]["content"] == message


def test_a_long_message_that_fits_is_served_on_v1(server: ServerProc, tok: Tokenizer) -> None:
    # After the /api/chat test: the same prompt, so the slot's cache spares most of its
    # prefill (minutes on a loaded 2-core machine); the door's own checks still run.
    message = prose(CHARS)
    r = httpx.post(server.url + "/v1/chat/completions",
                   json={"messages": [{"role": "user", "content": message}], **QUICK}, timeout=900)
    assert r.status_code == 200, r.text[:500]
    usage = r.json()["usage"]
    assert len(tok.encode(message)) < usage["prompt_tokens"] < len(tok.encode(message)) + 100, usage


def test_a_message_that_does_not_fit_names_the_tokens(server: ServerProc, tok: Tokenizer) -> None:
    message = digits(CHARS)
    need = len(tok.encode(message))
    r = httpx.post(server.url + "/api/chat", json={"message": message, **QUICK}, timeout=600)
    assert r.status_code == 400, r.text[:500]
    err = r.json()["error"]
    assert err["code"] == "context_overflow", err
    numbers = {int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", err["message"])}
    assert CTX in numbers and any(need < n < need + 100 for n in numbers), err["message"]
    r = httpx.post(server.url + "/v1/chat/completions",
                   json={"messages": [{"role": "user", "content": message}], **QUICK}, timeout=600)
    assert r.status_code == 400, r.text[:500]
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded", err
    assert str(CTX) in err["message"], err


def test_limits_report_the_context(server: ServerProc) -> None:
    lim = httpx.get(server.url + "/api/limits").json()["data"]
    assert lim["context_tokens"] == CTX and lim["answer_room_tokens"] == 64, lim
    # The cheap character bound never refuses what could fit: both messages pass it
    # (the one that does not fit is refused by its tokens, above).
    assert lim["message_chars"] >= CTX * 81 and lim["message_chars"] > CHARS, lim
