"""The `nanochat-lite` command: builds the parser from `commands/` and dispatches.

Start-up is a feature: this module imports only the standard library at the top, and
only the module of the command that was named (every one for --help). llama.cpp,
Starlette and uvicorn are imported where they are used, and for `serve` the model loads
in a thread beside the web-stack imports while the socket is already bound (see
`commands/boot.py`). Configuration (flags over environment over defaults) is `config.py`'s.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from . import __version__
from .commands import COMMANDS
from .commands.common import CLIError, say
from .config import Config, ConfigError

__all__ = ["CLIError", "build_parser", "main"]


def _command_modules(argv: list[str] | None) -> list[ModuleType]:
    """The modules to register: the named command's, or all of them (--help, no or unknown command)."""
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    if words and words[0] in COMMANDS:
        names = [COMMANDS[words[0]]]
    else:
        names = list(dict.fromkeys(COMMANDS.values()))  # once each, in COMMANDS' order
    return [importlib.import_module(f"{__package__}.commands.{name}") for name in names]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanochat-lite", description="A chat server for small language models on a CPU.")
    parser.add_argument("--version", action="version", version=f"nanochat-lite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules(argv):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command not in COMMANDS:
        parser.print_help()
        return 2
    try:
        config = Config.load(vars(args))
        module = importlib.import_module(f"{__package__}.commands.{COMMANDS[args.command]}")
        status: int = module.run(args, config)
        return status
    except (CLIError, ConfigError) as e:
        say(f"nanochat-lite: {e}")
        return 2
    except KeyboardInterrupt:
        return 130
