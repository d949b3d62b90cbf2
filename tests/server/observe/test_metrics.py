"""Observability (`nanochat_lite.server.observe.metrics`): `/metrics`, request ids, the access log.

The app runs in-process with the fake engine (tests/fakes.py). `/metrics` is read by
a small parser of Prometheus's text format written here from its specification
(https://prometheus.io/docs/instrumenting/exposition_formats/), which also checks
the rules a scraper relies on: HELP and TYPE once per family, samples grouped under
their family, histogram buckets cumulative with a `+Inf` bucket equal to `_count`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fakes import REPLY, SLOW, FakeEngine, attach_fake
from starlette.routing import Route
from starlette.testclient import TestClient

from nanochat_lite.engines.scheduler import Scheduler
from nanochat_lite.history import ConversationStore
from nanochat_lite.server import Runtime, create_app
from nanochat_lite.server.guards.security import SecurityConfig
from nanochat_lite.server.observe.metrics import access_line, escape_field

TEST_SECURITY = SecurityConfig(allowed_hosts=("testserver",))
KEY = "sk-metrics-test-0123456789"


# -- a parser of the text exposition format --------------------------------------------------
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
SAMPLE_RE = re.compile(rf"({NAME})(?:\{{((?:{LABEL},?)*)\}})? (\S+)(?: -?\d+)?")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}

Labels = tuple[tuple[str, str], ...]


def _unescape(v: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), v)


def parse(text: str) -> dict[str, dict[str, Any]]:
    """{family: {"type", "help", "samples": {(sample name, labels): value}}}; asserts the format."""
    assert text.endswith("\n"), "the exposition ends with a line feed"
    families: dict[str, dict[str, Any]] = {}
    current: str | None = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.fullmatch(NAME, name), line
            assert name not in families, f"family {name} declared twice"
            families[name] = {"help": help_text, "type": "untyped", "samples": {}}
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current and kind in TYPES, line
            assert not families[name]["samples"], f"TYPE after samples: {line}"
            families[name]["type"] = kind
        elif line.startswith("#") or not line:
            assert not line, f"a stray comment or blank line: {line!r}"
        else:
            m = SAMPLE_RE.fullmatch(line)
            assert m, f"not a sample line: {line!r}"
            name, labels_text, value = m.group(1), m.group(2) or "", m.group(m.lastindex or 0)
            labels = tuple((k, _unescape(v)) for k, v in re.findall(LABEL, labels_text))
            assert current is not None, line
            kind = families[current]["type"]
            suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
            assert name in {current + s for s in suffixes}, f"{name} is not in family {current}"
            assert (name, labels) not in families[current]["samples"], f"duplicate sample {line}"
            families[current]["samples"][(name, labels)] = float(value)  # float() reads +Inf, NaN
    for name, fam in families.items():
        if fam["type"] == "counter":
            assert name.endswith("_total"), f"counter {name} should end in _total"
        if fam["type"] == "histogram" and fam["samples"]:  # no series yet is valid
            _check_histogram(name, fam["samples"])
    return families


def _check_histogram(name: str, samples: dict[tuple[str, Labels], float]) -> None:
    series: dict[Labels, list[tuple[float, float]]] = {}
    for (sample, labels), value in samples.items():
        if sample == name + "_bucket":
            le = dict(labels)["le"]
            rest = tuple(kv for kv in labels if kv[0] != "le")
            series.setdefault(rest, []).append((float(le), value))
    assert series, f"histogram {name} has no buckets"
    for rest, buckets in series.items():
        bounds = [b for b, _ in buckets]
        assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds), f"{name}{rest}: bucket order"
        assert math.isinf(bounds[-1]), f"{name}{rest}: no +Inf bucket"
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), f"{name}{rest}: buckets are not cumulative"
        assert counts[-1] == samples[(name + "_count", rest)], f"{name}{rest}: +Inf bucket != _count"
        assert (name + "_sum", rest) in samples


def value(families: dict, family: str, sample: str | None = None, **labels: str) -> float:
    want = tuple(sorted(labels.items()))
    for (name, got), v in families[family]["samples"].items():
        if name == (sample or family) and tuple(sorted(kv for kv in got if kv[0] in labels)) == want:
            return v
    return 0.0


def test_parser_rejects_broken_expositions() -> None:
    with pytest.raises(AssertionError):
        parse("x_total 1\n")  # a sample before any family
    with pytest.raises(AssertionError):
        parse('# HELP a_total a\n# TYPE a_total counter\na_total{l="unterminated} 1\n')
    with pytest.raises(AssertionError):
        parse('# HELP h h\n# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n')


# -- fixtures ----------------------------------------------------------------------------------
def _make(security: SecurityConfig, fake: FakeEngine | None = None, scheduler: Any = None,
          extra_routes: list | None = None) -> tuple[TestClient, Runtime]:
    fake = fake or FakeEngine()
    rt = Runtime(store=ConversationStore(":memory:"), model_name="fake")
    attach_fake(rt, fake, scheduler)
    return TestClient(create_app(rt, extra_routes, security=security), raise_server_exceptions=False), rt


async def _boom(request: Any) -> Any:
    raise RuntimeError("a bug in a route")


@pytest.fixture
def client() -> Iterator[TestClient]:
    c, rt = _make(TEST_SECURITY, extra_routes=[Route("/api/boom", _boom)])
    with c:
        yield c
    rt.close()
    rt.store.close()


def metrics(client: TestClient, **headers: str) -> dict[str, dict[str, Any]]:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(r.text)


# -- /metrics ----------------------------------------------------------------------------------
def test_metrics_parse_and_have_every_family(client: TestClient) -> None:
    fams = metrics(client)
    for name in ["nanochat_http_requests_total", "nanochat_http_request_duration_seconds",
                 "nanochat_time_to_first_token_seconds", "nanochat_generation_duration_seconds",
                 "nanochat_prompt_tokens_total", "nanochat_completion_tokens_total", "nanochat_queue_length",
                 "nanochat_slots_in_use", "nanochat_slots", "nanochat_requests_rejected_total",
                 "process_resident_memory_bytes"]:
        assert name in fams, name
    assert fams["nanochat_time_to_first_token_seconds"]["type"] == "histogram"
    # Histograms without labels have their buckets from the start (all zero).
    assert value(fams, "nanochat_time_to_first_token_seconds", "nanochat_time_to_first_token_seconds_bucket",
                 le="+Inf") == 0
    assert len(fams["nanochat_time_to_first_token_seconds"]["samples"]) > 5
    assert value(fams, "process_resident_memory_bytes") > 10 << 20  # a Python process is > 10 MiB
    assert value(fams, "nanochat_slots") == 1
    assert value(fams, "nanochat_model_info", model="fake", state="ready") == 1


def test_counters_move_after_requests(client: TestClient) -> None:
    before = metrics(client)
    r = client.post("/api/chat", json={"message": "hello there"})
    assert r.status_code == 200
    cid = r.json()["data"]["conversation_id"]
    assert client.get(f"/api/conversations/{cid}").status_code == 200
    assert client.get("/api/conversations/nope-nope").status_code == 404
    assert client.get("/no/such/route/12345").status_code == 404
    after = metrics(client)

    def delta(family: str, sample: str | None = None, **labels: str) -> float:
        return value(after, family, sample, **labels) - value(before, family, sample, **labels)

    req = "nanochat_http_requests_total"
    assert delta(req, route="/api/chat", method="POST", status="200") == 1
    # Route templates, not raw paths: ids and scans do not make new series.
    assert delta(req, route="/api/conversations/{cid}", method="GET", status="200") == 1
    assert delta(req, route="/api/conversations/{cid}", method="GET", status="404") == 1
    assert delta(req, route="unmatched", method="GET", status="404") == 1
    assert not any("no/such" in dict(labels).get("route", "") for _, labels in after[req]["samples"])
    assert delta(req, route="/metrics", method="GET", status="200") == 1  # the first scrape

    assert delta("nanochat_generations_total") == 1
    assert delta("nanochat_completion_tokens_total") == len(REPLY)
    assert delta("nanochat_prompt_tokens_total") == 3  # the fake: BOS + one per word
    ttft = "nanochat_time_to_first_token_seconds"
    assert delta(ttft, ttft + "_count") == 1
    assert delta(ttft, ttft + "_bucket", le="+Inf") == 1
    dur = "nanochat_http_request_duration_seconds"
    assert delta(dur, dur + "_count", route="/api/chat") == 1
    assert value(after, dur, dur + "_sum", route="/api/chat") > 0


def test_server_errors_are_counted_and_carry_a_request_id(client: TestClient) -> None:
    r = client.get("/api/boom")
    assert r.status_code == 500
    assert re.fullmatch(r"[0-9a-f]{16}", r.headers["x-request-id"])
    fams = metrics(client)
    assert value(fams, "nanochat_http_requests_total", route="/api/boom", status="500") == 1


def test_queue_slots_and_rejections() -> None:
    fake = FakeEngine(parallel=1)
    c, rt = _make(TEST_SECURITY, fake, Scheduler(fake, max_queue=1))
    with c, c.websocket_connect("/ws") as running, c.websocket_connect("/ws") as waiting:
        running.send_json({"type": "chat", "message": f"{SLOW} first"})
        assert running.receive_json()["type"] == "start"
        waiting.send_json({"type": "chat", "message": f"{SLOW} second"})
        assert waiting.receive_json()["type"] == "start"
        r = c.post("/api/chat", json={"message": "one too many"})
        assert r.status_code == 503
        fams = metrics(c)
        assert value(fams, "nanochat_queue_length") == 1
        assert value(fams, "nanochat_queue_capacity") == 1
        assert value(fams, "nanochat_slots_in_use") == 1
        assert value(fams, "nanochat_requests_rejected_total", reason="queue_full") == 1
        assert value(fams, "nanochat_http_requests_total", route="/api/chat", status="503") == 1
        assert value(fams, "nanochat_http_requests_in_flight") == 3  # two sockets and this scrape
        for ws in (running, waiting):
            ws.send_json({"type": "stop"})
        for ws in (running, waiting):
            while ws.receive_json()["type"] != "done":
                pass
    rt.close()
    rt.store.close()


def test_key_label_when_keys_are_configured() -> None:
    c, rt = _make(SecurityConfig(allowed_hosts=("testserver",), keys={"alice": KEY, "bob": KEY + "-b", "ops": KEY + "-o"},
                                 admins=frozenset({"ops"})))
    auth = {"Authorization": f"Bearer {KEY}"}
    with c:
        assert c.get("/metrics").status_code == 401  # /metrics follows the API key
        assert c.post("/api/chat", json={"message": "hi"}, headers=auth).status_code == 200
        assert c.get("/api/health").status_code == 200  # public: no key, key=""
        with c.websocket_connect("/ws", headers={"X-Api-Key": KEY + "-b"}) as ws:
            ws.send_json({"type": "ping"})
            assert ws.receive_json() == {"type": "pong"}
        fams = metrics(c, Authorization=f"Bearer {KEY}-o")  # an admin key sees every key's series
        mine = metrics(c, **auth)  # another key, its own only
    req = "nanochat_http_requests_total"
    assert value(fams, req, route="/api/chat", method="POST", status="200", key="alice") == 1
    assert value(fams, req, route="/api/health", status="200", key="") == 1
    assert value(fams, req, route="/ws", method="WEBSOCKET", status="101", key="bob") == 1
    assert all("key" in dict(labels) for _, labels in fams[req]["samples"])
    assert {dict(labels)["key"] for _, labels in fams["nanochat_key_requests_total"]["samples"]} == \
        {"alice", "bob", "ops"}
    assert value(mine, req, route="/api/chat", method="POST", status="200", key="alice") == 1
    assert {dict(labels)["key"] for _, labels in mine[req]["samples"]} == {"alice"}
    assert {dict(labels)["key"] for _, labels in mine["nanochat_key_requests_total"]["samples"]} == {"alice"}
    rt.close()
    rt.store.close()


def test_no_key_label_without_keys(client: TestClient) -> None:
    client.get("/api/health")
    fams = metrics(client)
    assert not any("key" in dict(labels) for _, labels in fams["nanochat_http_requests_total"]["samples"])


# -- request ids -------------------------------------------------------------------------------
def test_request_id_on_every_answer(client: TestClient) -> None:
    ids = set()
    for r in (client.get("/api/health"), client.get("/nope"), client.post("/api/chat", content=b"{"),
              client.post("/api/chat", json={"message": "hi", "stream": True}), client.get("/")):
        rid = r.headers.get("x-request-id")
        assert rid and re.fullmatch(r"[0-9a-f]{16}", rid), (r.status_code, r.headers)
        ids.add(rid)
    assert len(ids) == 5


def test_request_id_from_a_proxy_is_kept_if_it_is_a_token(client: TestClient) -> None:
    assert client.get("/api/health", headers={"X-Request-Id": "proxy-42.a:b"}).headers["x-request-id"] == "proxy-42.a:b"
    for bad in ("has space", "x" * 65, "a\tb", "é"):
        rid = client.get("/api/health", headers={"X-Request-Id": bad.encode()}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{16}", rid), bad


# -- the access log ----------------------------------------------------------------------------
def test_escape_field_known_answers() -> None:
    assert escape_field("/api/chat") == "/api/chat"
    assert escape_field("") == '""'
    assert escape_field("/a\r\nb") == '"/a\\r\\nb"'
    assert escape_field('say "hi"') == '"say \\"hi\\""'
    assert escape_field("\x1b[31m\x00\u2028\u202e\x85") == '"\\x1b[31m\\x00\\u2028\\u202e\\x85"'
    assert escape_field("\ud800") == '"\\ud800"'
    assert escape_field("a\\b") == '"a\\\\b"'
    assert escape_field("é🙂") == "é🙂"
    assert access_line("ab", "127.0.0.1", "GET", "/x", 200, 1.234, "") == \
        "request_id=ab client=127.0.0.1 method=GET path=/x status=200 duration_ms=1.23 key=-"


def test_access_log_line_per_request_with_cr_lf_escaped(client: TestClient,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="nanochat_lite.access"):
        r = client.get("/api/conversations/x%0d%0a2026-01-01 request_id=forged status=200%1b%5b2J")
        client.post("/api/chat", json={"message": "hi"})
    records = [rec for rec in caplog.records if rec.name == "nanochat_lite.access"]
    assert len(records) == 2
    line = records[0].getMessage()
    assert "\r" not in line and "\n" not in line and "\x1b" not in line, line
    assert line.startswith(f"request_id={r.headers['x-request-id']} ")
    assert 'path="/api/conversations/x\\r\\n2026-01-01 request_id=forged status=200\\x1b[2J"' in line
    assert " status=400 " in line and " method=GET " in line and line.endswith(" key=-")  # not a valid id
    assert re.search(r" duration_ms=\d+\.\d\d ", line)
    assert records[0].status == 400  # the fields are also on the record, for a structured formatter
    assert " method=POST path=/api/chat status=200 " in records[1].getMessage()


def test_access_log_names_the_key() -> None:
    c, rt = _make(SecurityConfig(allowed_hosts=("testserver",), keys={"alice": KEY}))
    logger = logging.getLogger("nanochat_lite.access")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with c:
            c.get("/api/stats", headers={"X-Api-Key": KEY})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        rt.close()
        rt.store.close()
    assert len(records) == 1
    assert " path=/api/stats status=200 " in records[0].getMessage()
    assert records[0].getMessage().endswith(" key=alice")
