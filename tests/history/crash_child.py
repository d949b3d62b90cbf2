"""Crash-test child: append messages to a conversation store until killed.

    python tests/history/crash_child.py DB_PATH_OR_URL [--seed N] [--threads N] [--max-seconds S]

Prints `ACK <conversation_id> <message_id> <content>` (one line, flushed) after each
add_message returns, i.e. after the write committed. The parent SIGKILLs this process
at a random moment and checks that every ACKed message is in the file. Content never
holds a newline, so each ACK is exactly one line. Several threads write at once, as the
server's workers do; each starts a fresh conversation every so often.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nanochat_lite.history import Store, open_store  # noqa: E402

_WORDS = ("alpha", "beta", "café", "naïve", "日本語", "🎉", "\"quoted\"", "NEAR(", "')--", "x" * 300)


def _writer(store: Store, rng: random.Random, deadline: float, out: threading.Lock) -> None:
    conversation_id = ""
    i = 0
    while time.monotonic() < deadline:
        if i % 25 == 0:
            conversation_id = store.create(system=rng.choice([None, "be brief"])).id
        role = "user" if i % 2 == 0 else "assistant"
        words = rng.choices(_WORDS, k=rng.randint(1, 40))
        content = f"{rng.getrandbits(64):016x} " + " ".join(words)
        message = store.add_message(
            conversation_id, role, content, status=rng.choice(["complete", "stopped"]),
            completion_tokens=len(words), params={"temperature": 0.7},
        )
        with out:
            sys.stdout.write(f"ACK {conversation_id} {message.id} {content}\n")
            sys.stdout.flush()
        i += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    # An orphan (the parent died before killing us) stops by itself.
    parser.add_argument("--max-seconds", type=float, default=30.0)
    args = parser.parse_args()
    sys.stdout.reconfigure(encoding="utf-8")  # type: ignore[attr-defined]
    store = open_store(args.path)  # a SQLite path or a postgresql:// URL
    deadline = time.monotonic() + args.max_seconds
    out = threading.Lock()
    threads = [
        threading.Thread(target=_writer, args=(store, random.Random(args.seed * 100 + k), deadline, out))
        for k in range(args.threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()


if __name__ == "__main__":
    main()
