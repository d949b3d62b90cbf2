#!/usr/bin/env bash
# Create .venv (once) and install nanochat-lite into it, editable, with the extras
# named as arguments (e.g. `test`). Idempotent: a second run installs nothing new.
# The first run compiles llama-cpp-python from source (about 9 minutes on 2 cores);
# pip caches the wheel, so later set-ups take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "nanochat-lite needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    echo "Creating .venv ..." >&2
    "$PY" -m venv .venv
fi
extras=""
if [ "$#" -gt 0 ]; then extras="[$(IFS=,; echo "$*")]"; fi
echo "Installing nanochat-lite${extras} into .venv (the first time compiles llama.cpp: ~9 min) ..." >&2
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}"
