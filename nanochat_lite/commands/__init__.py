"""The CLI's sub-commands, one module per group; `nanochat_lite.cli` builds the parser and dispatches.

    serve.py      serve              flags only; the start-up is `nanochat_lite.commands.boot`
    chat.py       chat               a conversation in the terminal
    models.py     pull, models       the model store
    tokenizer.py  tokenizer train|encode
    embed.py      embed              sentence embeddings and similarities
    bench.py      bench              flags of the benchmark suite (`nanochat_lite.bench`)
    docs.py       docs add|list|rm|search   a running server's documents (HTTP: docs_client.py)
    common.py     CLIError, say, the model flags, resolve_model, load_engine

Every command module has `add_parser(subparsers)` and `run(args, config) -> int` and
imports only the standard library at the top, so building the parser costs nothing:
the engine, the web stack, tiktoken and numpy are imported by `run`. Only the module
of the command named on the command line is imported (all of them for --help).
"""

from __future__ import annotations

# Command name -> module in this package that registers and runs it.
COMMANDS: dict[str, str] = {
    "serve": "serve",
    "chat": "chat",
    "pull": "models",
    "models": "models",
    "tokenizer": "tokenizer",
    "embed": "embed",
    "bench": "bench",
    "docs": "docs",
}
