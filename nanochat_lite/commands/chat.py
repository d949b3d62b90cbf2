"""``nanochat-lite chat``: a conversation in the terminal, one slot, no server.

Commands typed at the prompt: /reset (new conversation), /exit or /quit (or Ctrl-D).
Ctrl-C stops the answer being written and keeps the conversation. Nothing is stored.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .common import add_model_flags, load_engine, resolve_model, say

if TYPE_CHECKING:
    from ..config import Config


def add_parser(sub: Any) -> None:
    """Register ``chat`` on the main CLI's subparsers."""
    c = sub.add_parser("chat", help="chat in the terminal")
    add_model_flags(c)
    c.add_argument("--system", help="a system prompt")


def run(args: argparse.Namespace, config: Config) -> int:
    system: str | None = args.system
    path, name = resolve_model(config)
    say(f"Loading {name} ...")
    config.parallel = 1  # one conversation: one slot
    engine = load_engine(path, name, config)
    from ..generation import EngineError, SamplingParams

    params = SamplingParams(seed=config.seed)
    history: list[dict[str, str]] = []
    say(f"Chatting with {name}. Commands: /reset (new conversation), /exit (or Ctrl-D).")
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
            say("(new conversation)")
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        reply: list[str] = []
        try:
            for ev in engine.generate(messages, params):
                if hasattr(ev, "finish_reason"):
                    say(f"[{ev.completion_tokens} tokens, {ev.decode_tokens_per_s:.0f} tok/s]")
                else:
                    reply.append(ev.text)
                    print(ev.text, end="", flush=True)
        except KeyboardInterrupt:
            print()
            say("[stopped]")
        except EngineError as e:
            history.pop()
            say(f"error: {e}")
            continue
        print()
        history.append({"role": "assistant", "content": "".join(reply)})
