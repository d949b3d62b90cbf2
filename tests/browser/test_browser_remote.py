"""The chat page on a front whose answers come from another server
(`serve --engine openai:URL` before a second `nanochat-lite serve` with the model):
an answer streams in, with the upstream's token counts, and is stored by the front."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from browser_helpers import SERVER_ARGS, answers, current_conversation, open_chat, send, set_settings, wait_answers
from serverproc import ServerProc


@pytest.fixture(scope="module")
def front(tmp_path_factory, chat_model_path) -> Iterator[ServerProc]:
    with ServerProc(tmp_path_factory.mktemp("upstream"), *SERVER_ARGS) as up:
        with ServerProc(tmp_path_factory.mktemp("front"), "--engine", f"openai:{up.url}/v1") as f:
            yield f


def test_page_answers_through_the_remote_engine(front, new_page):
    page = new_page().page
    open_chat(page, front.url)
    set_settings(page, max_tokens=24, temperature=0)
    send(page, "Tell me one fact about the Moon.")
    wait_answers(page, 1)
    [answer] = answers(page)
    assert answer["status"] in ("complete", "length") and answer["text"].strip(), answer
    stored = httpx.get(f"{front.url}/api/conversations/{current_conversation(page)}").json()["data"]["messages"]
    assert stored[-1]["role"] == "assistant" and stored[-1]["content"] == answer["raw"]
    assert answer["fields"]["completion_tokens"] == stored[-1]["completion_tokens"] > 0
