"""`nanochat-lite bench`: every benchmark in one run, written to a folder.

    nanochat-lite bench [--quick] [--out DIR] [--threads N] [--sections cold,latency,...]

Writes `results.json`, `report.md` and PNG plots into DIR (default ./bench-out) and
prints the same tables. Sections run in a fixed order; one that fails is reported
with its error and the others still run. Run sizes are fixed per mode so a run ends
in about 10 minutes on 2 cores (--quick: about 2, with 32-token answers instead of 64);
nothing is extrapolated.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

SECTIONS = ("cold", "decode", "tokenizer", "latency", "concurrency", "memory", "embeddings")
CTX = 2048  # llama_cpp.server's default context; both servers get the same
# Run sizes: (full, quick).
COLD_RUNS = (5, 2)
DECODE_RUNS, DECODE_TOKENS = (5, 2), (256, 128)
LATENCY_REQUESTS = (100, 20)  # per server
MAX_TOKENS = (64, 32)  # per answer in the latency and concurrency sections
# No new latency request after this many seconds; a quiet machine needs about half.
LATENCY_BUDGET_S = (240.0, 30.0)
LEVELS = [1, 4, 10]
REQUESTS_PER_CLIENT = (3, 1)
TIME_BOX_S = (60.0, 10.0)  # per (server, transport, level) run of the concurrency section
VERSIONS = ("nanochat-lite", "llama_cpp_python", "tiktoken", "tokenizers", "numpy", "starlette", "uvicorn",
            "httpx", "websockets", "matplotlib")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmark against llama_cpp.server and other peers; write a report",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer runs and requests (about 2 minutes)")
    p.add_argument("--out", default="bench-out", help="output folder (default ./bench-out)")
    p.add_argument("--threads", "-t", type=int, help="CPU threads for every engine (default: all cores)")
    p.add_argument("--sections", help=f"comma-separated subset of: {','.join(SECTIONS)} (default: all)")
    p.add_argument("--model", "-m", help="a known model name or a .gguf path (default smollm2-135m-instruct)")
    p.add_argument("--home", help="model cache folder (env NANOCHAT_LITE_HOME)")


def _say(msg: str) -> None:
    print(msg, flush=True)


def _versions() -> dict[str, str]:
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


def _model_info(path: Path, home: Path) -> dict[str, Any]:
    from .. import models

    known = models.KNOWN[models.DEFAULT_CHAT]
    if path == models.model_path(home, known) and models.status(home, known) == "ready":
        sha, source = known.files[""], "model store table, verified when pulled"
    else:
        sha, source = models.sha256_file(path), "hashed for this run"
    return {"name": path.name, "path": str(path), "bytes": path.stat().st_size, "sha256": sha,
            "sha256_source": source}


def build_header(model: Path, home: Path, threads: int, quick: bool, sections: list[str]) -> dict[str, Any]:
    """Date, machine, versions and model identity; `duration_s`/`load_average_end` come at the end."""
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": _cpu(), "cores": os.cpu_count(),
            "threads": threads, "ctx": CTX, "python": platform.python_version(), "versions": _versions(),
            "model": _model_info(model, home), "quick": quick, "sections": sections,
            "load_average_start": os.getloadavg()[0]}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _sections_arg(value: str | None) -> list[str]:
    from ..cli import CLIError

    if not value:
        return list(SECTIONS)
    wanted = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        raise CLIError(f"--sections: unknown {', '.join(unknown)}; choose from {','.join(SECTIONS)}")
    return [s for s in SECTIONS if s in wanted]


def _section_fns(model: Path, threads: int, quick: bool, home: Path, wanted: list[str]) -> dict[str, Callable[[], Any]]:
    """Section name -> a call that measures it. Sections 3-5 share one start of the servers."""
    from . import embedding, latency, serving, tokenization

    q = 1 if quick else 0
    serving_results: dict[str, Any] = {}

    def cold() -> dict:
        r = serving.cold_start(model, threads, CTX, COLD_RUNS[q], log=_say)
        try:
            import transformers  # noqa: F401
            hf = "installed, not measured: needs this model in transformers format, which the model store lacks"
        except ImportError:
            hf = "not installed"
        return {**r, "runs": COLD_RUNS[q], "transformers": hf}

    def decode() -> dict:
        r = serving.decode_speed(model, threads, CTX, DECODE_RUNS[q], DECODE_TOKENS[q], log=_say)
        return {**r, "runs": DECODE_RUNS[q], "n_tokens": DECODE_TOKENS[q]}

    def served(name: str) -> Callable[[], dict]:
        def fn() -> dict:
            if not serving_results:  # the first of latency/concurrency/memory runs all that were asked for
                try:
                    serving_results.update(latency.run(
                        model, threads, CTX, sections={s for s in wanted if s in ("latency", "concurrency", "memory")},
                        requests=LATENCY_REQUESTS[q], budget_s=LATENCY_BUDGET_S[q], levels=LEVELS,
                        per_client=REQUESTS_PER_CLIENT[q], time_box_s=TIME_BOX_S[q], home=home,
                        max_tokens=MAX_TOKENS[q], log=_say))
                except Exception as e:  # reported once per section; the servers are not started again
                    serving_results["failed"] = e
            if "failed" in serving_results:
                raise serving_results["failed"]
            return serving_results[name]
        return fn

    def embeddings() -> dict:
        from .. import models

        return embedding.run(quick, threads, models.ensure(home, models.DEFAULT_EMBEDDING))

    return {"cold": cold, "decode": decode, "tokenizer": lambda: tokenization.run(str(model), quick),
            "latency": served("latency"), "concurrency": served("concurrency"), "memory": served("memory"),
            "embeddings": embeddings}


def run(args: argparse.Namespace, config: Any) -> int:
    from ..cli import resolve_model
    from . import report

    wanted = _sections_arg(args.sections)
    model, _name = resolve_model(config)
    out_dir = Path(args.out).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    header = build_header(model, config.home, config.threads, bool(args.quick), wanted)
    results: dict[str, Any] = {"header": header, "sections": {}}
    fns = _section_fns(model, config.threads, args.quick, config.home, wanted)
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
