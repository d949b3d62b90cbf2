#!/usr/bin/env python3
"""Patch an unpacked xllamacpp source tree so that `Server()` loads the model without the GIL.

    python scripts/xllamacpp_nogil.py SOURCE_DIR     # used by scripts/build-native.sh

Why: xllamacpp's `Server.__cinit__` calls the C++ constructor, which starts llama.cpp's loader
thread and blocks on its result, while holding the GIL. Every other Python thread stops for the
whole load (~0.3-0.5 s here), so `serve` cannot import its web stack beside the model load as it
tries to (docs/architecture.md, the cold-start case study). Releasing the GIL around that one
call is safe: the constructor takes a copy of the parameters, touches no Python object, and its
C++ exceptions still become Python exceptions (`except +` is honoured inside `with nogil`
since Cython 3).

The patch is a text substitution of one exact line; when the line is not there (a newer
xllamacpp), it stops with a message instead of building an unpatched engine silently.
Not handled: other calls that hold the GIL (none on serve's path to the first token).
"""

from __future__ import annotations

import sys
from pathlib import Path

PYX = Path("src/xllamacpp/xllamacpp.pyx")
BEFORE = "        self.svr = make_shared[CServer](common_params.p)\n"
AFTER = ("        # nanochat-lite (scripts/xllamacpp_nogil.py): load without the GIL so other\n"
         "        # Python threads run beside the model load.\n"
         "        cdef shared_ptr[CServer] svr\n"
         "        with nogil:\n"
         "            svr = make_shared[CServer](common_params.p)\n"
         "        self.svr = svr\n")
# Read by nanochat_lite.engines.build_info: the loaded build says it has the patch.
MARKER = "\n\n# nanochat-lite: Server() loads without the GIL (scripts/xllamacpp_nogil.py)\nNOGIL_LOAD = True\n"


def patch(source: Path) -> str:
    """Apply the patch in place; returns what was done ("patched" or "already patched")."""
    pyx = source / PYX
    try:
        text = pyx.read_text(encoding="utf-8")
    except OSError as e:
        raise SystemExit(f"xllamacpp_nogil.py: cannot read {pyx}: {e}; pass the unpacked xllamacpp source folder")
    if AFTER in text:
        return "already patched"
    if text.count(BEFORE) != 1:
        raise SystemExit(f"xllamacpp_nogil.py: {pyx} does not hold the expected `Server.__cinit__` line "
                         f"{BEFORE.strip()!r} exactly once; this xllamacpp changed, update the patch")
    tmp = pyx.with_name(pyx.name + ".tmp")
    tmp.write_text(text.replace(BEFORE, AFTER) + MARKER, encoding="utf-8")
    tmp.replace(pyx)
    return "patched"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: xllamacpp_nogil.py SOURCE_DIR", file=sys.stderr)
        return 2
    print(f"xllamacpp: Server() loads without the GIL ({patch(Path(argv[0]))})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
