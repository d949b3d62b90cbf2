"""A real PostgreSQL goes away under a running `nanochat-lite serve --db postgresql://...`
and comes back (history/postgres.py: StorageUnavailable, reconnect).

While it is down, every door that needs the store answers 503 `storage_unavailable` with
Retry-After (a WebSocket: an error frame with that code), at once: no other 5xx, no hang.
An answer streaming when it went away ends with that error instead of a `done` (its text
could not be stored, so it is not acknowledged). Once it is back, the very next request
is served, and everything acknowledged before (user messages with a `start`, answers with
a `done` or a 200) is there, word for word.

The cluster is the session's `pg_cluster` (tests/pgcluster.py); it is stopped and started
with its own `pg_ctl` (`restart` reuses the options it was started with), and started
again whatever happens here, for the tests after this one."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from pgcluster import PgCluster
from serverproc import ServerProc

REFUSE_S = 30  # a refusal must come well within this: a hang fails the test
GENERATE_S = 600  # an answer, on a loaded 2-core machine
GREEDY = {"temperature": 0, "repeat_penalty": 1.0}
COUNTING = "Write the numbers from 1 to 500, separated by commas."  # greedy: a long answer


def pg_ctl(cluster: PgCluster, *args: str) -> None:
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # as pgcluster.py runs it
    r = subprocess.run([*as_postgres, str(cluster.bindir / "pg_ctl"), "-D", str(cluster.data), *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"pg_ctl {' '.join(args)}: {r.stdout}{r.stderr}"


def stop_postgres(cluster: PgCluster) -> None:
    pg_ctl(cluster, "-m", "fast", "-w", "stop")


def start_postgres(cluster: PgCluster) -> None:
    pg_ctl(cluster, "-l", str(cluster.log), "-w", "-t", "60", "restart")


@pytest.fixture
def server(tmp_path, pg_cluster: PgCluster, chat_model_path) -> Iterator[tuple[ServerProc, PgCluster]]:
    db = pg_cluster.create_database()
    s = ServerProc(tmp_path, "--threads", "2", db=db).start()  # type: ignore[arg-type]
    try:
        yield s, pg_cluster
    finally:
        s.stop()
        if subprocess.run([*(["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []),
                           str(pg_cluster.bindir / "pg_ctl"), "-D", str(pg_cluster.data), "status"],
                          capture_output=True).returncode != 0:
            start_postgres(pg_cluster)  # a failed test must not leave the session's cluster down
        pg_cluster.drop_database(db)


def refused(r: httpx.Response, what: str) -> None:
    assert r.status_code == 503, f"{what}: {r.status_code} {r.text[:300]}"
    assert r.json()["error"]["code"] == "storage_unavailable", f"{what}: {r.text[:300]}"
    assert int(r.headers["retry-after"]) >= 1, f"{what}: {r.headers}"


def ws_frames_until_final(ws: Any) -> list[dict[str, Any]]:
    frames = []
    while not frames or frames[-1]["type"] not in ("done", "error"):
        frames.append(json.loads(ws.recv(timeout=120)))
    return frames


def test_postgres_going_away_is_503_then_recovered_with_nothing_lost(server) -> None:
    s, cluster = server
    http = httpx.Client(base_url=s.url, timeout=GENERATE_S)
    quick = httpx.Client(base_url=s.url, timeout=REFUSE_S)  # while the database is down
    acknowledged: list[tuple[str, str, str]] = []  # (conversation id, role, content) a client was told of

    def chat(message: str, client: httpx.Client = http, **extra: Any) -> httpx.Response:
        return client.post("/api/chat", json={"message": message, "max_tokens": 8, **GREEDY, **extra})

    # Before: two turns of one conversation, acknowledged with a 200.
    first = chat("Say hello.").json()["data"]
    cid = first["conversation_id"]
    second = chat("Say goodbye.", conversation_id=cid).json()["data"]
    for message, data in (("Say hello.", first), ("Say goodbye.", second)):
        acknowledged += [(cid, "user", message), (cid, "assistant", data["message"])]

    # An answer streaming over the WebSocket when the database goes away. (The fixture
    # starts the database again should anything below fail.)
    with connect(s.ws_url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "chat", "message": COUNTING, "max_tokens": 400, **GREEDY}))
        streaming: list[dict[str, Any]] = []
        while sum(f["type"] == "token" for f in streaming) < 2:  # generating: it has tokens
            streaming.append(json.loads(ws.recv(timeout=GENERATE_S)))
        assert streaming[0]["type"] == "start" and streaming[-1]["type"] == "token", streaming
        acknowledged.append((streaming[0]["conversation_id"], "user", COUNTING))
        stop_postgres(cluster)
        # It ends (stopped) while the database is down: it cannot be stored, so the
        # client hears storage_unavailable, not a done.
        ws.send(json.dumps({"type": "stop"}))
        final = ws_frames_until_final(ws)[-1]
        assert (final["type"], final.get("code")) == ("error", "storage_unavailable"), final

    # Every door that needs the store, twice each (the second after a failed reconnect).
    for attempt in range(2):
        t0 = time.monotonic()
        refused(chat("Are you there?", quick), "POST /api/chat")
        with quick.stream("POST", "/api/chat", json={"message": "Are you there?", "stream": True}) as r:
            r.read()
            refused(r, "POST /api/chat stream")
        refused(chat("Go on.", quick, conversation_id=cid), "POST /api/chat in a conversation")
        refused(quick.get("/api/conversations"), "GET /api/conversations")
        refused(quick.get(f"/api/conversations/{cid}"), "GET /api/conversations/{cid}")
        refused(quick.get("/api/search", params={"q": "hello"}), "GET /api/search")
        refused(quick.get(f"/api/conversations/{cid}/export"), "GET export")
        with connect(s.ws_url, open_timeout=10) as ws:
            ws.send(json.dumps({"type": "chat", "message": "Are you there?", "max_tokens": 4}))
            frame = json.loads(ws.recv(timeout=REFUSE_S))
            assert (frame["type"], frame.get("code")) == ("error", "storage_unavailable"), frame
        # What does not need the store still works; nothing answers with another 5xx.
        for path in ("/api/health", "/api/stats", "/api/limits"):
            r = quick.get(path)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
        print(f"\ndatabase down, round {attempt + 1}: 8 store doors refused with 503 storage_unavailable "
              f"in {time.monotonic() - t0:.2f} s")
    start_postgres(cluster)

    # Back: the very next request is served, without a retry.
    after = chat("Are you back?")
    assert after.status_code == 200, after.text
    data = after.json()["data"]
    acknowledged += [(data["conversation_id"], "user", "Are you back?"),
                     (data["conversation_id"], "assistant", data["message"])]
    third = chat("One more time.", conversation_id=cid)
    assert third.status_code == 200, third.text
    acknowledged += [(cid, "user", "One more time."), (cid, "assistant", third.json()["data"]["message"])]

    def messages(conversation_id: str) -> list[dict[str, Any]]:
        r = http.get(f"/api/conversations/{conversation_id}")
        assert r.status_code == 200, r.text
        return r.json()["data"]["messages"]

    lost = [(c, role, text) for c, role, text in acknowledged
            if not any(m["role"] == role and m["content"] == text and (role == "user" or m["status"] in ("complete", "length"))
                       for m in messages(c))]
    assert lost == [], f"acknowledged but lost: {lost}"
    # The conversation kept its order across the outage.
    assert [m["content"] for m in messages(cid) if m["role"] == "user"] == ["Say hello.", "Say goodbye.",
                                                                            "One more time."]
    print(f"after the restart: served at once; {len(acknowledged)} acknowledged messages, none lost")
    http.close()
    quick.close()
