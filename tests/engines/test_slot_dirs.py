"""The engine's slot-save folders: a killed server leaves its own behind; the next engine
sweeps those whose process is gone (once idle), and never a live process's or one it cannot
tell the owner of."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nanochat_lite.engines.local import SLOT_DIR_PREFIX, sweep_slot_dirs


def test_only_the_folders_of_dead_processes_go(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process now
    gone = tmp_path / f"{SLOT_DIR_PREFIX}{dead.pid}-ab12cd34"
    mine = tmp_path / f"{SLOT_DIR_PREFIX}{os.getpid()}-ef56gh78"
    older = tmp_path / f"{SLOT_DIR_PREFIX}zodcxax0"  # before the pid was in the name: owner unknown
    other = tmp_path / "something-else-1-x"
    for folder in (gone, mine, older, other):
        folder.mkdir()
        (folder / "slot0.bin").write_bytes(b"\0" * 16)
    assert sweep_slot_dirs(str(tmp_path)) == 1
    assert not gone.exists() and mine.exists() and older.exists() and other.exists()
    assert sweep_slot_dirs(str(tmp_path)) == 0
