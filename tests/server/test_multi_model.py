"""Several models in one real server process (SmolLM2-135M and Gemma 3 270M): each
answers through its own door with its own tokenizer, the `model` field picks one,
a conversation keeps its model, /api/models lists them with their status, a corrupt
file is listed as unusable; with --models-memory that fits one model beside the
pinned one, alternating requests load and unload models and none fails.

Memory (file + KV cache for --ctx-size 1024, i.e. a 2,048-token pool): SmolLM2
93 + 45 = 138 MB, Gemma 241 + 36 = 277 MB."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from nanochat_lite import models
from serverproc import ServerProc

SMOL = "smollm2-135m-instruct"
GEMMA = "gemma3-270m"
LIGHT = ("--threads", "1", "--parallel", "2", "--ctx-size", "1024", "--kv-type", "f16")  # the memory figures below are f16 KV
TEXT = "The capital of France is"
TIMEOUT = 600.0  # a hang guard on a loaded 2-core machine, not a time limit

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def paths(model_home: Path) -> dict[str, Path]:
    return {SMOL: models.ensure(model_home, SMOL, progress=print), GEMMA: models.ensure(model_home, GEMMA, progress=print)}


@pytest.fixture(scope="module")
def both(tmp_path_factory, paths):
    """Gemma (no chat template) is the default; SmolLM2 is loaded on its first request;
    --models-dir holds a corrupt file and one a test deletes."""
    tmp = tmp_path_factory.mktemp("multi")
    folder = tmp / "more"
    folder.mkdir()
    (folder / "broken.gguf").write_bytes(paths[SMOL].read_bytes()[:4096])  # a header, no tensor data
    (folder / "gone.gguf").symlink_to(paths[SMOL])  # deleted by a test while unloaded
    with ServerProc(tmp, "--model", GEMMA, "--model", SMOL, "--models-dir", str(folder), *LIGHT) as s:
        yield s


def post(server: ServerProc, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=TIMEOUT)


def complete(server: ServerProc, model: str, text: str = TEXT, max_tokens: int = 4) -> dict:
    r = post(server, "/v1/completions", {"model": model, "prompt": text, "max_tokens": max_tokens, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()


def rows(server: ServerProc) -> dict[str, dict]:
    r = httpx.get(server.url + "/api/models", timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()["data"]["models"]}


def test_models_are_listed_with_status_size_and_template(both, paths):
    listed = rows(both)
    assert list(listed) == [GEMMA, SMOL, "broken", "gone"]
    g, s = listed[GEMMA], listed[SMOL]
    assert g["default"] is True and g["status"] == "loaded" and g["has_chat_template"] is False
    assert s["has_chat_template"] is True and s["status"] in ("unloaded", "loaded")
    assert g["size_bytes"] == paths[GEMMA].stat().st_size and s["size_bytes"] == paths[SMOL].stat().st_size
    assert g["context"] == s["context"] == 1024
    assert g["memory_bytes"] > g["size_bytes"]  # weights + KV cache, measured when loaded
    v1 = httpx.get(both.url + "/v1/models", timeout=TIMEOUT).json()["data"]
    assert [m["id"] for m in v1] == [GEMMA, SMOL, "broken", "gone"]


def test_corrupt_file_is_listed_unusable_and_refused(both):
    bad = rows(both)["broken"]
    assert bad["status"] == "unusable" and "truncated" in bad["error"]
    r = post(both, "/v1/completions", {"model": "broken", "prompt": TEXT, "max_tokens": 2})
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_unusable", r.text


def test_a_model_file_deleted_while_unloaded_is_a_clear_409(both):
    assert rows(both)["gone"]["status"] == "unloaded"
    (both.db.parent / "more" / "gone.gguf").unlink()
    r = post(both, "/v1/completions", {"model": "gone", "prompt": TEXT, "max_tokens": 2})
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "model_unusable" and "gone" in err["message"] and "/" not in err["message"], err
    assert rows(both)["gone"]["status"] == "unloaded"  # listed still; tried again if the file comes back


def test_each_model_tokenizes_with_its_own_tokenizer(both):
    smol, gemma = complete(both, SMOL), complete(both, GEMMA)
    assert (smol["model"], gemma["model"]) == (SMOL, GEMMA)
    # SmolLM2: 5 pieces, no BOS; Gemma: <bos> + 5 of its own pieces.
    assert smol["usage"]["prompt_tokens"] == 5 and gemma["usage"]["prompt_tokens"] == 6
    assert rows(both)[SMOL]["status"] == "loaded"


def test_unknown_model_is_404_naming_the_models(both):
    for path, body in [("/api/chat", {"message": "hi", "model": "nope"}),
                       ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/completions", {"model": "nope", "prompt": "hi"})]:
        r = post(both, path, body)
        assert r.status_code == 404, r.text
        err = r.json()["error"]
        assert err["code"] == "model_not_found" and GEMMA in err["message"] and SMOL in err["message"], err


def test_a_conversation_keeps_its_model(both):
    # Gemma, the default, has no chat template: a turn that fell back to it would be a 400.
    first = post(both, "/api/chat", {"message": "Say hi.", "model": SMOL, "max_tokens": 4, "temperature": 0})
    assert first.status_code == 200, first.text
    assert first.json()["data"]["model"] == SMOL
    cid = first.json()["data"]["conversation_id"]
    later = post(both, "/api/chat", {"message": "Again.", "conversation_id": cid, "max_tokens": 4, "temperature": 0})
    assert later.status_code == 200, later.text
    assert later.json()["data"]["model"] == SMOL
    without = post(both, "/api/chat", {"message": "Say hi.", "max_tokens": 4})  # a new conversation: the default
    assert without.status_code == 400 and without.json()["error"]["code"] == "no_chat_template", without.text


def test_websocket_chat_frame_picks_the_model(both):
    with connect(both.ws_url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "chat", "message": "Say hi.", "model": "nope"}))
        frame = json.loads(ws.recv(timeout=TIMEOUT))
        assert frame["type"] == "error" and frame["code"] == "model_not_found", frame
        ws.send(json.dumps({"type": "chat", "message": "Say hi.", "model": SMOL, "max_tokens": 4}))
        frames = [json.loads(ws.recv(timeout=TIMEOUT))]
        while frames[-1]["type"] not in ("done", "error"):
            frames.append(json.loads(ws.recv(timeout=TIMEOUT)))
    assert frames[0]["type"] == "start" and frames[0]["model"] == SMOL and frames[-1]["type"] == "done", frames


def test_ten_simultaneous_requests_over_both_models_all_complete(both):
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(complete, both, SMOL if i % 2 else GEMMA, f"Question {i}: the sky is", 8)
                   for i in range(10)]
        answers = [f.result() for f in futures]
    assert [a["model"] for a in answers] == [SMOL if i % 2 else GEMMA for i in range(10)]
    assert all(a["choices"][0]["finish_reason"] in ("stop", "length") for a in answers)


# -- a memory bound that fits the pinned model and one more -----------------------------

@pytest.fixture(scope="module")
def tight(tmp_path_factory, paths):
    """SmolLM2 pinned (138 MB) + room for Gemma (277 MB) or a second copy of SmolLM2
    (138 MB), never both: 450 MB."""
    tmp = tmp_path_factory.mktemp("tight")
    folder = tmp / "more"
    folder.mkdir()
    (folder / "smol-copy.gguf").symlink_to(paths[SMOL])
    with ServerProc(tmp, "--model", SMOL, "--model", GEMMA, "--models-dir", str(folder), "--pin", SMOL,
                    "--models-memory", "450", *LIGHT) as s:
        yield s


def loaded(server: ServerProc) -> set[str]:
    return {name for name, row in rows(server).items() if row["status"] == "loaded"}


def test_alternating_models_load_and_unload_within_the_bound(tight):
    assert rows(tight)[SMOL]["pinned"] is True
    for model in [GEMMA, "smol-copy", GEMMA, "smol-copy"]:
        assert complete(tight, model)["model"] == model
        assert loaded(tight) == {SMOL, model}  # the other one was unloaded to make room
        assert complete(tight, SMOL)["model"] == SMOL
    listed = rows(tight)
    assert sum(r["memory_bytes"] or 0 for r in listed.values()) <= 450 << 20


def test_simultaneous_requests_for_models_that_do_not_fit_together_all_complete(tight):
    order = [GEMMA, "smol-copy", SMOL] * 3
    with concurrent.futures.ThreadPoolExecutor(len(order)) as pool:
        answers = list(pool.map(lambda m: complete(tight, m, max_tokens=6), order))
    assert [a["model"] for a in answers] == order
    assert SMOL in loaded(tight)


def test_admin_unload_and_load(tight):
    r = post(tight, f"/api/models/{SMOL}/unload", {})
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_pinned", r.text
    r = post(tight, f"/api/models/{GEMMA}/load", {})
    assert r.status_code == 200 and r.json()["data"]["status"] == "loaded", r.text
    r = post(tight, f"/api/models/{GEMMA}/unload", {})
    assert r.status_code == 200 and r.json()["data"]["unloaded"] is True, r.text
    assert loaded(tight) == {SMOL}
    r = post(tight, "/api/models/nope/load", {})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
