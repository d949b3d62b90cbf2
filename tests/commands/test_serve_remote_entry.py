"""`serve --model A --engine openai:URL`: the registry start-up builds (serve_models.
build_registry) holds the local model first (the default) and the upstream as one more
entry, named by the model it is asked for, apart from a local one of the same name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fakes import FakeEngine

from nanochat_lite.commands.serve_models import build_registry, remote_name
from nanochat_lite.config import Config
from nanochat_lite.engines.openai_client import Upstream
from nanochat_lite.engines.scheduler import Scheduler

URL = "http://127.0.0.1:8011/v1"


@dataclass
class Engine(FakeEngine):
    """A fake engine with what start-up reads of a real one (prompts, shared prefix,
    close); with `up`, of a remote one (its upstream and health)."""

    up: Upstream | None = None
    closed: bool = False
    state: str = "ok"

    @property
    def prompts(self) -> Engine:
        return self

    def shared_prefix(self) -> list[int]:
        return []

    def describe_cache(self) -> int:
        return 0

    @property
    def upstream(self) -> Upstream:
        assert self.up is not None
        return self.up

    def health(self) -> dict[str, Any]:
        return {"engine": "openai", "url": URL, "state": self.state, "error": None if self.state == "ok" else
                f"the engine upstream at {URL} cannot be reached"}

    def close(self) -> None:
        self.closed = True


def built(tmp_path: Path, remote: Engine) -> Any:
    first = tmp_path / "local.gguf"
    first.write_bytes(b"GGUF")
    config = Config.load({"model": [str(first)], "engine": f"openai:{URL}", "home": str(tmp_path)}, env={})
    local = Engine(name="local")
    return build_registry(config, (first, "local"), [], local, Scheduler(local), None, remote)


def test_the_upstream_is_one_more_entry_after_the_default(tmp_path: Path) -> None:
    remote = Engine(name="llama3", up=Upstream.parse(URL))
    reg = built(tmp_path, remote)
    rows = {r["name"]: r for r in reg.describe()}
    assert list(rows) == ["local", "llama3"] and reg.default == "local" and reg.budget_bytes is None
    assert rows["llama3"]["status"] == "loaded" and rows["llama3"]["upstream"] == URL
    assert rows["llama3"]["memory_bytes"] is None and rows["llama3"]["size_bytes"] is None
    assert reg.loaded_memory() == rows["local"]["memory_bytes"]  # the upstream adds nothing
    remote.state = "unreachable"
    row = next(r for r in reg.describe() if r["name"] == "llama3")
    assert row["status"] == "error" and URL in row["error"]
    entry, loaded = reg.acquire("llama3")  # adopted: never loaded here
    assert loaded.prompts is remote
    reg.release(entry)
    reg.close()
    assert remote.closed


def test_an_upstream_serving_a_model_of_the_same_name_is_told_apart_by_its_address(tmp_path: Path) -> None:
    remote = Engine(name="local", up=Upstream.parse(URL))
    assert remote_name(remote, ["local", "other"]) == "local@127.0.0.1:8011"
    assert remote_name(remote, ["other"]) == "local"
    reg = built(tmp_path, remote)
    assert reg.names == ["local", "local@127.0.0.1:8011"]
    reg.close()


def test_engine_first_with_a_models_dir_names_the_upstream_by_its_model(tmp_path: Path) -> None:
    """--engine without --model: the upstream stays the default; beside --models-dir files its
    entry has the name its answers carry (not the placeholder "upstream")."""
    config = Config.load({"engine": f"openai:{URL}", "models_dir": str(tmp_path), "home": str(tmp_path)}, env={})
    assert config.engine_first
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")
    remote = Engine(name="llama3", up=Upstream.parse(URL))
    reg = build_registry(config, (None, "upstream"), [(other, "other")], remote, Scheduler(remote), None)
    assert reg.names == ["llama3", "other"] and reg.default == "llama3"
    assert reg.describe()[0]["upstream"] == URL and reg.describe()[1]["status"] == "unusable"
    reg.close()
