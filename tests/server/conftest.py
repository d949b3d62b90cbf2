"""Fixtures of the server's error-path tests: a fake engine, a Runtime on an in-memory
store, the app under Starlette's TestClient, and a WebSocket on it (`ws`).

The helpers these build on (assertions, request builders, `Frames`) are in
`server_helpers.py`. No model and no real socket: a few seconds for the whole folder.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from fakes import attach_fake, FakeEngine
from nanochat_lite.history import ConversationStore
from nanochat_lite.server import Runtime, create_app
from server_helpers import TEST_SECURITY, Frames


@pytest.fixture
def fake() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def runtime(fake: FakeEngine) -> Iterator[Runtime]:
    # resume_window_s=0: a client that goes away cancels its answer at once, as these
    # tests expect; the resume window has its own tests (tests/server/chat/test_answers.py).
    rt = Runtime(store=ConversationStore(":memory:"), model_name="fake", resume_window_s=0)
    attach_fake(rt, fake)
    yield rt
    rt.close()
    rt.store.close()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    # raise_server_exceptions=False: a server bug must show up as the 500 a real client
    # would get, so the assertions below can say which request caused it.
    with TestClient(create_app(runtime, security=TEST_SECURITY), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def ws(client: TestClient) -> Iterator[Frames]:
    with client.websocket_connect("/ws") as sock:
        yield Frames(sock)
