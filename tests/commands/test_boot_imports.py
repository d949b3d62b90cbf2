"""Cold start depends on what `serve` imports before it starts loading the model: the
model loads in a thread *beside* the web stack's imports (commands/boot.py). Importing the
web stack first (it once came in through a one-line helper import, server/redact.py:
+0.4 s before the model load began) serializes them again. Checked by module names,
not by time: the machine's speed does not matter."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("starlette", "uvicorn", "msgspec", "nanochat_lite.server", "xllamacpp", "jinja2", "numpy", "httpx")


def test_serve_imports_nothing_heavy_before_it_starts_the_model_load() -> None:
    code = ("import json, sys\n"
            "import nanochat_lite.cli, nanochat_lite.commands.serve, nanochat_lite.commands.boot\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_the_web_stack_imports_no_numpy_and_no_document_parser() -> None:
    """The web stack is imported on the way to the first token (while the model loads, and
    xllamacpp's constructor holds the GIL, so the two take turns): numpy (~0.1-0.2 s here)
    comes with the document vectors when they open, and the PDF/DOCX parsers with the first
    upload that needs them, not with the routes."""
    code = ("import json, sys\n"
            "import nanochat_lite.server.app\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'pypdf', 'docx'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []
