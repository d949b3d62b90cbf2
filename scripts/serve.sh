#!/usr/bin/env bash
# Set up (if needed) and serve the default model: the chat page and the APIs on
# http://127.0.0.1:8080. Extra arguments go to `nanochat-lite serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/nanochat-lite serve "$@"
