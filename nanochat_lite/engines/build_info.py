"""Which llama.cpp build this process loads: the `xllamacpp` version, whether it is the
prebuilt wheel or a build made on this machine, and the CPU instruction sets llama.cpp
says it uses (its own system-info string).

The prebuilt x86 wheel is compiled for AVX2; on an AVX-512 machine that alone explains
much of a decode gap to a llama.cpp built for the machine, so a benchmark that does not
say which build ran cannot be read. `describe()` imports xllamacpp (native code: the
benchmark calls it in a child process); `build_kind` and `parse_system_info` are pure.
"""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any

# Entries of llama.cpp's system info that are switches of the build, not instruction sets.
NOT_INSTRUCTION_SETS = frozenset({"LLAMAFILE", "OPENMP", "REPACK", "KLEIDIAI", "ACCELERATE"})


def parse_system_info(text: str) -> tuple[list[str], list[str]]:
    """(instruction sets, other switches) turned on in llama.cpp's CPU backend.

    "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 0 | OPENMP = 1 | " -> (["SSE3", "AVX2"], ["OPENMP"])
    Other backends' entries ("CUDA : ARCHS = 890 | ...") are not the CPU's and are left out.
    """
    backend = ""
    isa: list[str] = []
    other: list[str] = []
    for piece in text.split("|"):
        if " : " in piece:  # "CPU : SSE3 = 1": a backend's first entry names it
            backend, _, piece = piece.partition(" : ")
            backend = backend.strip()
        key, eq, value = piece.partition("=")
        key = key.strip()
        if backend != "CPU" or not eq or value.strip() != "1" or not key:
            continue
        (other if key in NOT_INSTRUCTION_SETS else isa).append(key)
    return isa, other


def build_kind(wheel: str | None, direct_url: str | None) -> str:
    """"prebuilt wheel (TAG)" or "local build (...)", from the installed distribution's
    WHEEL file and direct_url.json (present when pip installed it from a path or URL).

    "Tag: cp310-abi3-manylinux_2_17_x86_64" -> "prebuilt wheel (cp310-abi3-manylinux_2_17_x86_64)"
    "Tag: cp311-cp311-linux_x86_64" -> "local build (wheel tag cp311-cp311-linux_x86_64)"
    """
    tags = [line.split(":", 1)[1].strip() for line in (wheel or "").splitlines() if line.startswith("Tag:")]
    source = ""
    if direct_url:
        try:
            source = str(json.loads(direct_url).get("url", ""))
        except ValueError:
            source = "unreadable direct_url.json"
    # Wheels built for distribution carry a manylinux/musllinux (or macOS/Windows) platform
    # tag; `pip wheel`/`pip install` from the sdist on Linux tags it plain linux_<arch>.
    portable = [t for t in tags if "manylinux" in t or "musllinux" in t or "macosx" in t or "win" in t]
    if portable and not source:
        return f"prebuilt wheel ({portable[0]})"
    details = [f"wheel tag {tags[0]}" if tags else "no wheel tag", *([f"from {source}"] if source else [])]
    return f"local build ({', '.join(details)})"


def distribution_kind() -> tuple[str, str]:
    """(version, build kind) of the installed xllamacpp, without importing it."""
    try:
        dist = importlib.metadata.distribution("xllamacpp")
    except importlib.metadata.PackageNotFoundError:
        return "not installed", "not installed"
    return dist.version, build_kind(dist.read_text("WHEEL"), dist.read_text("direct_url.json"))


def describe() -> dict[str, Any]:
    """Version, build kind, compiler and the instruction sets of the loaded llama.cpp."""
    import xllamacpp as xl

    version, kind = distribution_kind()
    info = xl.get_system_info()
    isa, other = parse_system_info(info)
    build = getattr(xl, "BUILD_INFO", {}) or {}
    return {"xllamacpp": version, "build": kind, "compiler": str(build.get("compiler", "unknown")),
            "instruction_sets": isa, "switches": other, "system_info": info.strip(),
            # scripts/build-native.sh's patch: the model loads while other Python threads run
            "load_releases_gil": bool(getattr(xl, "NOGIL_LOAD", False))}
