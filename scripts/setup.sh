#!/usr/bin/env bash
# Create .venv (once) and install nanochat-lite into it, editable, with the extras
# named as arguments (e.g. `test`). Idempotent: a second run installs nothing new.
# Every dependency comes as a prebuilt wheel (llama.cpp through xllamacpp): nothing
# compiles, and a fresh set-up takes well under a minute.
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
echo "Installing nanochat-lite${extras} into .venv ..." >&2
.venv/bin/python -m pip install -q --disable-pip-version-check --only-binary=xllamacpp -e ".${extras}"
