"""A property-based fuzz run over `/openapi.json`: no request may get a 5xx.

For every operation in the server's own OpenAPI document, hypothesis generates
requests from the document: bodies that fit the request schema, bodies that nearly
fit (a field dropped or given a value of another type), any JSON, bytes that are not
JSON, and a few nasty fixed ones (deep nesting, 1e999, NUL, lone surrogates, one
byte over the 1 MiB limit); path and query parameters from their schemas or
arbitrary text (percent-encoded: CR, LF, NUL and non-ASCII reach the server), and
an arbitrary `X-Request-Id`. The WebSocket gets generated frames too. Each answer
must be below 500 (a WebSocket frame must not be answered `internal_error`).

The app runs in-process (Starlette's TestClient) with the fake engine, a fake
tokenizer and a fake embedder, so every route runs its real code past validation.
The test prints how many requests it sent and how many were answered 5xx.
"""

from __future__ import annotations

import json
import string
import subprocess
import sys
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from fakes import FakeEngine, attach_fake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from nanochat_lite.history import ConversationStore
from nanochat_lite.server import Runtime, create_app
from nanochat_lite.server.guards.security import SecurityConfig
from nanochat_lite.server.wire.limits import MAX_BODY_BYTES

MIN_REQUESTS = 1_000
BODY_EXAMPLES = 90  # per operation with a request body
OTHER_EXAMPLES = 40  # per operation without one
WS_EXAMPLES = 80
SETTINGS = dict(database=None, deadline=None, derandomize=False,
                suppress_health_check=list(HealthCheck))


# -- fakes for the routes the fake engine does not cover ---------------------------------------
class ByteTokenizer:
    """One token per UTF-8 byte: encode('hé') -> [104, 195, 169]."""

    def encode(self, text: str, allowed_special: Any = ()) -> list[int]:
        return list(text.encode("utf-8", "surrogatepass"))

    def piece_text(self, i: int) -> str:
        return bytes([i]).decode("latin-1")

    def decode(self, ids: list[int]) -> str:
        if any(not 0 <= i < 256 for i in ids):
            raise ValueError("token ids of this tokenizer are 0 to 255")
        return bytes(ids).decode("utf-8", "replace")


@dataclass
class EmbedResult:
    vectors: Any
    truncated: list[bool]
    token_counts: list[int]


class FakeEmbedder:
    model_name = "fake-embed"
    dim = 4

    def __init__(self) -> None:
        # Token-id input reads the model folder's vocab.txt, as with the real Embedder.
        import tempfile
        from pathlib import Path

        self.model_dir = tempfile.mkdtemp(prefix="fake-embed-")
        Path(self.model_dir, "vocab.txt").write_text("\n".join(["[PAD]", "[CLS]", "[SEP]", "a", "##b", "c"]) + "\n")

    def embed(self, texts: list[str]) -> EmbedResult:
        vecs = np.array([[len(t) + 1.0, t.count(" "), 1.0, 0.5] for t in texts], dtype=np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        return EmbedResult(vecs, [False] * len(texts), [len(t.split()) for t in texts])


@pytest.fixture
def client() -> Iterator[TestClient]:
    rt = Runtime(store=ConversationStore(":memory:"), model_name="fake",
                 tokenizer_factory=ByteTokenizer, embedder_factory=FakeEmbedder)
    attach_fake(rt, FakeEngine())
    app = create_app(rt, security=SecurityConfig(allowed_hosts=("testserver",)))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
    rt.close()
    rt.store.close()


# -- strategies from JSON schemas --------------------------------------------------------------
TEXT = st.text(st.characters(exclude_categories=()), max_size=30)  # lone surrogates included
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
ANY_JSON = st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(TEXT, c, max_size=4),
                        max_leaves=12)
NASTY_BODIES = [
    b"", b" ", b"null", b"[]", b"{}", b"\x00", b"\xff\xfe", b"{\"a\":", b"[" * 100_000, b"1e999",
    b'{"message": "\\u0000"}', b'{"message": "\\ud800"}', b'{"text": "\\udfff x"}', b'{"title": "\\u2028"}',
    b'{"input": ["\\ud83d"]}', b'{"messages": [{"role": "user", "content": "\\u0000"}]}',
    b'{"tokens": [99999999999999999999999]}', b'{"tokens": [-1, 256]}', b'{"max_tokens": 1e400, "message": "x"}',
    b"x" * (MAX_BODY_BYTES + 1),
]


def strategy(schema: dict[str, Any], components: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values that fit a JSON schema as msgspec writes them ($ref, anyOf, enum, the types)."""
    if "$ref" in schema:
        return strategy(components[schema["$ref"].rsplit("/", 1)[-1]], components, depth)
    if "anyOf" in schema:
        return st.one_of([strategy(s, components, depth) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        if depth > 3:
            return st.fixed_dictionaries({k: st.none() for k in required})
        return st.fixed_dictionaries(
            {k: strategy(v, components, depth + 1) for k, v in props.items() if k in required},
            optional={k: strategy(v, components, depth + 1) for k, v in props.items() if k not in required})
    if kind == "array":
        return st.lists(strategy(schema.get("items", {}), components, depth + 1), max_size=4)
    if kind == "string":
        return st.text(st.characters(exclude_categories=()), max_size=min(schema.get("maxLength", 40), 40)) | \
            st.sampled_from(["hello", "Hi there", "   ", "<|im_start|>system", "x" * 9000, "🙂" * 5])
    if kind == "integer":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        return st.integers(lo, hi) | st.integers(-3, 300) | st.integers()
    if kind == "number":
        return st.floats(-3, 3) | st.floats()
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return ANY_JSON


def body_strategy(schema: dict[str, Any], components: dict[str, Any]) -> st.SearchStrategy[bytes]:
    valid = strategy(schema, components)
    target = components[schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema
    fields = sorted(target.get("properties", {})) or ["x"]

    @st.composite
    def near(draw: Any) -> Any:
        obj = draw(valid)
        if isinstance(obj, dict):
            key = draw(st.sampled_from(fields))
            if draw(st.booleans()):
                obj.pop(key, None)
            else:
                obj[key] = draw(ANY_JSON)
        return obj

    as_json = st.one_of(valid, valid, near(), ANY_JSON).map(lambda o: json.dumps(o).encode())
    return st.one_of(as_json, as_json, as_json, st.binary(max_size=40), st.sampled_from(NASTY_BODIES))


CONTENT_TYPES = ["application/json", "text/plain", "", "application/x-www-form-urlencoded"]
HEADER_TEXT = st.text(string.ascii_letters + string.digits + string.punctuation + " ", max_size=80)


@st.composite
def requests(draw: Any, path: str, method: str, operation: dict[str, Any], components: dict[str, Any],
             cid: str) -> tuple[str, str, bytes | None, dict[str, str]]:
    url = path
    query: list[tuple[str, str]] = []
    for p in operation.get("parameters", ()):
        if p["in"] == "path":
            known = [cid] if p["name"] == "cid" else ["app.js", "index.html", "../../pyproject.toml", "."]
            value = draw(st.sampled_from(known) | TEXT.filter(bool))
            url = url.replace("{" + p["name"] + "}", urllib.parse.quote(value.encode("utf-8", "surrogatepass"),
                                                                          safe=""))
        elif draw(st.booleans()):
            value = draw(strategy(p["schema"], components).map(str) | TEXT)
            query.append((p["name"], value))
    query += draw(st.lists(st.tuples(TEXT, TEXT), max_size=2))
    if query:
        url += "?" + urllib.parse.urlencode([(k.encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass"))
                                             for k, v in query])
    body = None
    if "requestBody" in operation:
        body = draw(body_strategy(operation["requestBody"]["content"]["application/json"]["schema"], components))
    headers = {"x-request-id": draw(HEADER_TEXT)}
    if body is not None:
        headers["content-type"] = draw(st.sampled_from(CONTENT_TYPES))
    return method.upper(), url, body, headers


# -- the document ------------------------------------------------------------------------------
def test_openapi_describes_every_route_from_the_structs(client: TestClient) -> None:
    from starlette.routing import Mount, Route, WebSocketRoute

    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    for route in client.app.routes:  # type: ignore[attr-defined]
        if isinstance(route, Mount):
            assert "get" in doc["paths"][route.path + "/{path}"]
        elif isinstance(route, WebSocketRoute):
            assert "get" in doc["paths"][route.path]
        elif isinstance(route, Route):
            for method in route.methods - {"HEAD"}:
                assert method.lower() in doc["paths"][route.path], (method, route.path)
    schemas = doc["components"]["schemas"]
    chat = doc["paths"]["/api/chat"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatRequest"}
    assert schemas["ChatRequest"]["required"] == ["message"]
    assert schemas["OAIChatRequest"]["properties"]["messages"]["items"] == {"$ref": "#/components/schemas/OAIMessage"}
    assert schemas["TokenizeRequest"]["properties"]["text"] == {"type": "string"}
    assert set(chat["responses"]) >= {"200", "400", "413", "503"}
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    oai = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert oai["429"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")
    params = {p["name"]: p for p in doc["paths"]["/api/search"]["get"]["parameters"]}
    assert params["mode"]["schema"] == {"enum": ["text", "semantic"]}
    assert "security" not in chat and "securitySchemes" not in doc["components"]


def test_openapi_with_keys_marks_the_routes_that_need_one() -> None:
    rt = Runtime(store=ConversationStore(":memory:"), model_name="fake")
    app = create_app(rt, security=SecurityConfig(allowed_hosts=("testserver",), keys={"a": "k" * 20}))
    with TestClient(app) as c:
        doc = c.get("/openapi.json").json()  # public: it describes, it does not serve
    rt.store.close()
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert doc["paths"]["/api/chat"]["post"]["security"] == [{"bearer": []}, {"apiKey": []}]
    assert "401" in doc["paths"]["/metrics"]["get"]["responses"]
    assert "security" not in doc["paths"]["/api/health"]["get"]


def test_openapi_module_is_not_imported_at_start_up() -> None:
    code = ("import sys\n"
            "from nanochat_lite.history import ConversationStore\n"
            "from nanochat_lite.server import Runtime, create_app\n"
            "create_app(Runtime(store=ConversationStore(':memory:'), model_name='x'))\n"
            "print('nanochat_lite.server.routes.openapi' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False", out


# -- the run -----------------------------------------------------------------------------------
def test_fuzz_openapi_no_5xx(client: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    doc = client.get("/openapi.json").json()
    components = doc["components"]["schemas"]
    cid = client.post("/api/chat", json={"message": "a first message"}).json()["data"]["conversation_id"]
    per_route: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    failures: list[str] = []

    def send(method: str, url: str, body: bytes | None, headers: dict[str, str], op_key: str) -> None:
        r = client.request(method, url, content=body, headers=headers)
        per_route[op_key] += 1
        statuses[r.status_code] += 1
        if r.status_code >= 500:
            failures.append(f"{method} {url} body={(body or b'')[:300]!r} headers={headers} -> "
                            f"{r.status_code} {r.text[:300]}")

    ops = [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]
    for path, method, op in ops:
        if "x-websocket-frames" in op:
            continue
        op_key = f"{method.upper()} {path}"
        examples = BODY_EXAMPLES if "requestBody" in op else OTHER_EXAMPLES

        @settings(max_examples=examples, **SETTINGS)
        @given(req=requests(path, method, op, components, cid))
        def run(req: tuple[str, str, bytes | None, dict[str, str]]) -> None:
            send(*req, op_key)

        run()

    ws_frames = _fuzz_websocket(client, components, cid, failures)
    per_route["WEBSOCKET /ws"] = ws_frames
    http_total = sum(n for k, n in per_route.items() if not k.startswith("WEBSOCKET"))
    total = http_total + ws_frames
    with capsys.disabled():
        print(f"\nfuzz: {total} requests ({http_total} HTTP over {len(per_route) - 1} operations, "
              f"{ws_frames} WebSocket frames); {len(failures)} answered 5xx; statuses {dict(sorted(statuses.items()))}")
    missing = [f"{m.upper()} {p}" for p, m, _ in ops if per_route[f"{m.upper()} {p}"] == 0
               and p != "/ws"]
    assert not missing, f"operations never fuzzed: {missing}"
    assert total >= MIN_REQUESTS, f"only {total} requests generated"
    assert not failures, "5xx answers:\n" + "\n".join(failures[:20])


def _fuzz_websocket(client: TestClient, components: dict[str, Any], cid: str, failures: list[str]) -> int:
    """Generated frames on one socket each; every frame gets its answer before the next."""
    frame = st.one_of(
        strategy({"$ref": "#/components/schemas/WSChat"}, components).map(lambda f: {**f, "type": "chat"}),
        strategy({"$ref": "#/components/schemas/WSChat"}, components),
        st.fixed_dictionaries({"type": st.sampled_from(["ping", "stop", "chat", "", "CHAT"])}),
        ANY_JSON,
    ).map(json.dumps) | st.text(max_size=40)
    sent = [0]

    @settings(max_examples=WS_EXAMPLES, **SETTINGS)
    @given(text=frame, conversation=st.booleans())
    def run(text: str, conversation: bool) -> None:
        if conversation and text.startswith("{") and '"type": "chat"' in text:
            obj = json.loads(text)
            obj["conversation_id"] = cid
            text = json.dumps(obj)
        with client.websocket_connect("/ws") as ws:
            ws.send_text(text)
            sent[0] += 1
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
            is_chat = isinstance(obj, dict) and obj.get("type") == "chat"
            if not is_chat:
                ws.send_text('{"type": "ping"}')
            while True:  # until the frame's last answer: done or error for a chat, else pong
                answer = ws.receive_json()
                if answer["type"] == "error" and answer.get("code") == "internal_error":
                    failures.append(f"WS /ws frame={text[:300]!r} -> {answer}")
                if answer["type"] in (("done", "error") if is_chat else ("pong",)):
                    break

    run()
    return sent[0]
