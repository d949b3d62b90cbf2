#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite against the real models.
# Installs what a fresh machine lacks (Chromium for the browser tests, PostgreSQL for the
# PostgreSQL store tests, nginx for the replica tests, via apt; the tests start their own
# throwaway PostgreSQL cluster and nginx), then checks that each is there before pytest
# starts: a missing one stops the run here with the fix, rather than failing its tests
# one by one later. Extra arguments go to pytest.
#
# Opting out (the only way to run without a component; the run's summary names it):
#   NANOCHAT_TEST_SKIP=postgres,browser,nginx ./scripts/test.sh
# PostgreSQL's binaries come from NANOCHAT_PG_BINDIR when set (and only from there), else
# the newest /usr/lib/postgresql/*/bin, else initdb on PATH; tests/pgcluster.py does the same.
set -euo pipefail
cd "$(dirname "$0")/.."

skip=",$(echo "${NANOCHAT_TEST_SKIP:-}" | tr -d ' ' | tr 'A-Z' 'a-z'),"
for name in $(echo "$skip" | tr ',' ' '); do
    case "$name" in
        postgres|browser|nginx) ;;
        *) echo "NANOCHAT_TEST_SKIP: unknown component '$name' (known: postgres, browser, nginx)" >&2; exit 2 ;;
    esac
done
wanted() { [[ "$skip" != *",$1,"* ]]; }

# The `postgres` extra (psycopg) as users install it, rather than hidden in `test`.
bash scripts/setup.sh test postgres

# -- where each component is (empty: not found) ----------------------------------------------
pg_bindir() {
    if [ -n "${NANOCHAT_PG_BINDIR:-}" ]; then
        echo "$NANOCHAT_PG_BINDIR"
        return
    fi
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n | tail -n1)
    if [ -n "$found" ] && [ -x "$found/initdb" ]; then echo "$found"; return; fi
    if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; fi
}
have_postgres() {
    local dir
    dir=$(pg_bindir)
    [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]
}
have_chromium() { [ -x /usr/bin/chromium ]; }  # tests/browser/conftest.py drives that one
have_nginx() { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }

# -- install what is missing, when we can ----------------------------------------------------
# Not root: sudo, asking for a password only when someone is at the terminal to type it.
if [ "$(id -u)" = 0 ]; then SUDO=""; elif [ -t 0 ]; then SUDO="sudo"; else SUDO="sudo -n"; fi
apt_updated=""
apt_install() {  # $1: package; returns non-zero (quietly) when it cannot be installed
    command -v apt-get >/dev/null 2>&1 || return 1
    if [ -n "$SUDO" ] && ! command -v sudo >/dev/null 2>&1; then return 1; fi
    if [ -z "$apt_updated" ]; then $SUDO apt-get update -qq >/dev/null 2>&1 || return 1; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$1" >/dev/null 2>&1
}
if wanted browser && ! have_chromium; then
    echo "Installing Chromium for the browser tests ..." >&2
    apt_install chromium || true
fi
# NANOCHAT_PG_BINDIR names the binaries to use: installing a package would not put them there.
if wanted postgres && [ -z "${NANOCHAT_PG_BINDIR:-}" ] && ! have_postgres; then
    echo "Installing PostgreSQL for the PostgreSQL store tests ..." >&2
    apt_install postgresql || true
fi
if wanted nginx && ! have_nginx; then
    echo "Installing nginx for the replica tests ..." >&2
    apt_install nginx || true
fi

# -- check: every component the run needs is here --------------------------------------------
missing=()
if wanted postgres; then
    if [ -n "${NANOCHAT_PG_BINDIR:-}" ] && ! have_postgres; then
        missing+=("PostgreSQL: NANOCHAT_PG_BINDIR=$NANOCHAT_PG_BINDIR lacks initdb, pg_ctl or postgres. Fix: point it at PostgreSQL's bin folder (e.g. /usr/lib/postgresql/16/bin), or unset it.")
    elif ! have_postgres; then
        missing+=("PostgreSQL: no initdb/pg_ctl/postgres in /usr/lib/postgresql/*/bin or on PATH, and it could not be installed here. Fix: sudo apt-get install postgresql (or set NANOCHAT_PG_BINDIR to its bin folder).")
    elif [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        missing+=("PostgreSQL: running as root, but there is no 'postgres' user to run the cluster as. Fix: sudo apt-get install postgresql (it creates the user), or run as a normal user.")
    fi
    if ! .venv/bin/python -c 'import psycopg' 2>/dev/null; then
        missing+=("PostgreSQL: the psycopg package is missing from .venv. Fix: .venv/bin/pip install -e '.[postgres]'.")
    fi
fi
if wanted browser; then
    if ! have_chromium; then
        missing+=("Chromium: /usr/bin/chromium is missing, and it could not be installed here. Fix: sudo apt-get install chromium.")
    fi
    if ! .venv/bin/python -c 'import playwright.sync_api' 2>/dev/null; then
        missing+=("Chromium: the playwright package is missing from .venv. Fix: .venv/bin/pip install -e '.[test]'.")
    fi
fi
if wanted nginx && ! have_nginx; then
    missing+=("nginx: not on PATH nor /usr/sbin/nginx, and it could not be installed here. Fix: sudo apt-get install nginx.")
fi
if [ "${#missing[@]}" -gt 0 ]; then
    {
        echo "scripts/test.sh: the test suite needs components this machine lacks:"
        for m in "${missing[@]}"; do echo "  - $m"; done
        echo "To run without one on purpose (its tests are skipped and the summary says so):"
        echo "  NANOCHAT_TEST_SKIP=postgres,browser,nginx ./scripts/test.sh   (name only the ones you lack)"
    } >&2
    exit 1
fi
echo "Components: postgres $(wanted postgres && pg_bindir || echo 'opted out'), chromium $(wanted browser && echo /usr/bin/chromium || echo 'opted out'), nginx $(wanted nginx && { command -v nginx || echo /usr/sbin/nginx; } || echo 'opted out')" >&2

# Pull the real models once (verified by sha256); the tests use them.
.venv/bin/nanochat-lite pull smollm2-135m-instruct all-minilm-l6-v2 gemma3-270m >/dev/null
# Types first (pyproject.toml's [tool.mypy]: --strict on the server, the engines and generation.py).
.venv/bin/python -m mypy
# The architecture's one-way doors (pyproject.toml's [tool.importlinter]: rooms, no circles).
.venv/bin/lint-imports --no-cache
# Modules within 600 lines, functions within 80 (or saying why).
.venv/bin/python scripts/check_sizes.py
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: treating that as a failure" >&2
    exit 1
fi
exit "$rc"
