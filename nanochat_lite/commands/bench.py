"""``nanochat-lite bench``: the benchmark suite's flags, checked before anything runs.

    nanochat-lite bench [--quick] [--out DIR] [--threads N] [--sections cold,latency,...]
                        [--llama-server PATH] [--llama-bench PATH] [--baseline-cmd '...'] [--serve-args '...']
                        [--previous OLD/results.json]

Writes `results.json`, `report.md` and PNG plots into DIR (default ./bench-out) and
prints the same tables. What runs and how is `nanochat_lite.bench.suite`; this module
only parses, checks the peers' paths and hands over. Standard library only at import
time, besides the suite's constants.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..bench.suite import LLAMA_SERVER_PARALLEL, SECTIONS
from .common import CLIError, resolve_model

if TYPE_CHECKING:
    from ..bench.peers import PeerOptions
    from ..config import Config


def add_parser(sub: Any) -> None:
    """Register ``bench`` on the main CLI's subparsers."""
    p = sub.add_parser("bench", help="benchmark against llama-server and other peers; write a report",
                       description="`nanochat-lite bench`: every benchmark in one run, written to a folder.")
    p.add_argument("--quick", action="store_true",
                   help="fewer runs and requests, shorter answers (a smoke run, not for figures)")
    p.add_argument("--out", default="bench-out", help="output folder (default ./bench-out)")
    p.add_argument("--threads", "-t", type=int, help="CPU threads for every engine (default: all cores)")
    p.add_argument("--sections", help=f"comma-separated subset of: {','.join(SECTIONS)} (default: all)")
    p.add_argument("--model", "-m", help="a known model name or a .gguf path (default smollm2-135m-instruct)")
    p.add_argument("--home", help="model cache folder (env NANOCHAT_LITE_HOME)")
    p.add_argument("--previous", metavar="PATH", help="an earlier run's results.json (or its folder): the documents "
                   "section shows its figures beside today's (default: the one already in --out, if any)")
    peers = p.add_argument_group("peers", "servers to compare with; each one left out is reported as such")
    peers.add_argument("--llama-server", metavar="PATH", help="a llama.cpp llama-server binary (cold start, "
                       f"concurrency with --parallel {LLAMA_SERVER_PARALLEL}, latency, memory, fairness)")
    peers.add_argument("--llama-bench", metavar="PATH", help="a llama.cpp llama-bench binary: decode speed "
                       "compared with its `-p 0 -n 128` figure")
    peers.add_argument("--baseline-cmd", metavar="CMD", help="command template of another nanochat-lite build, "
                       "labelled 'nanochat-lite (serial baseline)'; placeholders {port} (required), {db}, "
                       "{threads}, {model}, {ctx}; e.g. '/tmp/old/.venv/bin/nanochat-lite serve --host 127.0.0.1 "
                       "--port {port} --db {db} --threads {threads}'")
    peers.add_argument("--st-python", metavar="PATH", help="a Python that can import sentence_transformers "
                       "(e.g. another venv's bin/python): the embeddings section's peer (env "
                       "NANOCHAT_LITE_ST_PYTHON; default: this Python when it has sentence-transformers)")
    peers.add_argument("--serve-args", metavar="ARGS", default="", help="extra `nanochat-lite serve` flags for "
                       "this checkout's server, one quoted string (e.g. '--parallel 10 --max-queue 64'; "
                       "a single flag needs the = form: --serve-args=--parallel=4)")


def run(args: argparse.Namespace, config: Config) -> int:
    from ..bench.suite import run_suite

    wanted = sections_arg(args.sections)
    opts = peer_options(args)
    previous = previous_arg(getattr(args, "previous", None))
    model, _name = resolve_model(config)
    return run_suite(model, config.home, config.threads, bool(args.quick), wanted, opts,
                     Path(args.out).expanduser(), previous=previous)


def previous_arg(value: str | None) -> Path | None:
    """--previous: an existing results.json of an earlier run, or a folder holding one."""
    if not value:
        return None
    from ..bench.documents_bench import previous_figures

    path = Path(value).expanduser()
    if not (path.is_file() or (path / "results.json").is_file()):
        raise CLIError(f"--previous {value}: no results.json there; give an earlier run's results.json "
                       "(or the --out folder it was written to)")
    try:
        previous_figures(path)
    except ValueError as e:
        raise CLIError(f"--previous: {e}") from e
    return path


def sections_arg(value: str | None) -> list[str]:
    """--sections: a subset of SECTIONS, in SECTIONS' order ("memory,cold" -> ["cold", "memory"])."""
    if not value:
        return list(SECTIONS)
    wanted = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        raise CLIError(f"--sections: unknown {', '.join(unknown)}; choose from {','.join(SECTIONS)}")
    return [s for s in SECTIONS if s in wanted]


def peer_options(args: argparse.Namespace) -> PeerOptions:
    """--llama-server/--llama-bench/--baseline-cmd/--serve-args, checked before anything runs."""
    from ..bench.peers import PeerOptions, parse_baseline

    binaries: dict[str, Path | None] = {}
    for flag in ("llama_server", "llama_bench"):
        value = getattr(args, flag, None)
        path = Path(value).expanduser() if value else None
        if path is not None and not (path.is_file() and os.access(path, os.X_OK)):
            raise CLIError(f"--{flag.replace('_', '-')} {value}: not an executable file; build it from llama.cpp "
                           f"(README, Benchmarks) and give its path")
        binaries[flag] = path
    st_python = getattr(args, "st_python", None)
    if st_python and not (Path(st_python).expanduser().is_file() and os.access(Path(st_python).expanduser(), os.X_OK)):
        raise CLIError(f"--st-python {st_python}: not an executable file; give a Python that can import "
                       "sentence_transformers (e.g. another venv's bin/python)")
    try:
        serve_args = tuple(shlex.split(getattr(args, "serve_args", "") or ""))
        baseline = getattr(args, "baseline_cmd", None)
        if baseline:
            parse_baseline(baseline)
    except ValueError as e:
        raise CLIError(str(e)) from e
    return PeerOptions(llama_server=binaries["llama_server"], llama_bench=binaries["llama_bench"],
                       serve_args=serve_args, baseline_cmd=baseline or None,
                       st_python=st_python or None)
