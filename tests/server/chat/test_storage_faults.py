"""A database that cannot answer (locked past the busy timeout, full, unreachable) is a
503 `storage_unavailable` on every route that reads or writes it, in the route's own
error shape, with Retry-After — never a 500. (The chat doors and a real locked SQLite
file are tested in tests/server/test_resume_server.py.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from nanochat_lite.history import StorageUnavailable
from nanochat_lite.server import Runtime
from server_helpers import assert_api_error

ROUTES = [
    ("GET", "/api/conversations", None),
    ("GET", "/api/conversations/abc", None),
    ("PATCH", "/api/conversations/abc", {"title": "x"}),
    ("DELETE", "/api/conversations/abc", None),
    ("GET", "/api/conversations/abc/export", None),
    ("GET", "/api/search?q=volcano", None),
]


@pytest.fixture
def locked(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every store method raises StorageUnavailable; yields the names that were called."""
    called: list[str] = []

    def fail(name: str):  # type: ignore[no-untyped-def]
        def method(*args: object, **kwargs: object) -> None:
            called.append(name)
            raise StorageUnavailable("the database /srv/data/conversations.sqlite3 is locked")
        return method

    for name in ("list", "get", "messages", "rename", "delete", "search", "export", "set_title"):
        if hasattr(runtime.store, name):
            monkeypatch.setattr(runtime.store, name, fail(name))
    yield called


@pytest.mark.parametrize("method,path,body", ROUTES)
def test_a_locked_store_is_a_503_not_a_500(client: TestClient, locked: list[str], method: str, path: str,
                                            body: dict[str, str] | None) -> None:
    r = client.request(method, path, json=body)
    assert_api_error(r, 503, "storage_unavailable")
    assert int(r.headers["retry-after"]) >= 1
    assert "/srv/data" not in r.text  # the message names no path
    assert locked  # the store was reached (the 503 is not from somewhere else)
