"""The whole benchmark suite in one run (`nanochat-lite bench`), written to a folder.

The command's flags and their checks are `nanochat_lite.commands.bench`; this module
runs the sections, writes `results.json`, `report.md` and PNG plots into the output
folder and prints the same tables. Sections run in a fixed order; one that fails is reported
with its error and the others still run. Run sizes are fixed per mode (--quick: fewer
runs, 32-token answers instead of 64); nothing is extrapolated. Peers that were not
given or are not installed are reported as such (see `peers.py`); peers that load native
code into Python run in child processes, and one that dies is its row, "crashed (signal
N)" (see `isolate.py`). The header names the llama.cpp build (`llama_cpp_build`).
The documents section shows the previous run's figures beside today's: those of
`--previous`, else of the results.json already in the output folder (read before it is
replaced; see documents_bench.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # the module stays importable for --help without the bench extra
    from .peers import PeerOptions

SECTIONS = ("cold", "decode", "tokenizer", "latency", "concurrency", "memory", "fairness", "embeddings", "front",
            "retrieval", "documents")
CTX = 2048  # context per conversation, the same for every server (llama_cpp.server's default)
# llama-server in the serving sections: 10 slots sharing one KV cache of 8192 cells when the
# build has --kv-unified (else CTX per slot), so 10 simultaneous chats all get a slot.
LLAMA_SERVER_PARALLEL, LLAMA_SERVER_UNIFIED_CTX = 10, 8192
# Run sizes: (full, quick).
COLD_RUNS = (5, 2)
DECODE_RUNS, DECODE_TOKENS = (5, 2), (256, 128)
LATENCY_REQUESTS = (100, 20)  # per server
MAX_TOKENS = (64, 32)  # per answer in the latency and concurrency sections
# No new latency request after this many seconds; a quiet machine needs about half.
LATENCY_BUDGET_S = (240.0, 30.0)
LEVELS = [1, 4, 10]
REQUESTS_PER_CLIENT = (1, 1)  # each a new conversation
TIME_BOX_S = (120.0, 60.0)  # per (server, transport, level) run of the concurrency section
# Fairness: a prompt of this many tokens while 3 streams of up to this many tokens run.
FAIR_PROMPT_TOKENS, FAIR_STREAM_TOKENS = (3000, 1500), (1024, 256)
FAIR_CTX = 8192  # the long prompt and three answers fit; 4 slots for llama-server
FAIR_START_WAIT_S, FAIR_TIME_BOX_S = (30.0, 15.0), (240.0, 90.0)
FRONT_ROUNDS, FRONT_MAX_TOKENS = (20, 8), (32, 32)  # requests per path, tokens per answer
# Documents (issue 21): PDF pages uploaded, chat turns timed idle and while it indexes,
# stored chunks searched (synthetic) and searches per size.
DOCS_PAGES, DOCS_TURNS = (300, 20), (8, 3)
DOCS_SIZES: tuple[tuple[int, ...], tuple[int, ...]] = ((1_000, 10_000, 100_000), (1_000,))
DOCS_QUERIES = (200, 40)
# The CPU's SIMD flags worth naming beside the instruction sets llama.cpp was built with
# (an AVX2 wheel on an AVX-512 machine leaves speed unused).
SIMD_FLAGS = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
VERSIONS = ("nanochat-lite", "xllamacpp", "llama_cpp_python", "tiktoken", "tokenizers", "numpy", "starlette",
            "uvicorn", "httpx", "websockets", "matplotlib")


def _say(msg: str) -> None:
    print(msg, flush=True)


def _versions() -> dict[str, str]:
    import importlib.metadata

    out = {}
    for name in VERSIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_simd() -> list[str]:
    """Which of SIMD_FLAGS /proc/cpuinfo lists (what the machine offers, not what runs)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in SIMD_FLAGS if flag in flags]


def llama_cpp_build() -> dict[str, Any]:
    """The loaded llama.cpp build (`engines.build_info.describe`), read in a child process:
    a build for another CPU may die at import, and that must not end the run."""
    from ..engines import build_info
    from .isolate import PeerFailed, row_text, run_in_child

    version, kind = build_info.distribution_kind()
    try:
        info: dict[str, Any] = run_in_child(build_info.describe, timeout=120)
    except PeerFailed as e:
        info = {"xllamacpp": version, "build": kind, "error": row_text(e)}
    return {**info, "cpu_simd": _cpu_simd()}


def _model_info(path: Path, home: Path) -> dict[str, Any]:
    from .. import models

    known = models.KNOWN[models.DEFAULT_CHAT]
    if path == models.model_path(home, known) and models.status(home, known) == "ready":
        sha, source = known.files[""], "model store table, verified when pulled"
    else:
        sha, source = models.sha256_file(path), "hashed for this run"
    return {"name": path.name, "path": str(path), "bytes": path.stat().st_size, "sha256": sha,
            "sha256_source": source}


def build_header(model: Path, home: Path, threads: int, quick: bool, sections: list[str],
                 peers: PeerOptions | None = None) -> dict[str, Any]:
    """Date, machine, versions, peers and model identity; `duration_s`/`load_average_end` come at the end."""
    from .peers import PeerOptions, peer_info

    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": _cpu(), "cores": os.cpu_count(),
            "threads": threads, "ctx": CTX, "python": platform.python_version(), "versions": _versions(),
            "peers": peer_info(peers or PeerOptions()), "llama_cpp": llama_cpp_build(),
            "model": _model_info(model, home), "quick": quick,
            "sections": sections, "load_average_start": os.getloadavg()[0]}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _section_fns(model: Path, threads: int, quick: bool, home: Path, wanted: list[str],
                 opts: PeerOptions, previous: dict[str, Any] | None = None) -> dict[str, Callable[[], Any]]:
    """Section name -> a call that measures it. latency/concurrency/memory share one start of the servers."""
    from ..tokenizer import Tokenizer
    from . import embedding, fairness, latency, peers, serving, tokenization

    q = 1 if quick else 0
    serving_results: dict[str, Any] = {}

    def cold() -> dict:
        ps, absent = peers.serving_peers(opts, model, threads, CTX)  # llama-server with its own defaults
        r = serving.cold_start(ps, absent, COLD_RUNS[q], log=_say)
        # Looked up, not imported: importing it may load torch's native code into this process.
        hf = ("installed, not measured: needs this model in transformers format, which the model store lacks"
              if importlib.util.find_spec("transformers") else "not installed")
        return {**r, "runs": COLD_RUNS[q], "transformers": hf}

    def decode() -> dict:
        r = serving.decode_speed(model, threads, CTX, DECODE_RUNS[q], DECODE_TOKENS[q], serve_args=opts.serve_args,
                                 llama_bench=opts.llama_bench, log=_say)
        return {**r, "runs": DECODE_RUNS[q], "n_tokens": DECODE_TOKENS[q]}

    def served(name: str) -> Callable[[], dict]:
        def fn() -> dict:
            if not serving_results:  # the first of latency/concurrency/memory runs all that were asked for
                try:
                    ps, absent = peers.serving_peers(opts, model, threads, CTX, parallel=LLAMA_SERVER_PARALLEL,
                                                     unified_ctx=LLAMA_SERVER_UNIFIED_CTX)
                    serving_results.update(latency.run(
                        model, threads, peers=ps, absent=absent,
                        sections={s for s in wanted if s in ("latency", "concurrency", "memory")},
                        requests=LATENCY_REQUESTS[q], budget_s=LATENCY_BUDGET_S[q], levels=LEVELS,
                        per_client=REQUESTS_PER_CLIENT[q], time_box_s=TIME_BOX_S[q], home=home,
                        max_tokens=MAX_TOKENS[q], log=_say))
                except Exception as e:  # reported once per section; the servers are not started again
                    serving_results["failed"] = e
            if "failed" in serving_results:
                raise serving_results["failed"]
            return serving_results[name]
        return fn

    def fair() -> dict:
        # Our --ctx-size comes after --serve-args: the long prompt needs it whatever they say.
        ps = [peers.nanochat(model, threads, CTX, opts.serve_args, after=("--ctx-size", str(FAIR_CTX)))]
        absent = {}
        if opts.llama_server:
            ps.append(peers.llama_server(opts.llama_server, model, threads, ctx=FAIR_CTX // 2,
                                         parallel=fairness.STREAMS + 1, unified_ctx=FAIR_CTX))
        else:
            absent[peers.LLAMA_SERVER] = peers.NOT_INSTALLED[peers.LLAMA_SERVER]
        return fairness.run(ps, Tokenizer.from_gguf(model).count, prompt_tokens=FAIR_PROMPT_TOKENS[q],
                            stream_tokens=FAIR_STREAM_TOKENS[q], start_wait_s=FAIR_START_WAIT_S[q],
                            time_box_s=FAIR_TIME_BOX_S[q], absent=absent, log=_say)

    def front() -> dict:
        from . import front_cost

        return front_cost.run(model=str(model), threads=threads, rounds=FRONT_ROUNDS[q], max_tokens=FRONT_MAX_TOKENS[q])

    def embeddings() -> dict:
        from .. import models

        return embedding.run(quick, threads, models.ensure(home, models.DEFAULT_EMBEDDING), opts.st_python)

    def retrieval() -> dict:
        from .. import models
        from . import retrieval as quality

        return quality.run(quick, model_dir=models.ensure(home, models.DEFAULT_EMBEDDING))

    return {"cold": cold, "decode": decode, "tokenizer": lambda: tokenization.run(str(model), quick, log=_say),
            "latency": served("latency"), "concurrency": served("concurrency"), "memory": served("memory"),
            "fairness": fair, "embeddings": embeddings, "front": front,
            "retrieval": retrieval, "documents": lambda: _documents(model, threads, quick, home, opts, previous)}


def _documents(model: Path, threads: int, quick: bool, home: Path, opts: PeerOptions,
               previous: dict[str, Any] | None) -> dict[str, Any]:
    from . import documents_bench

    q = 1 if quick else 0
    return documents_bench.run(model, threads, CTX, home, quick=quick, pages=DOCS_PAGES[q], turns=DOCS_TURNS[q],
                               sizes=DOCS_SIZES[q], queries=DOCS_QUERIES[q], serve_args=opts.serve_args,
                               previous=previous, log=_say)


def run_suite(model: Path, home: Path, threads: int, quick: bool, wanted: list[str], opts: PeerOptions,
              out_dir: Path, previous: Path | None = None) -> int:
    """Run the `wanted` sections in order, print the tables, write results.json, report.md and plots.
    `previous`: an earlier results.json (or its folder) whose documents figures are shown
    beside today's; by default the one already in `out_dir`, read before it is replaced."""
    from . import documents_bench, report

    out_dir.mkdir(parents=True, exist_ok=True)
    before = None
    if "documents" in wanted:
        try:
            before = documents_bench.previous_figures(previous or out_dir)
        except ValueError as e:
            if previous is not None:  # given on purpose: say so; a stray file in --out is only noted
                raise
            _say(f"(no previous figures: {e})")
    started = time.perf_counter()
    header = build_header(model, home, threads, quick, wanted, opts)
    _say("\n".join(report.header_lines({**header, "duration_s": None, "load_average_end": None})))
    results: dict[str, Any] = {"header": header, "sections": {}}
    fns = _section_fns(model, threads, quick, home, wanted, opts, before)
    for name in wanted:
        _say(f"\n== {name} ==")
        t0 = time.perf_counter()
        try:
            results["sections"][name] = fns[name]()
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one broken section must not lose the others' numbers
            traceback.print_exc(file=sys.stderr)
            results["sections"][name] = {"error": f"{type(e).__name__}: {e}"}
        _say(f"  ({time.perf_counter() - t0:.0f} s)")
    header["duration_s"] = time.perf_counter() - started
    header["load_average_end"] = os.getloadavg()[0]
    _write_atomic(out_dir / "results.json", json.dumps(results, indent=2, default=str))
    made = report.write(results, out_dir)
    print()
    print(report.text(results))
    print(f"\nWrote {out_dir / 'results.json'}, {out_dir / 'report.md'}"
          + (f" and {len(made)} plots ({', '.join(made.values())})" if made else " (no plots: see the report)"))
    return 0
