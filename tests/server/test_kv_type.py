"""`--kv-type q8_0`: the KV cache in 8 bits with flash attention, on a real process. The
answers still come (greedy, the same question through /api/chat and /v1), /api/stats
reports the type and a cache of 34/64 the f16 size, and a bad value is refused before
anything loads, naming the choices. Speed and memory figures: scripts/kv_settings.py."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from serverproc import ServerProc

ARGS = ("--threads", "1", "--parallel", "2", "--ctx-size", "1024", "--kv-type", "q8_0")

pytestmark = pytest.mark.model


def test_q8_0_cache_answers_and_reports_its_size(tmp_path):
    with ServerProc(tmp_path, *ARGS) as s:
        r = httpx.post(s.url + "/api/chat", json={"message": "What is the capital of France?", "max_tokens": 12,
                                                   "temperature": 0}, timeout=120)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert data["message"].strip() and data["tokens"] > 0, data
        r = httpx.post(s.url + "/v1/chat/completions", json={
            "model": "x", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}, timeout=120)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text
        deadline = time.monotonic() + 120  # the cache's size is read from the header once idle
        while (engine := httpx.get(s.url + "/api/stats", timeout=30).json()["engine"])["kv_cache_bytes"] is None:
            assert time.monotonic() < deadline, engine
            time.sleep(0.1)
        assert engine["kv_type"] == "q8_0" and engine["kv_size"] == 2048, engine
        # SmolLM2-135M: 30 layers, 3 KV heads of 64: f16 would be 2048 x 30 x 2 x 192 x 2 bytes = 47,185,920
        assert engine["kv_cache_bytes"] == 47_185_920 * 34 // 64, engine


def test_the_default_cache_gives_its_unwritten_pages_back_and_says_so(tmp_path):
    """f16, 2 x 4096 cells: 180 MB allocated and cleared at load; once idle the pages no
    conversation wrote go back (engines/kv_pages.py), and /api/stats reports how many.
    (A cache under 64 MB, as with q8_0 above, is not looked at: too small to matter.)"""
    with ServerProc(tmp_path, "--threads", "1", "--parallel", "2") as s:
        r = httpx.post(s.url + "/api/chat", json={"message": "Say hi.", "max_tokens": 8, "temperature": 0},
                       timeout=120)
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 120
        while not ((engine := httpx.get(s.url + "/api/stats", timeout=30).json()["engine"])["kv_released_bytes"]
                   and engine["kv_cache_bytes"]):  # both come once the server is idle
            assert time.monotonic() < deadline, engine
            time.sleep(0.1)
        assert engine["kv_size"] == 8192 and engine["kv_cache_bytes"] == 4 * 47_185_920, engine
        assert engine["kv_cache_bytes"] // 2 < engine["kv_released_bytes"] < engine["kv_cache_bytes"], engine


def test_a_bad_kv_type_is_refused_with_the_choices(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nanochat_lite", "serve", "--kv-type", "q4_0", "--port", "0"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "q4_0" in proc.stderr and "f16" in proc.stderr and "q8_0" in proc.stderr, proc.stderr
