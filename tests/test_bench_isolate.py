"""A crashing peer does not end the benchmark: peers with foreign native code run in child
processes (`nanochat_lite/bench/isolate.py`), and a child killed by a signal is one row
saying "crashed (signal 11)" while the other rows are measured.

No real crashing library is needed: the "peer" is a module written into tmp_path (on the
children's PYTHONPATH) whose function sends itself SIGSEGV, at load or part-way."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import sys
from pathlib import Path

import pytest

from nanochat_lite.bench import isolate, peers, report, serving, suite

CRASHING_PEER = '''
import os, signal, time

def segv(**kwargs):
    os.kill(os.getpid(), signal.SIGSEGV)

def segv_on_second_call(**kwargs):
    calls = []
    def handle(request):
        calls.append(request)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGSEGV)
        return {"tok_s": 10.0, "calls": len(calls)}
    return {"pid": os.getpid()}, handle

def noisy(**kwargs):
    print("python print on stdout")
    os.write(1, b"native printf on fd 1\\n")
    return {"init": kwargs}, lambda request: {"echo": request}

def raises(**kwargs):
    raise ValueError("no model at /nowhere")

def exits(**kwargs):
    os._exit(3)

def sleeps(**kwargs):
    time.sleep(60)

def segv_tokenizers(path, buf_len):
    os.kill(os.getpid(), signal.SIGSEGV)
'''


@pytest.fixture
def crashing_peer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The module name of the fake peers, importable by the children."""
    (tmp_path / "crashing_peer.py").write_text(CRASHING_PEER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    return "crashing_peer"


# -- the child process itself ------------------------------------------------------------
def test_one_call_runs_in_another_process() -> None:
    assert isolate.run_in_child(os.getpid) != os.getpid()
    assert isolate.run_in_child("os.path:basename", p="/a/b.gguf") == "b.gguf"


def test_a_signal_is_a_crash_with_its_number(crashing_peer: str) -> None:
    with pytest.raises(isolate.PeerCrashed) as info:
        isolate.run_in_child(f"{crashing_peer}:segv")
    assert info.value.signum == signal.SIGSEGV == 11
    assert str(info.value) == "crashed (signal 11)"
    assert isolate.row_text(info.value) == "crashed (signal 11)"


def test_a_crash_part_way_after_answers(crashing_peer: str) -> None:
    with isolate.Worker(f"{crashing_peer}:segv_on_second_call") as w:
        assert w.info["pid"] != os.getpid()
        assert w.call({"n": 16}) == {"tok_s": 10.0, "calls": 1}
        with pytest.raises(isolate.PeerCrashed, match=r"^crashed \(signal 11\)$"):
            w.call({"n": 16})
        with pytest.raises(isolate.PeerCrashed):  # still says so when asked again
            w.call({"n": 16})


def test_what_native_code_prints_does_not_break_the_protocol(crashing_peer: str) -> None:
    with isolate.Worker(f"{crashing_peer}:noisy", model="m.gguf", threads=2) as w:
        assert w.info == {"init": {"model": "m.gguf", "threads": 2}}
        assert w.call({"n": [1, "ü"]}) == {"echo": {"n": [1, "ü"]}}


def test_errors_and_exits_are_failures_not_crashes(crashing_peer: str) -> None:
    with pytest.raises(isolate.PeerFailed, match="ValueError: no model at /nowhere") as info:
        isolate.run_in_child(f"{crashing_peer}:raises")
    assert not isinstance(info.value, isolate.PeerCrashed)
    assert isolate.row_text(info.value) == "failed: ValueError: no model at /nowhere"
    with pytest.raises(isolate.PeerFailed, match="exited with code 3") as info:
        isolate.run_in_child(f"{crashing_peer}:exits")
    assert not isinstance(info.value, isolate.PeerCrashed)
    with pytest.raises(isolate.PeerFailed, match="No module named 'not_a_module'"):
        isolate.run_in_child("not_a_module:fn")


def test_a_hang_is_cut_by_the_timeout(crashing_peer: str) -> None:
    with pytest.raises(isolate.PeerFailed, match=r"no answer in 2 s \(killed\)"):
        isolate.run_in_child(f"{crashing_peer}:sleeps", timeout=2)


def test_only_importable_functions() -> None:
    with pytest.raises(ValueError, match="not importable by name"):
        isolate.target_name(lambda: None)
    assert isolate.target_name(os.getpid) == "posix:getpid"
    assert isolate.target_name(serving.llama_cpp_python_decoder) == \
        "nanochat_lite.bench.serving:llama_cpp_python_decoder"


# -- the rows of the sections -------------------------------------------------------------
@pytest.mark.model
@pytest.mark.parametrize("when", ["segv", "segv_on_second_call"])  # at load; after the warm-up answer
def test_decode_row_says_crashed_and_ours_is_measured(chat_model_path: Path, crashing_peer: str,
                                                      monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """The issue's failure: llama-cpp-python dying in the decode section took the whole run."""
    monkeypatch.setattr(peers, "have_llama_cpp_python", lambda: True)
    out = serving.decode_speed(chat_model_path, 1, 1024, 1, 16, raw_peer=f"{crashing_peer}:{when}",
                               log=lambda s: None)
    assert out["llama-cpp-python generate"] == "crashed (signal 11)"
    assert "ratio_llama_cpp_python" not in out
    nano = out["nanochat-lite"]
    assert nano["n"] == 1 and nano["median"] > 0


@pytest.mark.model
def test_tokenizer_row_says_crashed_and_the_others_are_measured(chat_model_path: Path, crashing_peer: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from nanochat_lite.bench import tokenizer_speed as ts

    xl = next(g for g in ts.FOREIGN if g.module == "xllamacpp")
    monkeypatch.setattr(ts, "FOREIGN", [g if g is not xl else ts.Foreign(xl.module, xl.names, xl.missing,
                                                                         f"{crashing_peer}:segv_tokenizers")
                                        for g in ts.FOREIGN])
    r = ts.run(True, model_path=str(chat_model_path), sizes=ts.Sizes(16, 1, 10), log=lambda s: None)
    assert r["unavailable"]["xllamacpp /tokenize"] == "crashed (signal 11)"
    assert "xllamacpp /tokenize" not in r["results"]
    for name in ("nanochat-lite", "HF tokenizers"):  # tokenizers is a dependency: its row is measured
        assert r["results"][name]["encode_mb_s"] > 0 and r["results"][name]["chat_per_s"] > 0, name
    assert r["results"]["nanochat-lite"]["ids_equal"]


@pytest.mark.model
def test_embeddings_row_says_crashed_and_ours_is_measured(embedding_model_dir: Path, crashing_peer: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from nanochat_lite.bench import embedding, embeddings_speed

    monkeypatch.delenv(embeddings_speed.ST_PYTHON_ENV, raising=False)
    monkeypatch.setattr(embeddings_speed, "_have_sentence_transformers", lambda: True)
    monkeypatch.setitem(embeddings_speed.ENGINES, "sentence-transformers", (f"{crashing_peer}:segv", "st"))
    monkeypatch.setitem(embeddings_speed.SIZES, True, (2, 1, 8))  # a second cold round: the crash drops it
    r = embedding.run(True, 1, embedding_model_dir)
    assert r["engines"]["sentence-transformers"] == "crashed (signal 11)"
    assert r["min_cosine"].startswith("not measured")
    for row in r["rows"]:
        assert row["nanochat-lite"]["median"] > 0 and row["sentence-transformers"] == "crashed (signal 11)", row
        assert row["ratio_median"] is None
    assert len(r["rows"]) == 6 and r["engines"]["nanochat-lite"]["cold_load_s"]["n"] == 2


@pytest.mark.model
def test_cold_start_row_says_crashed_when_a_server_peer_dies(chat_model_path: Path) -> None:
    """Server peers were always separate processes; one killed by a signal is its row too."""
    dying = peers.Peer("llama-server", lambda port, db: [sys.executable, "-c",
                                                         "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"],
                       "/health")
    r = serving.cold_start([peers.nanochat(chat_model_path, 1, 1024), dying], {}, runs=2, log=lambda s: None)
    assert r["llama-server"] == "crashed (signal 11)"
    assert r["peer_order"] == ["nanochat-lite"] and r["ratios"] == {}
    assert r["nanochat-lite"]["first_token_s"]["n"] == 2 and r["nanochat-lite"]["first_token_s"]["median"] > 0


def test_header_says_when_reading_the_llama_cpp_build_crashed(crashing_peer: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real = isolate.run_in_child
    monkeypatch.setattr(isolate, "run_in_child", lambda fn, **kw: real(f"{crashing_peer}:segv", **kw))
    b = suite.llama_cpp_build()
    assert b["error"] == "crashed (signal 11)" and b["xllamacpp"] == importlib.metadata.version("xllamacpp")
    line = report.llama_cpp_line(b)
    assert line.startswith(f"llama.cpp: xllamacpp {b['xllamacpp']}, {b['build']}; its system info: crashed (signal 11)")


def test_llama_cpp_line_known_answer() -> None:
    b = {"xllamacpp": "1.2", "build": "local build (wheel tag cp311-cp311-linux_x86_64)", "compiler": "GNU 12",
         "instruction_sets": ["AVX2", "AVX512"], "switches": ["OPENMP"], "cpu_simd": ["avx2", "avx512f"]}
    assert report.llama_cpp_line(b) == ("llama.cpp: xllamacpp 1.2, local build (wheel tag cp311-cp311-linux_x86_64), "
                                        "compiler GNU 12; instruction sets used: AVX2 AVX512 (also OPENMP); "
                                        "this CPU offers avx2 avx512f")
    patched = report.llama_cpp_line({**b, "load_releases_gil": True})
    assert "; Server() loads without the GIL (scripts/xllamacpp_nogil.py); this CPU" in patched
