"""The servers a benchmark runs side by side: how each is started, when it is ready,
and which request fields only it reads.

Peers, in the order they appear in every table:
- nanochat-lite: this checkout's `serve`, plus `--serve-args` passed through;
- nanochat-lite (serial baseline): any other build, started from a command template
  (`--baseline-cmd`), e.g. the previous engine from another checkout;
- llama-server: llama.cpp's C++ server, a binary given by path (`--llama-server`);
- llama_cpp.server: llama-cpp-python's server, when that package is installed.

Every peer listens on a free loopback port. Nothing here builds llama.cpp or looks
for its binaries on PATH: a peer that was not given or is not installed is reported
as such, never guessed.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import shlex
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .common import Proc, free_port

NANO = "nanochat-lite"
NANO_DEFAULTS = "nanochat-lite (default settings)"
BASELINE = "nanochat-lite (serial baseline)"
LLAMA_SERVER = "llama-server"
LLAMA_CPP_SERVER = "llama_cpp.server"
BASELINE_FIELDS = ("port", "db", "threads", "model", "ctx")
NOT_INSTALLED = {
    LLAMA_CPP_SERVER: "not installed (pip install 'llama-cpp-python[server]')",
    LLAMA_SERVER: "not given (--llama-server PATH)",
    BASELINE: "not given (--baseline-cmd '...')",
}


@dataclass(frozen=True)
class Peer:
    """One server to benchmark. `argv(port, db)` is its command line on that port,
    with `db` a scratch file path it may use for its conversation store."""

    name: str
    argv: Callable[[int, Path], list[str]]
    ready_path: str  # GET this until it answers 200
    nanochat: bool = False  # speaks nanochat-lite's own API too (/api/*, /ws)
    usage: bool = True  # honours stream_options.include_usage (completion tokens in the last chunk)
    n_predict: bool = False  # reads llama.cpp's own `n_predict`; sent beside max_tokens

    def start(self, scratch: Path) -> Proc:
        port = free_port()
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")
        return Proc(self.argv(port, scratch / f"{slug}-{port}.sqlite3"), port)


@dataclass(frozen=True)
class PeerOptions:
    """What the command line said about peers (`nanochat-lite bench --help`)."""

    llama_server: Path | None = None
    llama_bench: Path | None = None
    serve_args: tuple[str, ...] = ()
    baseline_cmd: str | None = None
    llama_cpp_server: bool = True  # use it when installed
    st_python: str | None = None  # interpreter for the embeddings section's sentence-transformers


# -- nanochat-lite ---------------------------------------------------------------------
def nanochat(model: Path, threads: int, ctx: int, serve_args: tuple[str, ...] = (),
             *, after: tuple[str, ...] = ()) -> Peer:
    """This checkout's server. `serve_args` come after our own flags, so they win (argparse
    keeps the last); `after` comes last of all, for what a section cannot do without."""
    from .common import nanochat_cmd

    return Peer(NANO, lambda port, db: [*nanochat_cmd(port, str(model), threads, ctx, db), *serve_args, *after],
                "/api/health", nanochat=True)


def nanochat_defaults(model: Path, threads: int) -> Peer:
    """This checkout's server with its default settings (context size, slots, queue): only
    the model, threads, address and store are given. For what the defaults allocate."""
    from .common import nanochat_cmd

    def argv(port: int, db: Path) -> list[str]:
        cmd = nanochat_cmd(port, str(model), threads, 0, db)
        i = cmd.index("--ctx-size")
        return cmd[:i] + cmd[i + 2:]

    return Peer(NANO_DEFAULTS, argv, "/api/health", nanochat=True)


def parse_baseline(template: str) -> list[str]:
    """Split a --baseline-cmd template into words and check its placeholders.

    "nano serve --port {port} --db {db}" -> ["nano", "serve", "--port", "{port}", "--db", "{db}"]
    """
    words = shlex.split(template)
    if not words:
        raise ValueError("--baseline-cmd is empty: give a command line with {port} in it")
    fields = {name for w in words for _, name, _, _ in string.Formatter().parse(w) if name is not None}
    unknown = fields - set(BASELINE_FIELDS)
    if unknown:
        raise ValueError(f"--baseline-cmd: unknown placeholder(s) {', '.join(sorted('{' + f + '}' for f in unknown))}; "
                         f"use {', '.join('{' + f + '}' for f in BASELINE_FIELDS)}")
    if "port" not in fields:
        raise ValueError("--baseline-cmd needs {port} (the benchmark picks a free loopback port)")
    return words


def baseline(template: str, model: Path, threads: int, ctx: int) -> Peer:
    """Another nanochat-lite build from a command template with {port} {db} {threads} {model} {ctx}."""
    words = parse_baseline(template)

    def argv(port: int, db: Path) -> list[str]:
        values = {"port": port, "db": str(db), "threads": threads, "model": str(model), "ctx": ctx}
        return [w.format(**values) for w in words]

    return Peer(BASELINE, argv, "/api/health", nanochat=True)


# -- llama.cpp ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def llama_server_flags(binary: Path) -> frozenset[str]:
    """The long flags this llama-server build accepts, read from its --help."""
    out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60)
    return frozenset(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", out.stdout + out.stderr))


def binary_version(binary: Path) -> str:
    """First line of `BINARY --version` (llama.cpp prints "version: N (commit)" to stderr)."""
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        return f"unknown ({e})"
    lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if ln.strip().startswith("version")]
    return lines[0] if lines else "unknown"


def llama_server(binary: Path, model: Path, threads: int, *, ctx: int, parallel: int | None = None,
                 unified_ctx: int | None = None) -> Peer:
    """llama-server on the same GGUF and threads. With `parallel` slots each slot needs `ctx`
    tokens: one unified KV cache of `unified_ctx` when the build has --kv-unified, else
    `ctx * parallel` split evenly. Without `parallel` it runs with its own defaults and `-c ctx`."""
    flags = llama_server_flags(binary)
    args = ["-m", str(model), "--threads", str(threads)]
    if "--threads-batch" in flags:
        args += ["--threads-batch", str(threads)]
    if parallel is None:
        args += ["-c", str(ctx)]
    elif unified_ctx and "--kv-unified" in flags:
        args += ["--parallel", str(parallel), "-c", str(unified_ctx), "--kv-unified"]
    else:
        args += ["--parallel", str(parallel), "-c", str(ctx * parallel)]
    if "--no-webui" in flags:
        args.append("--no-webui")
    if "--jinja" in flags:  # render the GGUF's own chat template, as nanochat-lite does
        args.append("--jinja")

    def argv(port: int, _db: Path) -> list[str]:
        return [str(binary), *args, "--host", "127.0.0.1", "--port", str(port)]

    return Peer(LLAMA_SERVER, argv, "/health", n_predict=True)


def have_llama_cpp_python() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def have_llama_cpp_server() -> bool:
    return all(importlib.util.find_spec(m) is not None
               for m in ("llama_cpp", "fastapi", "sse_starlette", "starlette_context"))


def llama_cpp_server(model: Path, threads: int, ctx: int) -> Peer:
    """`python -m llama_cpp.server`; it has no health route and loads the model before it
    listens, so its first 200 from /v1/models means ready. `--interrupt_requests false`:
    by default a waiting request cuts the streaming one short."""
    from .common import llama_cpp_server_cmd

    return Peer(LLAMA_CPP_SERVER,
                lambda port, _db: llama_cpp_server_cmd(port, model, threads, ctx, ("--interrupt_requests", "false")),
                "/v1/models", usage=False)


def kv_cache_from_log(log: str) -> int | None:
    """Bytes of KV cache llama.cpp says it allocated, summed over its caches.

    "llama_kv_cache: size =  180.00 MiB (  8192 cells, ..." -> 188743680
    """
    sizes = re.findall(r"llama_kv_cache[\w]*: size =\s*([\d.]+) MiB", log)
    return round(sum(float(s) for s in sizes) * (1 << 20)) if sizes else None


# -- llama-bench ---------------------------------------------------------------------------
def llama_bench_tg(binary: Path, model: Path, threads: int, n_gen: int, repetitions: int = 1,
                   timeout: float = 300) -> float:
    """llama-bench's text-generation figure (tokens/s, mean over `repetitions`) for
    `-p 0 -n n_gen`: decoding alone, no server, no sampling."""
    cmd = [str(binary), "-m", str(model), "-p", "0", "-n", str(n_gen), "-t", str(threads),
           "-r", str(repetitions), "-o", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {out.returncode}: {out.stderr[-1000:]}")
    rows = json.loads(out.stdout[out.stdout.index("["):])
    for row in rows:
        if row.get("n_prompt") == 0 and row.get("n_gen") == n_gen:
            return float(row["avg_ts"])
    raise RuntimeError(f"llama-bench printed no tg{n_gen} row: {out.stdout[:500]}")


# -- the set for one section -------------------------------------------------------------------
def serving_peers(opts: PeerOptions, model: Path, threads: int, ctx: int, *, parallel: int | None = None,
                  unified_ctx: int | None = None) -> tuple[list[Peer], dict[str, str]]:
    """(peers to run, {name: why absent}) for the sections that run several servers at once.
    `parallel`/`unified_ctx` go to llama-server (None: its defaults)."""
    peers = [nanochat(model, threads, ctx, opts.serve_args)]
    absent: dict[str, str] = {}
    if opts.baseline_cmd:
        peers.append(baseline(opts.baseline_cmd, model, threads, ctx))
    else:
        absent[BASELINE] = NOT_INSTALLED[BASELINE]
    if opts.llama_server:
        peers.append(llama_server(opts.llama_server, model, threads, ctx=ctx, parallel=parallel,
                                  unified_ctx=unified_ctx))
    else:
        absent[LLAMA_SERVER] = NOT_INSTALLED[LLAMA_SERVER]
    if opts.llama_cpp_server and have_llama_cpp_server():
        peers.append(llama_cpp_server(model, threads, ctx))
    else:
        absent[LLAMA_CPP_SERVER] = NOT_INSTALLED[LLAMA_CPP_SERVER]
    return peers, absent


def peer_info(opts: PeerOptions) -> dict[str, str]:
    """What the report header says about the peers of this run."""
    info = {"serve_args": shlex.join(opts.serve_args) or "(none)",
            LLAMA_CPP_SERVER: "installed" if opts.llama_cpp_server and have_llama_cpp_server()
            else NOT_INSTALLED[LLAMA_CPP_SERVER]}
    for name, path in ((LLAMA_SERVER, opts.llama_server), ("llama-bench", opts.llama_bench)):
        info[name] = f"{path} ({binary_version(path)})" if path else f"not given (--{name} PATH)"
    info[BASELINE] = opts.baseline_cmd or NOT_INSTALLED[BASELINE]
    info["python"] = sys.executable
    return info
