"""The suite's required components, and the one way to run without them.

PostgreSQL, Chromium (driven by the `playwright` package) and nginx are required: when
one is missing or does not start, the tests that need it fail, for CI and for a user
alike, with what is missing and the fix. A skip happens only when the run opts out
by name:

    NANOCHAT_TEST_SKIP=postgres,browser,nginx ./scripts/test.sh

and then the end of the run says what was skipped (tests/conftest.py's
`pytest_terminal_summary`: "SKIPPED BY OPT-OUT: postgres (NANOCHAT_TEST_SKIP) ...").
scripts/test.sh reads the same variable for its own checks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NoReturn

import pytest

ENV = "NANOCHAT_TEST_SKIP"
# Component -> what it covers (for the messages).
COMPONENTS = {
    "postgres": "the PostgreSQL store, server and replica tests",
    "browser": "the browser tests, Chromium driven by playwright",
    "nginx": "the replica tests behind nginx",
}
# The reason of every opt-out skip starts with this, then the component's name.
REASON_PREFIX = "OPT-OUT "


def opted_out(env: Mapping[str, str] | None = None) -> frozenset[str]:
    """The components named in NANOCHAT_TEST_SKIP; ValueError for a name we do not know.

    {"NANOCHAT_TEST_SKIP": "postgres, nginx"} -> {"postgres", "nginx"}
    """
    raw = (os.environ if env is None else env).get(ENV, "")
    names = frozenset(n.strip().lower() for n in raw.split(",") if n.strip())
    unknown = sorted(names - COMPONENTS.keys())
    if unknown:
        raise ValueError(f"{ENV}={raw!r}: unknown component(s) {', '.join(unknown)}; "
                         f"known: {', '.join(COMPONENTS)}")
    return names


def skip_if_opted_out(component: str) -> None:
    """Skip at once when the run opted out of `component`, installed or not: the
    opt-out means "do not run these", and the summary counts them."""
    assert component in COMPONENTS, component
    if component in opted_out():
        pytest.skip(f"{REASON_PREFIX}{component} ({ENV})")


def missing(component: str, problem: str, fix: str) -> NoReturn:
    """A required component is missing or did not start: the test fails, naming the fix
    and the opt-out (call skip_if_opted_out first)."""
    covers = COMPONENTS[component]
    pytest.fail(f"{problem}. {covers[0].upper()}{covers[1:]} need it: {fix}; "
                f"or skip them on purpose with {ENV}={component}", pytrace=False)
