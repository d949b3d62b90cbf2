"""Real `nanochat-lite serve --db postgresql://...` processes on one throwaway PostgreSQL
database: the conversation API answers from PostgreSQL, and a second server process (a
replica) sees and continues the same conversation. Bad URLs fail at start-up with a
message, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from serverproc import ServerProc, free_port


def chat(server: ServerProc, message: str, cid: str | None = None) -> dict:
    body = {"message": message, "max_tokens": 12, "temperature": 0}
    if cid:
        body["conversation_id"] = cid
    r = httpx.post(server.url + "/api/chat", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["data"]


@pytest.mark.model
def test_two_servers_share_one_postgres_store(tmp_path, chat_model_path, pg_url) -> None:
    with ServerProc(tmp_path, "--threads", "1", db=pg_url) as a:  # type: ignore[arg-type]
        cid = chat(a, "Tell me about volcanoes in Iceland.")["conversation_id"]
        with ServerProc(tmp_path, "--threads", "1", db=pg_url) as b:  # type: ignore[arg-type]
            # The replica lists, shows and searches what the first server wrote ...
            page = httpx.get(b.url + "/api/conversations").json()["data"]
            assert page["total"] == 1 and page["conversations"][0]["id"] == cid
            assert page["conversations"][0]["title"] == "Tell me about volcanoes in Iceland."
            hits = httpx.get(b.url + "/api/search", params={"q": "volcano"}).json()["data"]["results"]
            assert [h["conversation_id"] for h in hits] == [cid] and hits[0]["role"] == "user"
            # ... and continues the conversation, which the first server then sees.
            chat(b, "And glaciers?", cid)
        full = httpx.get(f"{a.url}/api/conversations/{cid}").json()["data"]
        assert [m["role"] for m in full["messages"]] == ["user", "assistant", "user", "assistant"]
        assert full["messages"][2]["content"] == "And glaciers?"
        assert all(m["status"] in ("complete", "length") for m in full["messages"])
        assert full["messages"][3]["completion_tokens"] > 0
        hits = httpx.get(a.url + "/api/search", params={"q": "glaciers"}).json()["data"]["results"]
        assert any(h["conversation_id"] == cid for h in hits)
        md = httpx.get(f"{a.url}/api/conversations/{cid}/export", params={"format": "markdown"})
        assert md.status_code == 200 and "# Tell me about volcanoes in Iceland." in md.text


@pytest.mark.parametrize(("url", "says"), [
    ("postgresql://someone:s3cret@127.0.0.1:{port}/chats", "cannot connect to PostgreSQL"),
    ("postgresql://127.0.0.1/chats?bogus=1", "not a usable PostgreSQL URL"),
])
def test_bad_or_unreachable_database_is_a_message(tmp_path, url, says) -> None:
    url = url.format(port=free_port())
    r = subprocess.run([sys.executable, "-m", "nanochat_lite", "serve", "--port", str(free_port()),
                        "--db", url], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and "Traceback" not in r.stderr and "s3cret" not in r.stderr
