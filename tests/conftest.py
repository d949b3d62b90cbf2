"""Shared fixtures. Real models come through the model store into one cache for the
whole run (NANOCHAT_LITE_HOME, else the user's cache folder), pulled once.
``llama_ref`` is llama.cpp's own tokenizer on the chat model (tests/llama_ref.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

import optout
from llama_ref import LlamaRef
from pgcluster import pg_cluster, pg_url  # noqa: F401  (fixtures: a throwaway PostgreSQL)
from nanochat_lite import models
from nanochat_lite.config import default_home


@pytest.fixture(scope="session")
def model_home() -> Path:
    return default_home(os.environ)


@pytest.fixture(scope="session")
def chat_model_path(model_home: Path) -> Path:
    return models.ensure(model_home, models.DEFAULT_CHAT, progress=print)


@pytest.fixture(scope="session")
def embedding_model_dir(model_home: Path) -> Path:
    return models.ensure(model_home, models.DEFAULT_EMBEDDING, progress=print)


@pytest.fixture(scope="session")
def llama_ref(chat_model_path: Path) -> Iterator[LlamaRef]:
    """One in-process llama-server (xllamacpp) on the chat model, for the whole run."""
    with LlamaRef(chat_model_path) as ref:
        yield ref


# -- required components and their opt-out (tests/optout.py) ---------------------------------
@pytest.fixture
def openai_client() -> Iterator[object]:
    """openai_client(**kwargs) -> openai.OpenAI, closed when the test ends: a client left to
    the garbage collector leaks its pooled socket into whichever later test collects it (a
    ResourceWarning, an error under filterwarnings = error)."""
    import openai

    made: list[openai.OpenAI] = []

    def make(**kwargs: object) -> openai.OpenAI:
        client = openai.OpenAI(**kwargs)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def pytest_configure(config: pytest.Config) -> None:
    try:
        optout.opted_out()
    except ValueError as e:  # a misspelt name would otherwise opt out of nothing, silently
        raise pytest.UsageError(str(e)) from None


def pytest_report_header(config: pytest.Config) -> str | None:
    names = optout.opted_out()
    return f"opted out ({optout.ENV}): {', '.join(sorted(names))}" if names else None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> Iterator[None]:
    """Name what the opt-out skipped, right above the final count, where the eye lands.
    (The outermost wrapper: its part after `yield` runs after pytest's short summary.)"""
    result = yield
    names = optout.opted_out()
    if not names:
        return result
    counts = dict.fromkeys(sorted(names), 0)
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        if reason.startswith(optout.REASON_PREFIX):
            name = reason[len(optout.REASON_PREFIX):].split(" ", 1)[0]
            counts[name] = counts.get(name, 0) + 1
    for name, n in counts.items():
        terminalreporter.write_line(f"SKIPPED BY OPT-OUT: {name} ({optout.ENV}): {n} tests not run "
                                    f"({optout.COMPONENTS[name]})", yellow=True, bold=True)
    return result


# -- the issues' acceptance counts -----------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--acceptance", action="store_true", default=False,
                     help="run the issues' acceptance counts instead of the small defaults (100 "
                          "structured-output samples, 50 resume rounds, 20 replica kills; long)")


@pytest.fixture(scope="session")
def acceptance(pytestconfig: pytest.Config) -> bool:
    """True under --acceptance: a test that takes a count uses the issue's figure."""
    return bool(pytestconfig.getoption("acceptance"))
