"""Bad settings fail before anything runs: ``python -m fl_server <bad override>`` prints ONE line
``error: ...`` naming the setting and exits with status 2 (no partitions written, no chain touched)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from fl_server.__main__ import CONF_DIR
from fl_server.config_check import ConfigError, check_config

REPO = Path(__file__).resolve().parents[2]


def _cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["rounds=0"], "rounds=0 must be at least 1"),
        (["rounds=-3"], "rounds=-3 must be at least 1"),
        (["num_miners=3", "selection.per_round=4"], "selection.per_round=4 is outside 0..num_miners=3"),
        (["num_miners=3", "selection.min_available=5"], "selection.min_available=5 is outside 0..num_miners=3"),
        (["secagg.backend=rot13"], "secagg.backend='rot13' is unknown"),
        (["chain.backend=ganache"], "chain.backend='ganache' is unknown"),
        (["dgc.density=0"], "dgc.density=0.0 must be in (0, 1]"),
        (["secagg=none", "dgc.enabled=false", "chain=embedded"], "on-chain rounds need commitments"),
        (["resume=true"], "resume=true needs a chain that outlives the server"),
        (["task.train.optimizer=lbfgs"], "task.train.optimizer='lbfgs' is unknown"),
    ],
)
def test_bad_settings_are_refused_with_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        check_config(_cfg(*overrides))


def test_the_defaults_and_the_quick_run_pass():
    check_config(_cfg())
    check_config(_cfg("dataset=digits", "model=mlp", "num_miners=3", "rounds=3", "secagg=none", "chain=none"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rounds=0", "error: rounds=0 must be at least 1"),
        ("selection.per_round=11", "error: selection.per_round=11 is outside 0..num_miners=10"),
        ("selection.min_available=11", "error: selection.min_available=11 is outside 0..num_miners=10"),
        ("secagg.backend=rot13", "error: secagg.backend='rot13' is unknown"),
    ],
)
@pytest.mark.slow  # one Python start per case (a few seconds each on an idle machine)
def test_the_front_door_prints_one_error_line_and_exits_2(tmp_path, override, message):
    cmd = [sys.executable, "-m", "fl_server", override, f"data_root={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert lines == [message + lines[0][len(message):]] and lines[0].startswith(message)
    assert not (tmp_path / "data").exists()  # nothing was prepared
