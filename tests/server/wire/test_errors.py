"""The error vocabulary's one rule about time (issue #20 item 5): every 503 says when to
come back, in a Retry-After header, on both API shapes; each kind of refusal has its one
number (wire/errors.py), and an engine's 503 (a queue timeout) gets the busy one."""

from __future__ import annotations

import pytest

from nanochat_lite.engines.scheduler import QueueTimeout
from nanochat_lite.server.chat.answers import storage_unavailable
from nanochat_lite.server.chat.turns import shutting_down
from nanochat_lite.server.wire.errors import (RETRY_BUSY_S, RETRY_SHUTDOWN_S, RETRY_STORAGE_S, RequestError,
                                              api_error, openai_error)


def _from_engine(e: Exception) -> RequestError:
    # how turns.py and answers.py turn an engine's error into a request error
    return RequestError(str(e), code=getattr(e, "code", "engine_error"), status=getattr(e, "status", 400))


@pytest.mark.parametrize("error, seconds", [
    (shutting_down(), RETRY_SHUTDOWN_S),
    (storage_unavailable(OSError("disk full")), RETRY_STORAGE_S),
    (_from_engine(QueueTimeout("waited 30 s for a slot")), RETRY_BUSY_S),
    (RequestError("the embedding model is not available", code="unavailable", status=503), RETRY_BUSY_S),
])
def test_every_503_carries_retry_after_on_both_shapes(error: RequestError, seconds: int) -> None:
    assert error.status == 503 and error.retry_after == seconds
    for response in (api_error(error), openai_error(error)):
        assert response.headers["retry-after"] == str(seconds)


def test_other_statuses_say_nothing_unless_asked() -> None:
    assert RequestError("bad", status=400).retry_after is None
    assert "retry-after" not in api_error(RequestError("no", status=404)).headers
    assert RequestError("slow down", status=429, retry_after=7).retry_after == 7
