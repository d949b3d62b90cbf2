"""The documents API of a running server, over the standard library's urllib: JSON
requests, one multipart upload, and a reader of Server-Sent Events.

Blocking calls on purpose: `nanochat-lite docs` is a command line, with nothing else to
serve while it waits. urllib rather than httpx because httpx is not a runtime dependency
and three request shapes do not justify one.

Errors come out as two kinds:
- `CLIError`: nothing more can be done with this server (it does not answer, the key is
  refused, it is overloaded). The message names the problem and the fix.
- `ServerRefusal`: the server answered this one request with a 4xx in the project's error
  shape, `{"success": false, "error": {"code", "message"}}`. The caller decides whether the
  other files or ids can go on.

Not here: what the commands print (`docs.py`).
"""

from __future__ import annotations

import json
import mimetypes
import secrets
import socket
from collections.abc import Iterator
from http.client import HTTPException, HTTPResponse
from ipaddress import ip_address
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlsplit
from urllib.request import OpenerDirector, ProxyHandler, Request, build_opener

from .common import CLIError

REQUEST_TIMEOUT_S = 120.0  # a search embeds its query: slow behind a busy model, never this slow
UPLOAD_TIMEOUT_S = 600.0  # a 50 MB PDF is read and sniffed before the 202
# The server sends a progress event at least every second; this long without a byte is a
# server that stopped talking (the caller reconnects or asks for the document's status).
EVENTS_TIMEOUT_S = 30.0
_ERROR_BODY_CHARS = 300  # of a body that is not our error shape (a proxy's HTML page)


class ServerRefusal(Exception):
    """A 4xx answer to one request: `status`, the server's `code` and `message`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class DocumentsClient:
    """The documents API at `base` (http://host:port, maybe with a path prefix), with an
    optional bearer key."""

    def __init__(self, base: str, key: str | None) -> None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CLIError(f"--server {base!r}: expected the server's address, e.g. --server http://127.0.0.1:8080")
        self.base = base.rstrip("/")
        self._key = key
        # A proxy set in the environment would be asked for 127.0.0.1 too (unless no_proxy
        # says otherwise) and answer for a machine it is not: never for a loopback server.
        self._opener: OpenerDirector = build_opener(ProxyHandler({})) if _is_loopback(parts.hostname) else build_opener()

    # -- the API ---------------------------------------------------------------------------
    def upload(self, name: str, content: bytes, collection: str | None) -> dict[str, Any]:
        """POST /api/documents (multipart/form-data: `file`, optional `collection`)."""
        boundary = "nanochat-" + secrets.token_hex(16)
        body = _multipart(boundary, name, content, collection)
        return self.call("POST", "/api/documents", body, f"multipart/form-data; boundary={boundary}",
                         timeout=UPLOAD_TIMEOUT_S)

    def documents(self, collection: str | None) -> list[dict[str, Any]]:
        path = "/api/documents" + (f"?collection={quote(collection, safe='')}" if collection else "")
        found = self.call("GET", path).get("documents")
        if not isinstance(found, list):
            raise CLIError(f"{self.base}/api/documents answered without a list of documents: is it a "
                           "nanochat-lite server of this version?")
        return found

    def remove(self, document_id: str) -> None:
        self.call("DELETE", f"/api/documents/{quote(document_id, safe='')}")

    def search(self, query: str, k: int, collection: str | None) -> list[dict[str, Any]]:
        payload: dict[str, Any] = {"query": query, "k": k}
        if collection:
            payload["collection"] = collection
        results = self.call("POST", "/api/documents/search", json.dumps(payload).encode(),
                            "application/json").get("results")
        if not isinstance(results, list):
            raise CLIError(f"{self.base}/api/documents/search answered without results: is it a "
                           "nanochat-lite server of this version?")
        return results

    def events(self, document_id: str) -> Iterator[dict[str, Any]]:
        """The document's indexing events, parsed, until the server closes the stream.
        A silence of EVENTS_TIMEOUT_S ends it too (TimeoutError)."""
        path = f"/api/documents/{quote(document_id, safe='')}/events"
        with self._open("GET", path, None, None, timeout=EVENTS_TIMEOUT_S) as response:
            yield from _sse_events(response)

    # -- plumbing --------------------------------------------------------------------------
    def call(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None, *,
             timeout: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        """One request; the `data` of the server's success envelope."""
        with self._open(method, path, body, content_type, timeout=timeout) as response:
            raw = response.read()
        if not raw.strip() and method == "DELETE":  # a 204, or a 200 that says nothing more
            return {}
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or answer.get("success") is not True:
            raise CLIError(f"{self.base}{path} answered {_excerpt(raw)!r}, not the project's JSON: is "
                           f"{self.base} a nanochat-lite server?")
        data = answer.get("data")
        return data if isinstance(data, dict) else {}

    def _open(self, method: str, path: str, body: bytes | None, content_type: str | None, *,
              timeout: float) -> HTTPResponse:
        request = Request(self.base + path, data=body, method=method)
        request.add_header("Accept", "application/json, text/event-stream")
        if content_type:
            request.add_header("Content-Type", content_type)
        if self._key:
            request.add_header("Authorization", f"Bearer {self._key}")
        try:
            response: HTTPResponse = self._opener.open(request, timeout=timeout)
            return response
        except HTTPError as e:
            with e:
                raise self._refusal(e) from None
        except URLError as e:
            raise CLIError(self._unreachable(e.reason)) from None
        except (OSError, HTTPException) as e:  # reset, timeout, a half-written status line
            raise CLIError(self._unreachable(e)) from None

    def _unreachable(self, reason: object) -> str:
        if isinstance(reason, ConnectionRefusedError):
            return (f"No server answers at {self.base} (connection refused): start it with `nanochat-lite serve`, "
                    "or pass the address of a running one with --server URL.")
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return f"{self.base} did not answer in time: is the server overloaded? Try again in a moment."
        if isinstance(reason, socket.gaierror):
            return f"Cannot resolve the host of {self.base}: check --server URL."
        return f"Cannot talk to the server at {self.base}: {reason}. Check --server URL and that it is running."

    def _refusal(self, e: HTTPError) -> Exception:
        """The server's own error (code, message) from its envelope; a CLIError for the
        statuses where nothing else can work either (key, load, server trouble)."""
        raw = e.read()
        code, message = f"http_{e.code}", _excerpt(raw) or (e.reason or "no message")
        try:
            error = json.loads(raw).get("error")
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                code, message = str(error.get("code") or code), error["message"]
        except (ValueError, AttributeError):
            pass
        if e.code == 401:
            return CLIError(f"The server refused the key ({code}): {message}. Pass the key with --api-key KEY, "
                            "or set NANOCHAT_LITE_API_KEY to it (which keeps it out of the process list).")
        if e.code == 403:
            return CLIError(f"The server refused the request ({code}): {message}")
        if e.code >= 500 or e.code == 429:
            retry = e.headers.get("Retry-After") if e.headers else None
            when = f" in {retry} s" if retry else " in a moment"
            return CLIError(f"The server could not do it ({e.code} {code}): {message}. Try again{when}.")
        return ServerRefusal(e.code, code, message)


def _multipart(boundary: str, name: str, content: bytes, collection: str | None) -> bytes:
    """A multipart/form-data body (RFC 7578) with the file and, when given, the collection.

    The file name is sent as browsers send it: UTF-8, with '"', CR and LF percent-encoded
    (they would end the quoted string or the header)."""
    safe_name = name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"  # the server sniffs anyway
    parts: list[bytes] = []
    if collection:
        parts += [f"--{boundary}\r\nContent-Disposition: form-data; name=\"collection\"\r\n\r\n".encode(),
                  collection.encode(), b"\r\n"]
    parts += [f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{safe_name}\"\r\n"
              f"Content-Type: {kind}\r\n\r\n".encode(), content, f"\r\n--{boundary}--\r\n".encode()]
    return b"".join(parts)


def _sse_events(lines: Iterator[bytes] | HTTPResponse) -> Iterator[dict[str, Any]]:
    """Server-Sent Events -> the JSON of each event's data (an event ends at a blank line;
    comments and the event:/id:/retry: fields are skipped; data that is not a JSON object
    too, so a keep-alive in any form passes).

    [b'data: {"type": "progress", "done": 1, "total": 3}\\n', b'\\n'] -> {"type": "progress", ...}
    """
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                try:
                    event = json.loads("\n".join(data))
                except ValueError:
                    event = None
                data = []
                if isinstance(event, dict):
                    yield event
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value.removeprefix(" "))
    # An event cut off before its blank line is dropped, as EventSource drops it.


def _excerpt(raw: bytes) -> str:
    text = " ".join(raw.decode("utf-8", "replace").split())
    return text if len(text) <= _ERROR_BODY_CHARS else text[:_ERROR_BODY_CHARS] + "…"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
