"""Doors whose other tests run on the fake engine, here on a real `nanochat-lite serve`
with the real model (SmolLM2 135M):

- `/v1/completions` with a prompt of token ids: the ids are the prompt (greedy, the
  same answer as the text they encode, and as many prompt tokens), and the vocabulary's
  bound is the model's (the last id is a prompt; one past it, or a negative one, a 400);
- `progress` frames over the WebSocket while a long prompt is read: one per
  PROGRESS_INTERVAL_S before the first token, none after.

The references are not the server's own: ids from llama.cpp's tokenizer (tests/llama_ref.py),
the vocabulary's size from the GGUF file's token list."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from llama_ref import LlamaRef
from nanochat_lite.gguf import read as read_gguf
from nanochat_lite.server.chat.answers import PROGRESS_INTERVAL_S
from serverproc import ServerProc

GREEDY = {"temperature": 0, "repeat_penalty": 1.0}
TEXT = "The capital of France is"
# One thread: a prompt of ~3,500 tokens then takes 15-30 s to read on this machine
# (~120-200 tokens/s; minutes when it is busy), several progress intervals.
SLOW_PREFILL = ("--threads", "1", "--parallel", "1")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, chat_model_path: Path) -> Iterator[ServerProc]:
    with ServerProc(tmp_path_factory.mktemp("doors"), *SLOW_PREFILL) as s:
        yield s


@pytest.fixture(scope="module")
def n_vocab(chat_model_path: Path) -> int:
    return len(read_gguf(chat_model_path).metadata["tokenizer.ggml.tokens"])


def complete(server: ServerProc, prompt: Any, **extra: Any) -> httpx.Response:
    return httpx.post(server.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 8, **GREEDY, **extra},
                      timeout=600)


def test_a_token_id_prompt_is_the_prompt(server: ServerProc, llama_ref: LlamaRef) -> None:
    ids = llama_ref.tokenize(TEXT)
    by_text = complete(server, TEXT)
    by_ids = complete(server, ids)
    assert by_text.status_code == by_ids.status_code == 200, (by_text.text, by_ids.text)
    t, i = by_text.json(), by_ids.json()
    assert i["usage"]["prompt_tokens"] == len(ids) == t["usage"]["prompt_tokens"], (ids, t["usage"])
    assert i["choices"][0]["text"] == t["choices"][0]["text"] and i["choices"][0]["text"].strip(), (t, i)
    # echo gives the ids' text back in front of the answer.
    echoed = complete(server, ids, echo=True).json()["choices"][0]["text"]
    assert echoed == TEXT + i["choices"][0]["text"], echoed
    # A batch of two id prompts: a choice each, in order, each the same as alone.
    other = llama_ref.tokenize("One, two, three,")
    both = complete(server, [ids, other]).json()
    alone = complete(server, other).json()
    assert [c["index"] for c in both["choices"]] == [0, 1]
    assert [c["text"] for c in both["choices"]] == [i["choices"][0]["text"], alone["choices"][0]["text"]]


def test_the_vocabulary_bound_is_the_models(server: ServerProc, n_vocab: int) -> None:
    last = complete(server, [n_vocab - 1], max_tokens=1)
    assert last.status_code == 200 and last.json()["usage"]["prompt_tokens"] == 1, last.text
    for bad in ([n_vocab], [1, 2, n_vocab + 5], [-1], [[1, 2], [n_vocab]]):
        r = complete(server, bad, max_tokens=1)
        assert r.status_code == 400, (bad, r.status_code, r.text)
        err = r.json()["error"]
        assert err["param"] == "prompt" and "vocabulary" in err["message"], err
    print(f"\nvocabulary of {n_vocab} ids: id {n_vocab - 1} is a prompt, {n_vocab} is a 400")


def test_a_long_prompt_gets_progress_frames_before_its_first_token(server: ServerProc) -> None:
    message = " ".join(str(i) for i in range(1000, 1700))  # one token per digit or space: ~3,500
    n = httpx.post(server.url + "/api/tokenize", json={"text": message, "with_pieces": False},
                   timeout=60).json()["count"]
    assert 3000 <= n <= 3900, n  # long, and inside the 4,096-token context with room for the answer
    frames: list[tuple[float, dict[str, Any]]] = []  # (seconds since `start`, frame)
    with connect(server.ws_url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "chat", "message": message, "max_tokens": 4, **GREEDY}))
        t0 = None
        while not frames or frames[-1][1]["type"] not in ("done", "error"):
            frame = json.loads(ws.recv(timeout=600))
            t0 = t0 if t0 is not None else time.monotonic()
            frames.append((time.monotonic() - t0, frame))
    kinds = [f["type"] for _, f in frames]
    assert kinds[0] == "start" and kinds[-1] == "done", kinds
    first_token = next(i for i, k in enumerate(kinds) if k == "token")
    progress = [t for t, f in frames if f["type"] == "progress"]
    reading = frames[first_token][0]  # seconds from `start` to the first token
    print(f"prompt of {n} tokens: first token after {reading:.1f} s, {len(progress)} progress frames")
    assert reading > PROGRESS_INTERVAL_S + 1, f"the prompt was read in {reading:.1f} s: too fast to test"
    # Only before the first token, about one per interval (the interval restarts at each frame).
    assert "progress" not in kinds[first_token:], kinds
    assert progress and abs(len(progress) - reading // PROGRESS_INTERVAL_S) <= 1, (progress, reading)
    assert all(f.get("phase") == "prompt" for _, f in frames if f["type"] == "progress")
