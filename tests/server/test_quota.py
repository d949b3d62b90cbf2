"""Daily token quotas that hold (issue #20 item 3), against real `nanochat-lite serve`
processes: with a 300-token daily quota, 8 concurrent streams (the project's SSE, the
WebSocket, and OpenAI's with `n` up to 4) leave the day's count at most 300; each refused
request got 429 `quota_exceeded` (with Retry-After) before anything was stored; the count
survives a restart; and two servers on one PostgreSQL share it.

Run with -s to see the figures."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from nanochat_lite.history import open_store
from serverproc import ServerProc

pytestmark = pytest.mark.model

QUOTA = 300
KA, KO = "alice-" + "d4" * 16, "ops-" + "e5" * 16
KEY_ARGS = ("--api-key", f"alice:{KA}:{QUOTA}", "--api-key", f"ops:{KO}:admin")
COUNT = "Count from 1 to 200, separated by commas."
SAMPLING = {"temperature": 0, "repeat_penalty": 1.0, "max_tokens": 30}  # no early stop: each uses its share
# Eight streams through every door: (door, n).
STREAMS = [("v1", 4), ("api", 1), ("v1", 3), ("ws", 1), ("v1", 2), ("api", 1), ("v1", 4), ("ws", 1)]


def stream(url: str, ws_url: str, door: str, n: int) -> dict[str, Any]:
    """One streamed request of alice's: {"door", "n", "status", "code", "tokens" (the usage it was told),
    "finish" (finish reasons), "retry_after"}."""
    out: dict[str, Any] = {"door": door, "n": n, "status": 200, "code": None, "tokens": 0, "finish": []}
    head = {"Authorization": f"Bearer {KA}"}
    if door == "ws":
        with connect(ws_url, additional_headers=head, open_timeout=30) as ws:
            ws.send(json.dumps({"type": "chat", "message": COUNT, **SAMPLING}))
            while True:
                f = json.loads(ws.recv(timeout=300))
                if f["type"] == "error":
                    return {**out, "status": 429 if f["code"] == "quota_exceeded" else 500, "code": f["code"]}
                if f["type"] == "done":
                    return {**out, "tokens": f["usage"]["totalTokens"], "finish": [f["finish_reason"]]}
    if door == "api":
        path, body = "/api/chat", {"message": COUNT, "stream": True, **SAMPLING}
    else:
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": COUNT}], "n": n, "stream": True,
                                              "stream_options": {"include_usage": True}, **SAMPLING}
    with httpx.stream("POST", url + path, json=body, headers=head, timeout=300) as r:
        if r.status_code != 200:
            r.read()
            return {**out, "status": r.status_code, "code": r.json()["error"]["code"],
                    "retry_after": r.headers.get("retry-after")}
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if door == "api" and data["type"] == "done":
                out["tokens"], out["finish"] = data["usage"]["totalTokens"], [data["finish_reason"]]
            elif door == "v1":
                out["finish"] += [c["finish_reason"] for c in data["choices"] if c.get("finish_reason")]
                if data.get("usage") and not data["choices"]:
                    out["tokens"] = data["usage"]["total_tokens"]
    return out


def day_count(server: ServerProc) -> dict[str, int]:
    """alice's row of /api/stats, read by the admin key once no reservation is left open."""
    deadline = time.monotonic() + 30
    while True:
        row = httpx.get(server.url + "/api/stats", headers={"X-Api-Key": KO}, timeout=10).json()["keys"]["alice"]
        if row["tokens_reserved"] == 0 or time.monotonic() > deadline:
            return row  # type: ignore[no-any-return]
        time.sleep(0.1)


def conversations(server: ServerProc) -> int:
    r = httpx.get(server.url + "/api/conversations", headers={"X-Api-Key": KA}, timeout=10)
    return r.json()["data"]["total"]  # type: ignore[no-any-return]


def server_of(i: int, servers: list[ServerProc]) -> ServerProc:
    """Stream i's server: pairs of streams alternate, so each server gets every kind of door."""
    return servers[(i // 2) % len(servers)]


def burst(servers: list[ServerProc]) -> list[dict[str, Any]]:
    """The 8 streams at once, spread over the servers."""
    with ThreadPoolExecutor(len(STREAMS)) as pool:
        futures = [pool.submit(stream, server_of(i, servers).url, server_of(i, servers).ws_url, door, n)
                   for i, (door, n) in enumerate(STREAMS)]
        return [f.result() for f in futures]


def check_burst(results: list[dict[str, Any]], label: str) -> int:
    served = [r for r in results if r["status"] == 200]
    refused = [r for r in results if r["status"] != 200]
    print(f"\n{label}: 8 concurrent streams against a {QUOTA}-token daily quota")
    for r in results:
        print(f"  {r['door']:4} n={r['n']}  {r['status']} {r['code'] or ''} tokens={r['tokens']} "
              f"finish={r['finish']}" + (f" retry-after={r['retry_after']}" if r.get("retry_after") else ""))
    assert served, results
    for r in refused:
        assert (r["status"], r["code"]) == (429, "quota_exceeded"), r
        if r["door"] != "ws":
            assert 0 < int(r["retry_after"]) <= 86400, r  # seconds to midnight UTC
    for r in served:
        assert len(r["finish"]) == r["n"] and set(r["finish"]) <= {"length", "stop"}, r
    told = sum(r["tokens"] for r in served)
    print(f"  served {len(served)}, refused {len(refused)} (429 quota_exceeded); usage told to clients: {told}")
    return told


def test_quota_holds_under_concurrency_and_survives_a_restart(tmp_path: Path, chat_model_path: Path) -> None:
    db = tmp_path / "quota.sqlite3"
    with ServerProc(tmp_path, "--threads", "2", *KEY_ARGS, db=db) as s:
        results = burst([s])
        told = check_burst(results, "SQLite")
        row = day_count(s)
        stored = conversations(s)
    with open_store(db) as store:
        (usage,) = store.usage(owner="alice")
        # An answer cut by the quota or max_tokens is stored as `length`, as its client was told.
        told_status = sorted({"stop": "complete", "length": "length"}[r["finish"][0]]
                             for r in results if r["status"] == 200 and r["door"] != "v1")
        kept_status = sorted(m.status for c in store.list(owner="alice", limit=100)[0]
                             for m in store.messages(c.id, owner="alice") if m.role == "assistant")
        print(f"  stored answers: {kept_status}")
        assert kept_status == told_status and "length" in kept_status
    print(f"  the day's count: {row['tokens_today']} of {QUOTA} (store: {usage.counted}, "
          f"{usage.requests} requests settled, {usage.reserved_tokens} still reserved)")
    assert row["tokens_today"] == usage.counted == told <= QUOTA
    assert usage.reserved_tokens == 0 and usage.requests == sum(r["status"] == 200 for r in results)
    # Every refused /api/chat and WebSocket turn stored nothing: one conversation per served one.
    assert stored == sum(r["status"] == 200 and r["door"] != "v1" for r in results)

    with ServerProc(tmp_path, "--threads", "2", *KEY_ARGS, db=db) as s:  # a restart keeps the count
        again = day_count(s)
        print(f"  after a restart: {again['tokens_today']} of {QUOTA}")
        assert again["tokens_today"] == row["tokens_today"]
        more = [stream(s.url, s.ws_url, "v1", 4) for _ in range(2)]
        after = day_count(s)
        print(f"  2 more requests after the restart: {[(m['status'], m['code'], m['tokens']) for m in more]}; "
              f"the day's count {after['tokens_today']} of {QUOTA}")
        assert after["tokens_today"] <= QUOTA
        assert any(m["status"] == 429 for m in more)  # the day's quota runs out and stays out


def test_two_servers_on_one_postgres_share_the_quota(tmp_path: Path, chat_model_path: Path, pg_url: str) -> None:
    with ServerProc(tmp_path, "--threads", "1", *KEY_ARGS, db=pg_url) as a, \
            ServerProc(tmp_path, "--threads", "1", *KEY_ARGS, db=pg_url) as b:  # type: ignore[arg-type]
        results = burst([a, b])
        told = check_burst(results, "two servers on one PostgreSQL")
        rows = day_count(a), day_count(b)
        print(f"  the day's count: server A says {rows[0]['tokens_today']}, server B says {rows[1]['tokens_today']} "
              f"(of {QUOTA}; each server alone would have allowed {QUOTA})")
        assert rows[0]["tokens_today"] == rows[1]["tokens_today"] == told <= QUOTA
        for name, srv in (("A", a), ("B", b)):
            mine = [r for i, r in enumerate(results) if server_of(i, [a, b]) is srv]
            print(f"  server {name}: served {sum(r['status'] == 200 for r in mine)} of {len(mine)}, "
                  f"{sum(r['tokens'] for r in mine)} tokens")
        # Once spent on A, it is spent on B.
        late = stream(b.url, b.ws_url, "api", 1), stream(a.url, a.ws_url, "v1", 2)
        print(f"  later requests: {[(r['status'], r['code'], r['tokens']) for r in late]}")
        final = day_count(a)["tokens_today"]
        assert final <= QUOTA and day_count(b)["tokens_today"] == final
