#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite against the real models.
# Installs what a fresh machine lacks (Chromium for the browser tests, PostgreSQL for the
# PostgreSQL store tests, nginx for the replica tests, via apt; the tests start their own throwaway PostgreSQL cluster).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# The `postgres` extra (psycopg) as users install it, rather than hidden in `test`.
bash scripts/setup.sh test postgres
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
apt_updated=""
apt_install() {
    if [ -z "$apt_updated" ]; then $SUDO apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
if [ -d tests/browser ] && ! command -v chromium >/dev/null 2>&1; then
    echo "Installing Chromium for the browser tests ..." >&2
    apt_install chromium
fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    echo "Installing PostgreSQL for the PostgreSQL store tests ..." >&2
    apt_install postgresql
fi
# nginx for the replica tests (tests/server/test_replicas.py starts its own on a free port).
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    echo "Installing nginx for the replica tests ..." >&2
    apt_install nginx
fi
# Pull the real models once (verified by sha256); the tests use them.
.venv/bin/nanochat-lite pull smollm2-135m-instruct all-minilm-l6-v2 >/dev/null
# Types first (pyproject.toml's [tool.mypy]: --strict on the server, the scheduler and the engines).
.venv/bin/python -m mypy
# The architecture's one-way doors (pyproject.toml's [tool.importlinter]: rooms, no circles).
.venv/bin/lint-imports --no-cache
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: treating that as a failure" >&2
    exit 1
fi
exit "$rc"
