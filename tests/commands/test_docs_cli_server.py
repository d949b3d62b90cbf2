"""`nanochat-lite docs` against a real `nanochat-lite serve` (tests/serverproc.py), as a
user runs it: two small Markdown files added with their bars until ready, a search that
finds the right one first, the list, a refused file with the server's own reason, and
removal. The key travels in NANOCHAT_LITE_API_KEY, as `serve` reads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serverproc import ServerProc

pytestmark = pytest.mark.model

KEY = "docs-cli-" + "d4" * 16
LIGHTHOUSE = """# Keeping a lighthouse

The keeper winds the clockwork that turns the lens every four hours through the night,
and trims the wick of the lamp at dusk.

## In fog

When fog rolls in, the keeper sounds the foghorn twice every minute until the fog lifts,
and writes the hours of fog in the logbook.
"""
BREAD = """# Baking sourdough bread

Feed the starter the evening before. Mix flour, water and salt, fold the dough every half
hour for two hours, shape it, and let it rise overnight in the cold.

## Baking

Bake in a covered pot at a high heat for twenty minutes, then uncovered until the crust is dark.
"""


def docs(server: ServerProc, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT")}
    env["NANOCHAT_LITE_API_KEY"] = KEY
    p = subprocess.run([sys.executable, "-m", "nanochat_lite", "docs", *args, "--server", server.url],
                       capture_output=True, text=True, env=env, timeout=600)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def test_add_search_list_remove_against_the_real_server(tmp_path: Path, chat_model_path: Path,
                                                         embedding_model_dir: Path) -> None:
    lighthouse, bread, empty = tmp_path / "lighthouse.md", tmp_path / "bread.md", tmp_path / "empty.txt"
    lighthouse.write_text(LIGHTHOUSE)
    bread.write_text(BREAD)
    empty.write_bytes(b"")
    with ServerProc(tmp_path, "--api-key", f"alice:{KEY}") as server:
        p = docs(server, "add", str(lighthouse), str(bread), "--collection", "notes")
        assert p.returncode == 0, (p.stdout, p.stderr, server.log())
        added = [line.split("\t") for line in p.stdout.splitlines()]
        assert [name for _, name, _ in added] == ["lighthouse.md", "bread.md"], p.stdout
        ids = {name: doc_id for doc_id, name, _ in added}
        for _, name, chunks in added:
            n = int(chunks.removesuffix(" chunks"))
            assert n >= 1 and f"{n}/{n}" in p.stderr, (name, p.stderr)

        p = docs(server, "search", "how", "often", "is", "the", "foghorn", "sounded", "-k", "2")
        assert p.returncode == 0, p.stderr
        lines = p.stdout.splitlines()
        assert lines[0].startswith("1. lighthouse.md  ") and f"[document {ids['lighthouse.md']}]" in lines[0], lines
        assert "foghorn twice every minute" in lines[1], lines

        p = docs(server, "list", "--collection", "notes")
        assert p.returncode == 0, p.stderr
        rows = {line.split()[0]: line.split() for line in p.stdout.splitlines()[1:]}
        assert set(rows) == set(ids.values())
        assert all(row[3] == "ready" for row in rows.values()), p.stdout

        p = docs(server, "add", str(empty))
        assert p.returncode == 1, (p.stdout, p.stderr)
        assert "empty.txt: refused by the server (400" in p.stderr and p.stdout == ""

        p = docs(server, "rm", ids["lighthouse.md"])
        assert (p.returncode, p.stdout) == (0, f"removed {ids['lighthouse.md']}\n"), p.stderr
        p = docs(server, "rm", ids["lighthouse.md"])
        assert p.returncode == 1 and "(`nanochat-lite docs list` shows the ids)" in p.stderr
        p = docs(server, "list")
        assert [line.split()[0] for line in p.stdout.splitlines()[1:]] == [ids["bread.md"]]
        p = docs(server, "search", "foghorn", "-k", "2")
        assert "lighthouse.md" not in p.stdout, p.stdout
