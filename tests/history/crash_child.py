"""Crash-test child: append messages to a conversation store until killed.

    python tests/history/crash_child.py DB_PATH_OR_URL [--seed N] [--threads N] [--max-seconds S]

Prints one acknowledgement per line after each add_message returns, i.e. after the
write committed: a JSON object `{"conversation_id": ..., "message_id": ..., "content": ...}`,
ASCII only (non-ASCII content is escaped), written and flushed whole under a lock. The
parent SIGKILLs this process and checks that every acknowledged message is stored.

The kill can land in the middle of a line (a line longer than the pipe's atomic write
splits into several writes), so the reader, `acks()`, takes whole lines only: the piece
after the last newline is dropped, and a whole line that is not an acknowledgement is an
error, never a guess. Several threads write at once, as the server's workers do; each
starts a fresh conversation every so often.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
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
        line = json.dumps({"conversation_id": conversation_id, "message_id": message.id, "content": content})
        with out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        i += 1


def acks(output: bytes) -> dict[int, tuple[str, str]]:
    """message id -> (conversation id, content) of every whole acknowledgement line.

    acks(b'{"conversation_id": "c", "message_id": 1, "content": "caf\\u00e9"}\n{"conv')
      -> {1: ("c", "café")}      (the torn last line is dropped)
    """
    *whole, _torn = output.split(b"\n")
    out: dict[int, tuple[str, str]] = {}
    for n, line in enumerate(whole):
        try:
            ack = json.loads(line)
            out[int(ack["message_id"])] = (str(ack["conversation_id"]), str(ack["content"]))
        except (ValueError, KeyError, TypeError) as e:
            raise AssertionError(f"line {n + 1} of the child's output is not an acknowledgement ({e}): "
                                 f"{line[:200]!r}") from None
    return out


def kill_child(path: str, seed: int, log: Path, *, after: int = 0, pause: float = 0.0) -> dict[int, tuple[str, str]]:
    """Run this file as a child writing to `path`, read `after` whole acknowledgements
    (0: none), wait `pause` seconds (where the kill lands; nothing waits on it), SIGKILL
    it and return every acknowledgement it printed (see acks()). The child's stderr goes
    to `log`, quoted when it did not die of the kill.

    Its stdout is read through one reader only: a readline() on the pipe buffers ahead,
    and a second reader of the raw pipe (Popen.communicate) would start mid-line."""
    with open(log, "wb") as err:
        # --max-seconds: an orphan (we died before the kill) stops by itself; never reached here.
        proc = subprocess.Popen([sys.executable, __file__, path, "--seed", str(seed), "--max-seconds", "300"],
                                stdout=subprocess.PIPE, stderr=err, cwd=log.parent)
        assert proc.stdout is not None
        try:
            first = b"".join(proc.stdout.readline() for _ in range(after))  # b"" lines: it died early
            if pause:
                time.sleep(pause)
            proc.send_signal(signal.SIGKILL)  # a no-op when it already exited (then the assert says why)
            proc.wait(timeout=60)
            output = first + proc.stdout.read()  # to EOF: the child is gone
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, f"child exited with {proc.returncode}:\n{log.read_text(errors='replace')}"
    return acks(output)


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
