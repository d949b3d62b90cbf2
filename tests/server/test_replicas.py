"""Replicas: two real `nanochat-lite serve` processes on one throwaway PostgreSQL, behind
a real nginx running the shipped site config (deploy/nginx/nanochat-lite.conf).

- 10 simultaneous chats through nginx all complete, served by both replicas;
- a conversation moves between replicas and keeps its history (the model repeats a
  name it was told through the other replica), and every replica lists and finds it;
- the WebSocket works through nginx (upgrade configured), stop included;
- SIGKILL of the replica serving a stream, KILLS times (3; under pytest --acceptance
  the issue's 20): no acknowledged message is lost, the stream on the other
  replica finishes, and nginx sends new chats to the survivor at once.

Needs nginx and PostgreSQL: missing, these tests fail under CI and skip otherwise.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from nginxproc import Nginx, nginx_binary
from pgcluster import PgCluster
from serverproc import ServerProc

# One inference thread each: two replicas share a 2-core machine.
REPLICA_ARGS = ("--threads", "1", "--parallel", "5")
KILLS, ACCEPTANCE_KILLS = 3, 20  # replica kills; the second under --acceptance (tests/conftest.py)


@dataclass
class Cluster:
    tmp: Path
    db: str
    replicas: list[ServerProc]
    nginx: Nginx

    def restart(self, i: int) -> None:
        old = self.replicas[i]
        old.stop()  # closes its log (it is dead already after a kill)
        self.replicas[i] = ServerProc(self.tmp, *REPLICA_ARGS, port=old.port, db=self.db).start()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, pg_cluster: PgCluster, chat_model_path) -> Iterator[Cluster]:
    nginx_binary()  # fail (CI) or skip before starting anything
    tmp = tmp_path_factory.mktemp("replicas")
    db = pg_cluster.create_database()
    replicas = [ServerProc(tmp, *REPLICA_ARGS, db=db).start() for _ in range(2)]  # type: ignore[arg-type]
    nginx = Nginx(tmp / "nginx", [f"127.0.0.1:{r.port}" for r in replicas])
    c = Cluster(tmp, db, replicas, nginx)
    try:
        nginx.start()
        yield c
    finally:
        nginx.stop()
        for r in c.replicas:
            r.stop()
        pg_cluster.drop_database(db)


def chat(url: str, message: str, cid: str | None = None, **extra: object) -> dict:
    body = {"message": message, "max_tokens": 12, "temperature": 0, **extra}
    if cid:
        body["conversation_id"] = cid
    r = httpx.post(url + "/api/chat", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def requests_served(r: ServerProc) -> int:
    return r.stats()["requests"]["total"]


def test_ten_simultaneous_chats_through_nginx(cluster):
    before = [requests_served(r) for r in cluster.replicas]
    results: list[dict | Exception] = []

    def one(i: int) -> None:
        try:
            if i % 2:
                results.append(chat(cluster.nginx.url, f"Say a word about the number {i}."))
            else:
                with httpx.stream("POST", cluster.nginx.url + "/api/chat", timeout=120, json={
                        "message": f"Say a word about the number {i}.", "max_tokens": 12, "stream": True}) as s:
                    assert s.status_code == 200
                    frames = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
                assert frames[-1]["type"] == "done", frames[-1]
                results.append(frames[-1])
        except Exception as e:  # noqa: BLE001 - reported below
            results.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    failed = [r for r in results if isinstance(r, Exception)]
    assert len(results) == 10 and not failed, failed
    assert all(r["message"] and r["usage"]["completionTokens"] > 0 for r in results)  # type: ignore[index]
    # nginx spread them: both replicas answered some.
    served = [requests_served(r) - b for r, b in zip(cluster.replicas, before)]
    assert sum(served) == 10 and min(served) >= 1, served


def test_conversation_continues_on_the_other_replica(cluster):
    a, b = cluster.replicas
    first = chat(a.url, "My name is Zorblax.", max_tokens=20)
    cid = first["conversation_id"]
    # No repeat penalty: llama.cpp counts the prompt in its window, and the name the
    # model must repeat is in the prompt.
    second = chat(b.url, "What is my name?", cid, max_tokens=20, repeat_penalty=1.0)
    assert "Zorblax" in second["message"]
    assert second["usage"]["promptTokens"] > first["usage"]["promptTokens"] + first["usage"]["completionTokens"]
    third = chat(cluster.nginx.url, "Thanks!", cid)
    assert third["conversation_id"] == cid
    # Every replica, and nginx, shows the same conversation and finds it.
    views = [httpx.get(f"{u}/api/conversations/{cid}").json()["data"]
             for u in (a.url, b.url, cluster.nginx.url)]
    assert views[0] == views[1] == views[2]
    assert [m["content"] for m in views[0]["messages"][::2]] == ["My name is Zorblax.", "What is my name?", "Thanks!"]
    for u in (a.url, b.url, cluster.nginx.url):
        hits = httpx.get(u + "/api/search", params={"q": "Zorblax"}).json()["data"]["results"]
        assert cid in {h["conversation_id"] for h in hits}


def test_websocket_through_nginx(cluster):
    with connect(cluster.nginx.ws_url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "chat", "message": "Say hello.", "max_tokens": 8}))
        frames = []
        while not frames or frames[-1]["type"] not in ("done", "error"):
            frames.append(json.loads(ws.recv(timeout=60)))
        assert frames[-1]["type"] == "done" and frames[0]["type"] == "start"
        ws.send(json.dumps({"type": "chat", "message": "Write the numbers from 1 to 500.", "max_tokens": 600}))
        tokens = 0
        while True:
            f = json.loads(ws.recv(timeout=60))
            if f["type"] == "token":
                tokens += 1
                if tokens == 3:
                    ws.send(json.dumps({"type": "stop"}))
            elif f["type"] in ("done", "error"):
                break
        assert f["type"] == "done" and f["finish_reason"] == "cancelled"


@dataclass
class Stream:
    """A streamed chat through nginx, read in a thread."""

    url: str
    message: str
    max_tokens: int
    frames: list[dict] = field(default_factory=list)
    error: Exception | None = None
    tokens_seen: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Stream:
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        try:
            with httpx.stream("POST", self.url + "/api/chat", timeout=120, json={
                    "message": self.message, "max_tokens": self.max_tokens, "temperature": 0, "stream": True}) as s:
                assert s.status_code == 200, s.read()
                for line in s.iter_lines():
                    if line.startswith("data: "):
                        self.frames.append(json.loads(line[6:]))
                        if sum(f["type"] == "token" for f in self.frames) >= 3:
                            self.tokens_seen.set()
        except (httpx.HTTPError, AssertionError) as e:
            self.error = e
        finally:
            self.tokens_seen.set()

    @property
    def done(self) -> dict | None:
        return self.frames[-1] if self.frames and self.frames[-1]["type"] == "done" else None

    @property
    def seen_text(self) -> str:
        return "".join(f.get("text", "") for f in self.frames if f["type"] == "token")


def record(s: Stream, acknowledged: list[tuple[str, str]], answered: list[tuple[str, str]]) -> None:
    """What the client was told: a "start" frame acknowledges the user's message, a
    "done" frame the answer."""
    if s.frames and s.frames[0]["type"] == "start":
        acknowledged.append((s.frames[0]["conversation_id"], s.message))
    if s.done:
        answered.append((s.done["conversation_id"], s.done["message"]))


def test_sigkill_replica_mid_stream_loses_nothing_acknowledged(cluster, acceptance: bool):
    kills = ACCEPTANCE_KILLS if acceptance else KILLS
    acknowledged: list[tuple[str, str]] = []  # (conversation id, user message) with a "start" frame
    answered: list[tuple[str, str]] = []  # (conversation id, answer) with a "done" frame
    killed_streams: list[Stream] = []
    survivors_finished = 0  # streams on the other replica that ran to their end
    mid_stream = 0  # kills that cut a stream (the victim may end first: a 135M model's "long" answer can be short)
    for round_ in range(kills):
        for attempt in range(5):
            victim = Stream(cluster.nginx.url, "Write the numbers from 1 to 500, separated by commas. "
                            f"(Round {round_}.{attempt})", 600).start()
            assert victim.tokens_seen.wait(60) and victim.error is None, victim.error
            generating = [r.stats()["requests"]["generating"] for r in cluster.replicas]
            if sorted(generating) != [0, 1]:  # it ended already: ask again
                victim.thread.join(60)  # type: ignore[union-attr]
                assert victim.done is not None and generating == [0, 0], (generating, victim.frames[-1:])
                record(victim, acknowledged, answered)
                continue
            target = generating.index(1)  # the replica serving the victim
            # A stream on the other replica (asked directly: nginx's choice is not ours) runs on.
            other = Stream(cluster.replicas[1 - target].url, f"Round {round_}: say something kind.", 40).start()
            assert other.tokens_seen.wait(60)
            cluster.replicas[target].kill()
            victim.thread.join(30)  # type: ignore[union-attr]
            other.thread.join(60)  # type: ignore[union-attr]
            assert other.done is not None, (other.error, other.frames[-1:])
            survivors_finished += 1
            # The survivor takes new chats at once (nginx skips the dead replica).
            t0 = time.monotonic()
            after = chat(cluster.nginx.url, f"Round {round_}: hello again.", max_tokens=6)
            assert time.monotonic() - t0 < 30
            for st in (victim, other):
                record(st, acknowledged, answered)
            acknowledged.append((after["conversation_id"], f"Round {round_}: hello again."))
            answered.append((after["conversation_id"], after["message"]))
            cluster.restart(target)
            if victim.done is None:
                killed_streams.append(victim)
                mid_stream += 1
                break
        else:
            raise AssertionError("five answers in a row ended before their replica was killed")

    def messages(cid: str) -> list[dict]:
        r = httpx.get(f"{cluster.nginx.url}/api/conversations/{cid}", timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["data"]["messages"]

    lost = [(cid, text) for cid, text in acknowledged
            if not any(m["role"] == "user" and m["content"] == text for m in messages(cid))]
    lost += [(cid, text) for cid, text in answered
             if not any(m["role"] == "assistant" and m["content"] == text and m["status"] in ("complete", "length")
                        for m in messages(cid))]
    assert lost == [], f"{len(lost)} acknowledged messages lost: {lost[:3]}"
    # What the killed replica had saved of its answer is kept, marked unfinished, and
    # never more than the client saw.
    for s in killed_streams:
        answer = messages(s.frames[0]["conversation_id"])[-1]
        assert answer["role"] == "assistant" and answer["status"] not in ("complete", "length")
        assert s.seen_text.startswith(answer["content"])
    assert mid_stream == kills
    print(f"\nreplica kills mid-stream: {mid_stream}, acknowledged: {len(acknowledged)} user messages + "
          f"{len(answered)} answers, lost: 0, streams on the other replica finished: {survivors_finished}")
