"""Configuration: defaults, environment over defaults, flags over environment, and a bad
value refused with a message that names the setting (the CLI prints it, exit status 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nanochat_lite.config import FLAG_FIELDS, Config, ConfigError, db_setting, default_home

EMPTY: dict[str, str] = {}


def test_defaults_without_environment(tmp_path: Path) -> None:
    c = Config.load({}, {"XDG_CACHE_HOME": str(tmp_path)})
    assert (c.host, c.port, c.model) == ("127.0.0.1", 8080, "smollm2-135m-instruct")
    assert (c.ctx_size, c.parallel, c.max_queue, c.batch_size) == (4096, 10, 64, 512)
    assert c.kv_size is None and c.seed is None and c.db is None
    assert c.threads >= 1
    assert c.environment == "production"
    assert c.home == tmp_path / "nanochat-lite"
    assert c.db_path == tmp_path / "nanochat-lite" / "conversations.sqlite3"


def test_home_folder() -> None:
    assert default_home({"NANOCHAT_LITE_HOME": "/data/nc"}) == Path("/data/nc")
    assert default_home({"XDG_CACHE_HOME": "/c"}) == Path("/c/nanochat-lite")
    assert default_home({"NANOCHAT_LITE_HOME": "/data/nc", "XDG_CACHE_HOME": "/c"}) == Path("/data/nc")
    assert default_home(EMPTY) == Path.home() / ".cache" / "nanochat-lite"


def test_environment_over_defaults() -> None:
    env = {"HOST": "0.0.0.0", "PORT": "9000", "NANOCHAT_LITE_MODEL": "/m.gguf", "NANOCHAT_LITE_THREADS": "3",
           "NANOCHAT_LITE_CTX": "2048", "NANOCHAT_LITE_PARALLEL": "4", "NANOCHAT_LITE_MAX_QUEUE": "7",
           "NANOCHAT_LITE_HOME": "/h", "NANOCHAT_LITE_DB": "/tmp/x.sqlite3", "NANOCHAT_LITE_ENV": "development"}
    c = Config.load({}, env)
    assert (c.host, c.port, c.model, c.threads, c.ctx_size) == ("0.0.0.0", 9000, "/m.gguf", 3, 2048)
    assert (c.parallel, c.max_queue, c.home, c.db) == (4, 7, Path("/h"), Path("/tmp/x.sqlite3"))
    assert c.environment == "development"
    assert c.env == env  # the snapshot handed to start-up's sub-configurations (API keys)


def test_flags_over_environment() -> None:
    env = {"PORT": "9000", "NANOCHAT_LITE_THREADS": "3", "NANOCHAT_LITE_HOME": "/h", "NANOCHAT_LITE_DB": "/a.db",
           "NANOCHAT_LITE_MODEL": "from-env"}
    flags = {"port": 9100, "threads": 1, "home": "/flag-home", "db": "/b.db", "model": None, "kv_size": 8192,
             "batch_size": 32, "seed": 5, "command": "serve"}
    c = Config.load(flags, env)
    assert (c.port, c.threads, c.home, c.db) == (9100, 1, Path("/flag-home"), Path("/b.db"))
    assert c.model == "from-env"  # a flag left out (None) keeps the environment's value
    assert (c.kv_size, c.batch_size, c.seed) == (8192, 32, 5)


def test_every_flag_field_is_a_config_field() -> None:
    fields = Config.__dataclass_fields__
    assert all(name in fields for name in FLAG_FIELDS)


def test_postgres_url_stays_text() -> None:
    url = "postgresql://u@db.example:5432/chats"
    assert db_setting(url) == url
    assert db_setting("POSTGRES://x/y") == "POSTGRES://x/y"
    assert db_setting("~/c.sqlite3") == Path.home() / "c.sqlite3"
    assert Config.load({"db": url}, EMPTY).db_path == url


@pytest.mark.parametrize("env,needle", [
    ({"PORT": "eighty"}, "PORT='eighty' is not a whole number"),
    ({"NANOCHAT_LITE_THREADS": "2.5"}, "NANOCHAT_LITE_THREADS='2.5' is not a whole number"),
    ({"NANOCHAT_LITE_CTX": "4k"}, "NANOCHAT_LITE_CTX='4k'"),
    ({"NANOCHAT_LITE_THREADS": "0"}, "--threads must be at least 1, got 0"),
    ({"NANOCHAT_LITE_PARALLEL": "65"}, "--parallel must be between 1 and 64"),
    ({"NANOCHAT_LITE_MAX_QUEUE": "-1"}, "--max-queue must be between 0 and 100000"),
    ({"PORT": "70000"}, "--port must be between 0 and 65535"),
])
def test_bad_environment_values(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        Config.load({}, env)
    assert needle in str(e.value)


@pytest.mark.parametrize("flags,needle", [
    ({"ctx_size": 8}, "--ctx-size must be between 16 and 131072 tokens, got 8"),
    ({"ctx_size": 4096, "kv_size": 1024}, "--kv-size (1024) must be at least --ctx-size (4096)"),
    ({"batch_size": 8192}, "--batch-size must be between 16 and 4096"),
    ({"threads": -2}, "--threads must be at least 1, got -2"),
])
def test_bad_flag_values(flags: dict[str, int], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        Config.load(flags, EMPTY)
    assert needle in str(e.value)


def test_a_good_flag_rescues_a_bad_environment_range() -> None:
    # Range checks run on the merged result: the flag wins before anything is checked.
    assert Config.load({"parallel": 2}, {"NANOCHAT_LITE_PARALLEL": "500"}).parallel == 2


def test_cli_prints_a_config_error_without_a_traceback(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "NANOCHAT_LITE_HOME": str(tmp_path), "NANOCHAT_LITE_PARALLEL": "lots"}
    p = subprocess.run([sys.executable, "-m", "nanochat_lite", "models"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.strip() == "nanochat-lite: NANOCHAT_LITE_PARALLEL='lots' is not a whole number"
