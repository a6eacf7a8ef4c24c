"""End to end through the supported runtime: `python -m fl_server` / run_experiment start a simulation
SuperLink and `flwr run` the project's Flower App (fl_server.app:app + fl_client.app:app); real
training on real (tiny) data; the ServerApp's records come back through the run folder."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from fl_server.__main__ import CONF_DIR
from fl_server.data_prep import PartitionConfig, miner_dir, prepare
from fl_server.experiment import run_experiment

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _overrides(root: Path, *extra: str) -> list[str]:
    """A tiny run (digits, mlp, 3 miners, 2 rounds) in plaintext without chain unless overridden."""
    settings = {
        "dataset": "digits", "model": "mlp", "num_miners": "3", "rounds": "2", "data_root": str(root),
        "secagg": "none", "dgc.enabled": "false", "chain": "none",
    }
    settings.update(o.split("=", 1) for o in extra)
    return [f"{k}={v}" for k, v in settings.items()]


def _compose(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose(config_name="config", overrides=overrides)


def _cfg(root: Path, *extra: str):
    """The composed config of :func:`_overrides` (run_experiment derives the overrides back from it)."""
    return _compose(_overrides(root, *extra))


APP_PYPROJECT = (
    '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
    '[project]\nname = "testminer"\nversion = "0.1.0"\ndescription = "test"\nlicense = "MIT"\n\n'
    '[tool.flwr.app]\npublisher = "test"\n\n[tool.flwr.app.components]\n'
    'serverapp = "fl_server.app:app"\nclientapp = "custom_client:app"\n\n'
    '[tool.flwr.app.config]\noverrides = ""\nrun-dir = ""\n'
)
DERIVED_HEADER = """
import fl_client.app as base
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()
# every ModelMine handler (registration, secure stages, ...) except the ones this module replaces
app._registered_funcs.update({k: v for k, v in base.app._registered_funcs.items() if k not in REPLACED})
"""


def derived_app(folder: Path, body: str, replaced: tuple[str, ...] = ("train.default",)) -> Path:
    """A Flower App (same ServerApp) whose ClientApp is ModelMine's with the handlers in ``replaced``
    swapped for those that ``body`` registers on ``app`` (tests put misbehaving miners in a federation)."""
    folder.mkdir(parents=True)
    (folder / "custom_client.py").write_text(f"REPLACED = {replaced!r}\n" + DERIVED_HEADER + body)
    (folder / "pyproject.toml").write_text(APP_PYPROJECT)
    return folder


def test_federated_training_improves_the_global_model(tmp_path):
    out = tmp_path / "run"
    overrides = _overrides(tmp_path / "data")
    summary = run_experiment(_compose(overrides), out, overrides=overrides)
    assert summary["final_accuracy"] > summary["initial_accuracy"] + 0.2
    with open(out / "rounds.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [1, 2]
    for col in ("accuracy", "loss", "round_seconds", "upload_bytes_per_miner", "selected"):
        assert col in rows[0]
    assert all(int(r["selected"]) == 3 and int(r["received"]) == 3 for r in rows)
    saved = json.loads((out / "summary.json").read_text())
    for key in ("final_accuracy", "rounds", "wall_seconds", "peak_rss_mb", "final_model_hash"):
        assert key in saved
    assert saved["config"]["num_miners"] == 3 and saved["config"]["dataset"]["name"] == "digits"
    assert (out / "accuracy.png").stat().st_size > 1000 and (out / "loss.png").exists()
    assert (out / "checkpoint" / "checkpoint.safetensors").exists()
    keys = sorted(p.name for p in (tmp_path / "data").rglob("keys"))  # each miner made its own keys
    assert len(keys) == 3


EVIL_TRAIN = """

@app.train()
def _train(msg: Message, context: Context) -> Message:
    reply = base.train_handler(msg, context)
    if int(context.node_config["partition-id"]) == 0:
        state = reply.content["arrays"].to_torch_state_dict()
        for tensor in state.values():
            tensor.fill_(float("nan"))
        metrics = MetricRecord(dict(reply.content["metrics"]))
        reply = Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)
    return reply
"""


def test_a_miner_sending_nan_is_rejected_and_the_round_goes_on(tmp_path):
    overrides = _overrides(tmp_path / "data")
    summary = run_experiment(_compose(overrides), tmp_path / "run", overrides=overrides,
                             app_dir=derived_app(tmp_path / "app", EVIL_TRAIN))
    assert summary["rejected_replies"] == 2  # one per round
    rows = json.loads((tmp_path / "run" / "rounds.json").read_text())
    assert all(r["received"] == 2 and r["selected"] == 3 for r in rows)
    assert np.isfinite(summary["final_accuracy"]) and summary["final_accuracy"] > summary["initial_accuracy"]


def test_a_malformed_miner_key_stops_the_run_naming_the_file(tmp_path):
    root = tmp_path / "data"
    part = PartitionConfig(dataset="digits", num_miners=2, partition="iid", seed=42)
    prepare(root, part)
    keys = miner_dir(root, part, 1) / "keys"
    keys.mkdir(mode=0o700)
    for name in ("eth.key", "secagg.key"):
        (keys / name).write_text("ab" * 31 + "c")  # 63 hex digits: refused, never read as another key
        (keys / name).chmod(0o600)
    cmd = [sys.executable, "-m", "fl_server", *_overrides(root, "num_miners=2", "rounds=1"), f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stderr[-3000:]
    error = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert len(error) == 1 and str(keys / "eth.key") in error[0] and "64 hex digits" in error[0], done.stderr[-3000:]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_multirun_writes_one_table_across_runs(tmp_path):
    cmd = [
        sys.executable, "-m", "fl_server", "--multirun", "dataset=digits", "model=mlp", "num_miners=2", "rounds=1",
        "secagg=none", "dgc.enabled=false", "chain=none",
        "dataset.partition=iid,dirichlet", f"data_root={tmp_path / 'data'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "sweep" / "multirun_summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    assert {r["overrides"].split("dataset.partition=")[1].split()[0] for r in rows} == {"iid", "dirichlet"}
    assert (tmp_path / "sweep" / "multirun_accuracy.png").exists()
