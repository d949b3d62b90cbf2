#!/usr/bin/env python3
"""The house's size rules, checked (scripts/test.sh runs it): no module of the package over
600 lines, no function over 80 lines unless its docstring says why (it mentions "80 lines").
Prints each breach with its place and exits 1; prints one line and exits 0 when all is well.

    python scripts/check_sizes.py [PACKAGE_DIR]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def breaches(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES:
            out.append(f"{path}: {n} lines (a module holds at most {MAX_MODULE_LINES}: split it by concept)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                why = ast.get_docstring(node) or ""
                if length > MAX_FUNCTION_LINES and f"{MAX_FUNCTION_LINES} lines" not in why:
                    out.append(f"{path}:{node.lineno}: {node.name} has {length} lines (at most "
                               f"{MAX_FUNCTION_LINES}, or its docstring says why)")
    return out


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "nanochat_lite")
    found = breaches(root)
    for line in found:
        print(line, file=sys.stderr)
    if found:
        return 1
    print(f"sizes: every module of {root.name} within {MAX_MODULE_LINES} lines, every function within "
          f"{MAX_FUNCTION_LINES} (or saying why)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
