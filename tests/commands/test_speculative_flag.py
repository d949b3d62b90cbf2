"""`--speculative MODE` / NANOCHAT_LITE_SPECULATIVE: a mode the engine does not offer, or one the
batch cannot hold for every slot, is refused before anything loads, with a message that names
the modes or says which setting to change; the engine reads the same list of modes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nanochat_lite.config import SPECULATIVE_MODES, Config, ConfigError
from nanochat_lite.engines import local


def test_config_offers_the_engines_modes():
    assert SPECULATIVE_MODES == local.SPECULATIVE_MODES
    assert SPECULATIVE_MODES[0] == "off"


def test_flag_and_environment_choose_the_mode():
    assert Config.load({}, env={}).speculative == "off"
    assert Config.load({}, env={"NANOCHAT_LITE_SPECULATIVE": "ngram-map-k"}).speculative == "ngram-map-k"
    chosen = Config.load({"speculative": "ngram-simple"}, env={"NANOCHAT_LITE_SPECULATIVE": "ngram-map-k"})
    assert chosen.speculative == "ngram-simple"  # the flag over the environment


def test_an_unknown_mode_from_the_environment_names_the_modes():
    with pytest.raises(ConfigError) as e:
        Config.load({}, env={"NANOCHAT_LITE_SPECULATIVE": "ngram-mod"})
    message = str(e.value)
    assert "'ngram-mod'" in message and "NANOCHAT_LITE_SPECULATIVE" in message
    assert all(mode in message for mode in SPECULATIVE_MODES), message


@pytest.mark.parametrize(("batch", "parallel", "ok"), [(64, 32, True), (64, 33, False), (16, 10, False),
                                                       (512, 64, True)])
def test_speculation_needs_two_batch_tokens_per_slot(batch, parallel, ok):
    flags = {"speculative": "ngram-simple", "batch_size": batch, "parallel": parallel}
    if ok:
        Config.load(flags, env={})
        return
    with pytest.raises(ConfigError, match=rf"--batch-size \({batch}\) to {2 * parallel} or lower --parallel"):
        Config.load(flags, env={})
    Config.load({**flags, "speculative": "off"}, env={})  # without speculation the same sizes are fine


def test_the_cli_refuses_a_bad_mode_naming_the_modes(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nanochat_lite", "serve", "--speculative", "lookahead",
                           "--port", "0"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--speculative" in proc.stderr and "'lookahead'" in proc.stderr, proc.stderr
    assert all(mode in proc.stderr for mode in SPECULATIVE_MODES), proc.stderr


def test_the_cli_refuses_a_bad_mode_from_the_environment(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NANOCHAT_LITE_SPECULATIVE": "on"}
    proc = subprocess.run([sys.executable, "-m", "nanochat_lite", "serve", "--port", "0"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "NANOCHAT_LITE_SPECULATIVE" in proc.stderr and "ngram-simple" in proc.stderr, proc.stderr
