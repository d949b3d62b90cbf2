"""Which llama.cpp build is loaded: parsing llama.cpp's system info and the wheel's tags on
known answers, and the real xllamacpp of this venv described."""

from __future__ import annotations

import importlib.metadata
import json
import threading
import time

import pytest

import xllamacpp

from nanochat_lite.engines import build_info

WHEEL = """Wheel-Version: 1.0
Generator: setuptools (84.0.0)
Root-Is-Purelib: false
Tag: cp310-abi3-manylinux_2_17_x86_64
Tag: cp310-abi3-manylinux2014_x86_64
"""


def test_system_info_instruction_sets_of_the_cpu_backend_only() -> None:
    text = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 0 | AMX_INT8 = 0 | LLAMAFILE = 1 | "
            "OPENMP = 1 | REPACK = 1 | CUDA : ARCHS = 890 | USE_GRAPHS = 1 | ")
    assert build_info.parse_system_info(text) == (["SSE3", "SSSE3", "AVX", "AVX2"], ["LLAMAFILE", "OPENMP", "REPACK"])
    assert build_info.parse_system_info("CPU : AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 |") == (
        ["AVX512", "AVX512_VNNI", "AMX_INT8"], [])
    assert build_info.parse_system_info("") == ([], [])


def test_prebuilt_wheel_or_local_build() -> None:
    assert build_info.build_kind(WHEEL, None) == "prebuilt wheel (cp310-abi3-manylinux_2_17_x86_64)"
    local = WHEEL.replace("manylinux_2_17_x86_64", "linux_x86_64").replace("Tag: cp310-abi3-manylinux2014_x86_64\n", "")
    assert build_info.build_kind(local, None) == "local build (wheel tag cp310-abi3-linux_x86_64)"
    # Installed from a file or folder: a local build whatever the tag says.
    url = json.dumps({"url": "file:///tmp/xllamacpp-0.2.tar.gz", "archive_info": {}})
    assert build_info.build_kind(WHEEL, url) == ("local build (wheel tag cp310-abi3-manylinux_2_17_x86_64, "
                                                 "from file:///tmp/xllamacpp-0.2.tar.gz)")
    assert build_info.build_kind(None, None) == "local build (no wheel tag)"


def test_this_venv_xllamacpp_described() -> None:
    d = build_info.describe()
    assert d["xllamacpp"] == importlib.metadata.version("xllamacpp")
    assert d["build"].startswith(("prebuilt wheel (", "local build ("))
    assert d["instruction_sets"], d  # an x86 or ARM build names at least one
    for name in d["instruction_sets"] + d["switches"]:
        assert f"{name} = 1" in d["system_info"]
    assert json.loads(json.dumps(d)) == d  # the bench reads it from a child process as JSON
    if d["build"].startswith("prebuilt wheel"):  # it holds the GIL while Server() loads
        assert d["load_releases_gil"] is False


@pytest.mark.model
def test_with_the_patched_build_python_runs_beside_the_model_load(chat_model_path) -> None:
    """scripts/build-native.sh's patch, checked where it is installed: another Python thread
    keeps running while Engine() loads (with the prebuilt wheel it stops for the whole load)."""
    if not getattr(xllamacpp, "NOGIL_LOAD", False):
        pytest.skip("the prebuilt wheel: Server() holds the GIL (scripts/build-native.sh patches that)")
    from nanochat_lite.engines.local import Engine

    ticks: list[float] = []
    loading = threading.Event()

    def tick() -> None:
        while not loading.is_set():
            time.sleep(0.001)
        while loading.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=tick)
    t.start()
    loading.set()
    started = time.perf_counter()
    engine = Engine(chat_model_path, n_ctx=2048, parallel=2, threads=2)
    took = time.perf_counter() - started
    loading.clear()
    t.join()
    engine.close()
    # the longest pause of the ticking thread during the load: a few ms, not the whole load
    pauses = [b - a for a, b in zip(ticks, ticks[1:])]
    assert ticks and max(pauses) < took / 2, (max(pauses), took)
