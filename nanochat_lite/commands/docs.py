"""``nanochat-lite docs``: the documents of a running server, from the command line.

    nanochat-lite docs add FILE… [--collection NAME]   upload, then one progress bar per file
    nanochat-lite docs list [--collection NAME]         id, name, collection, status, chunks, date
    nanochat-lite docs rm ID…                           remove documents (and their chunks)
    nanochat-lite docs search QUERY… [-k N]             ranked excerpts with name, page and score

Each takes `--server URL` (default: the address `serve` listens on by default, with HOST
and PORT from the environment as `serve` reads them) and `--api-key KEY` (default: the one
key in NANOCHAT_LITE_API_KEY, the variable `serve` reads its keys from).

Results go to stdout (`add` prints each ready document's id), progress and diagnoses to
stderr. Exit status: 0 done; 1 when some file or id failed (refused by the server, its
indexing failed, no such id) while the others went on; 2 when nothing could be done
(no server, a refused key, a missing file: nothing is uploaded then), 130 on Ctrl-C (the
server goes on indexing what it has received).

The HTTP side is `docs_client.py`; this module is arguments and what is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import CLIError, say

if TYPE_CHECKING:
    from tqdm import tqdm

    from ..config import Config
    from .docs_client import DocumentsClient

EXCERPT_CHARS = 240  # of a search result's text
# Event streams opened for one document before giving up on it: a stream that drops or
# falls silent is followed by a look at the document's status, then a new stream.
MAX_EVENT_STREAMS = 3
_ANY_ADDRESS = {"", "0.0.0.0", "::", "[::]"}  # serve listens everywhere: talk to it here


def add_parser(sub: Any) -> None:
    """Register ``docs`` and its actions on the main CLI's subparsers."""
    d = sub.add_parser("docs", help="add, list, remove and search documents on a running server")
    actions = d.add_subparsers(dest="docs_action", metavar="ACTION", required=True)

    a = actions.add_parser("add", help="upload files and follow their indexing with a progress bar each")
    a.add_argument("files", nargs="+", metavar="FILE", help=".txt, .md, .html, .pdf or .docx files")
    a.add_argument("--collection", help="the collection to put them in (the server's default: 'default')")
    _server_flags(a)

    ls = actions.add_parser("list", help="the documents, with their status and chunk count")
    ls.add_argument("--collection", help="only this collection")
    _server_flags(ls)

    rm = actions.add_parser("rm", help="remove documents and their chunks")
    rm.add_argument("ids", nargs="+", metavar="ID", help="document ids (`docs list` shows them)")
    _server_flags(rm)

    s = actions.add_parser("search", help="the chunks that best match a query, ranked")
    s.add_argument("query", nargs="+", metavar="QUERY", help="what to look for (several words need no quotes)")
    s.add_argument("-k", type=_positive, default=5, metavar="N", help="how many results (default 5)")
    s.add_argument("--collection", help="only this collection")
    _server_flags(s)


def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", metavar="URL",
                   help="the running server (default http://127.0.0.1:8080, or HOST and PORT from the environment)")
    p.add_argument("--api-key", metavar="KEY",
                   help="the key, when the server has keys (env NANOCHAT_LITE_API_KEY, which keeps it out of "
                        "the process list)")


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def run(args: argparse.Namespace, config: Config) -> int:
    from .docs_client import DocumentsClient, ServerRefusal

    client = DocumentsClient(server_url(args.server, config), api_key(args.api_key, config.env))
    action: str = args.docs_action
    try:
        if action == "add":
            return _add(client, [Path(f) for f in args.files], args.collection)
        if action == "list":
            return _list(client, args.collection)
        if action == "rm":
            return _remove(client, args.ids)
        return _search(client, " ".join(args.query), args.k, args.collection)
    except ServerRefusal as e:  # one the action does not go on after (a list, a search, no documents API)
        raise CLIError(f"The server refused it ({e.status} {e.code}): {e.message}") from None


def server_url(flag: str | None, config: Config) -> str:
    """--server, else where `serve` listens with the same configuration.

    host "0.0.0.0", port 8080 -> "http://127.0.0.1:8080";  host "::1" -> "http://[::1]:8080"
    """
    if flag:
        return flag
    if config.port == 0:
        raise CLIError("PORT=0 lets `serve` pick any free port, so the address is not known here: "
                       "pass it with --server http://127.0.0.1:PORT (serve's banner prints it).")
    host = "127.0.0.1" if config.host in _ANY_ADDRESS else config.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{config.port}"


def api_key(flag: str | None, env: Any) -> str | None:
    """The key to send: --api-key, else NANOCHAT_LITE_API_KEY when it holds one key.
    Either may be written as `serve` takes it ([NAME:]KEY[:TOKENS][:admin]): the KEY is sent.
    Several keys in the variable name several owners, and which one the documents go to
    is the user's choice: then none is sent, and a 401 says to pick one."""
    from ..security_config import ENV_API_KEY, parse_keys, split_key_options

    if flag is not None:
        specs = [(flag, "--api-key")]
    else:
        specs = [(s, ENV_API_KEY) for s in str(env.get(ENV_API_KEY, "")).split(",") if s.strip()]
        if len(specs) > 1:
            say(f"({ENV_API_KEY} holds {len(specs)} keys; pass the one to use with --api-key KEY)")
            return None
    keys = parse_keys(split_key_options(specs)[0])
    return next(iter(keys.values()), None)


# -- add ------------------------------------------------------------------------------------
@dataclass
class _Outcome:
    ok: bool
    chunks: int = 0
    code: str = ""
    message: str = ""


def _add(client: DocumentsClient, paths: list[Path], collection: str | None) -> int:
    from .docs_client import ServerRefusal

    problems = [p for p in (_unreadable(path) for path in paths) if p]
    if problems:
        raise CLIError("; ".join(problems) + ". Nothing was uploaded: fix the path(s) and run it again.")
    failed = 0
    for path in paths:
        try:
            content = path.read_bytes()
        except OSError as e:  # went away or changed mode since the check
            say(f"{path}: cannot read it: {e.strerror}")
            failed += 1
            continue
        try:
            document = client.upload(path.name, content, collection)
        except ServerRefusal as e:
            if e.status == 404:  # the upload's own path: this server has no documents API
                raise
            say(f"{path}: refused by the server ({e.status} {e.code}): {e.message}")
            failed += 1
            continue
        doc_id = str(document.get("id") or "")
        if not doc_id:
            raise CLIError(f"The server accepted {path} but gave no document id: is it a nanochat-lite server "
                           "of this version?")
        outcome = _follow_with_bar(client, doc_id, path.name)
        if outcome.ok:
            print(f"{doc_id}\t{path.name}\t{outcome.chunks} chunks", flush=True)
        else:
            say(f"{path}: indexing failed ({outcome.code}): {outcome.message}")
            failed += 1
    return 1 if failed else 0


def _unreadable(path: Path) -> str | None:
    """Why `path` cannot be uploaded, or None."""
    if not path.exists():
        return f"{path}: no such file"
    if path.is_dir():
        return f"{path}: a folder (pass the files inside it: {path}{os.sep}*)"
    if not os.access(path, os.R_OK):
        return f"{path}: not readable (check its permissions)"
    return None


def _follow_with_bar(client: DocumentsClient, doc_id: str, name: str) -> _Outcome:
    from tqdm import tqdm

    bar = tqdm(total=None, desc=name, unit=" chunks", file=sys.stderr, leave=True, dynamic_ncols=True)
    try:
        return _follow(client, doc_id, bar)
    except KeyboardInterrupt:
        bar.close()
        say(f"Stopped following {name}; the server goes on indexing it (id {doc_id}): "
            "`nanochat-lite docs list` shows its status.")
        raise
    finally:
        bar.close()  # a second close is a no-op


def _follow(client: DocumentsClient, doc_id: str, bar: tqdm[Any]) -> _Outcome:
    """Move `bar` with the document's progress events until `ready` or `error`.

    A stream that ends without either (dropped, or silent past its timeout), or a 404 for
    it, is followed by the document's status from the list: ready or failed ends here,
    still indexing opens a new stream, and gone (removed meanwhile) is a failure."""
    from http.client import HTTPException

    from .docs_client import ServerRefusal

    for _ in range(MAX_EVENT_STREAMS):
        try:
            for event in client.events(doc_id):
                kind = event.get("type")
                if kind == "progress":
                    _advance(bar, event.get("done"), event.get("total"))
                elif kind == "ready":
                    chunks = _count(event.get("chunks"), fallback=bar.total or bar.n)
                    _finish(bar, chunks)
                    return _Outcome(True, chunks=chunks)
                elif kind == "error":
                    return _Outcome(False, code=str(event.get("code") or "error"),
                                    message=str(event.get("message") or "the server gave no reason"))
        except ServerRefusal as e:
            if e.status != 404:
                return _Outcome(False, code=e.code, message=e.message)
        except (OSError, HTTPException):  # dropped or silent: ask for the status below
            pass
        outcome = _status(client, doc_id, bar)
        if outcome is not None:
            return outcome
    return _Outcome(False, code="no_progress",
                    message=f"the server stopped sending its progress {MAX_EVENT_STREAMS} times; "
                            "`nanochat-lite docs list` shows whether it became ready")


def _status(client: DocumentsClient, doc_id: str, bar: tqdm[Any]) -> _Outcome | None:
    """The document's state from the list: an outcome when it is ready, failed or gone;
    None while it is still indexing."""
    document = next((d for d in client.documents(None) if str(d.get("id")) == doc_id), None)
    if document is None:
        return _Outcome(False, code="not_found", message="the server no longer has it (removed meanwhile?)")
    status = str(document.get("status") or "")
    if status == "ready":
        chunks = _count(document.get("chunks"), fallback=bar.total or bar.n)
        _finish(bar, chunks)
        return _Outcome(True, chunks=chunks)
    if status in ("error", "failed"):  # the reason as `error_code` and `error`, or one `error` object
        error = document.get("error")
        code, message = document.get("error_code"), error
        if isinstance(error, dict):
            code, message = error.get("code") or code, error.get("message")
        return _Outcome(False, code=str(code or status), message=str(message or "the server gave no reason"))
    return None


def _advance(bar: tqdm[Any], done: object, total: object) -> None:
    """Show done/total on the bar (either may be missing from an event: then it stays)."""
    # total 0: not known yet (the server has not chunked the document): the bar counts without one
    if isinstance(total, int) and not isinstance(total, bool) and total > 0 and total != bar.total:
        bar.total = total
        bar.refresh()
    if isinstance(done, int) and not isinstance(done, bool) and done != bar.n:
        bar.update(done - bar.n)


def _finish(bar: tqdm[Any], chunks: int) -> None:
    """The bar full at `chunks`, drawn once by its close (an update here would draw it
    twice: one more line in a log, where the carriage return does not overwrite)."""
    if chunks > 0:
        bar.total = bar.n = chunks


def _count(value: object, *, fallback: float) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else int(fallback)


# -- list, rm, search -----------------------------------------------------------------------
def _list(client: DocumentsClient, collection: str | None) -> int:
    documents = client.documents(collection)
    if not documents:
        where = f" in the collection {collection!r}" if collection else ""
        say(f"No documents{where}. Add some with `nanochat-lite docs add FILE`.")
        return 0
    header = ("ID", "NAME", "COLLECTION", "STATUS", "CHUNKS", "CREATED")
    rows = [(str(d.get("id", "")), str(d.get("name", "")), str(d.get("collection", "")), str(d.get("status", "")),
             str(d.get("chunks", "")), _date(d.get("created_at"))) for d in documents]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def _date(value: object) -> str:
    """created_at as a UTC minute: epoch seconds or ISO text.

    1764979200 -> "2025-12-06 00:00";  "2026-12-07T15:28:54.123Z" -> "2026-12-07 15:28"
    """
    from datetime import datetime, timezone

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M")
    return str(value or "").replace("T", " ")[:16]


def _remove(client: DocumentsClient, ids: list[str]) -> int:
    from .docs_client import ServerRefusal

    failed = 0
    for doc_id in ids:
        try:
            client.remove(doc_id)
        except ServerRefusal as e:
            hint = " (`nanochat-lite docs list` shows the ids)" if e.status == 404 else ""
            say(f"{doc_id}: {e.message}{hint}")
            failed += 1
            continue
        print(f"removed {doc_id}")
    return 1 if failed else 0


def _search(client: DocumentsClient, query: str, k: int, collection: str | None) -> int:
    if not query.strip():
        raise CLIError("docs search: the query is empty; say what to look for: nanochat-lite docs search WORDS")
    results = client.search(query, k, collection)
    if not results:
        say("No document matches. `nanochat-lite docs list` shows what is indexed (and whether it is ready).")
        return 0
    for rank, r in enumerate(results, 1):
        print(_result_line(rank, r))
        print(f"   {_excerpt(str(r.get('text') or ''))}")
    return 0


def _result_line(rank: int, r: dict[str, Any]) -> str:
    """1. guide.pdf  p. 3  0.812  Installation  [document 7f3a]"""
    parts = [f"{rank}. {r.get('name') or '?'}"]
    if r.get("page") is not None:
        parts.append(f"p. {r['page']}")
    score = r.get("score")
    parts.append(f"{score:.3f}" if isinstance(score, (int, float)) else "")
    if r.get("heading"):
        parts.append(str(r["heading"]))
    parts.append(f"[document {r.get('document_id', '?')}]")
    return "  ".join(p for p in parts if p)


def _excerpt(text: str) -> str:
    """The text on one line, cut at a word boundary near EXCERPT_CHARS with an ellipsis."""
    flat = " ".join(text.split())
    if len(flat) <= EXCERPT_CHARS:
        return flat
    cut = flat.rfind(" ", 0, EXCERPT_CHARS)
    return flat[: cut if cut > EXCERPT_CHARS // 2 else EXCERPT_CHARS] + " …"
