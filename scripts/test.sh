#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite against the real models.
# Installs what a fresh machine lacks (Chromium for the browser tests, via apt).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
if [ -d tests/browser ] && ! command -v chromium >/dev/null 2>&1; then
    echo "Installing Chromium for the browser tests ..." >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
# Pull the real models once (verified by sha256); the tests use them.
.venv/bin/nanochat-lite pull smollm2-135m-instruct all-minilm-l6-v2 >/dev/null
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: treating that as a failure" >&2
    exit 1
fi
exit "$rc"
