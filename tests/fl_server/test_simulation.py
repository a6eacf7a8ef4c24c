"""End to end: real Flower simulation engine, real training on real (tiny) data."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from hydra import compose, initialize_config_dir

from fl_client.app import train_handler
from fl_server.__main__ import CONF_DIR
from fl_server.experiment import run_experiment

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _cfg(root: Path, *overrides: str):
    """A tiny run (digits, mlp, 3 miners, 2 rounds) in plaintext without chain unless overridden."""
    settings = {
        "dataset": "digits", "model": "mlp", "num_miners": "3", "rounds": "2", "data_root": str(root),
        "secagg": "none", "dgc.enabled": "false", "chain": "none",
    }
    settings.update(o.split("=", 1) for o in overrides)
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose(config_name="config", overrides=[f"{k}={v}" for k, v in settings.items()])


def test_federated_training_improves_the_global_model(tmp_path):
    out = tmp_path / "run"
    summary = run_experiment(_cfg(tmp_path / "data"), out)
    assert summary["final_accuracy"] > summary["initial_accuracy"] + 0.2
    with open(out / "rounds.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [1, 2]
    for col in ("accuracy", "loss", "round_seconds", "upload_bytes_per_miner", "selected"):
        assert col in rows[0]
    assert all(int(r["selected"]) == 3 and int(r["received"]) == 3 for r in rows)
    saved = json.loads((out / "summary.json").read_text())
    for key in ("final_accuracy", "rounds", "wall_seconds", "peak_rss_mb"):
        assert key in saved
    assert (out / "accuracy.png").stat().st_size > 1000 and (out / "loss.png").exists()


def test_a_miner_sending_nan_is_rejected_and_the_round_goes_on(tmp_path):
    evil = ClientApp()

    @evil.train()
    def _train(msg: Message, context: Context) -> Message:
        reply = train_handler(msg, context)
        if int(context.node_config["partition-id"]) == 0:
            state = reply.content["arrays"].to_torch_state_dict()
            for tensor in state.values():
                tensor.fill_(float("nan"))
            metrics = MetricRecord(dict(reply.content["metrics"]))
            reply = Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)
        return reply

    summary = run_experiment(_cfg(tmp_path / "data"), tmp_path / "run", client_app=evil)
    assert summary["rejected_replies"] == 2  # one per round
    rows = json.loads((tmp_path / "run" / "rounds.json").read_text())
    assert all(r["received"] == 2 and r["selected"] == 3 for r in rows)
    assert np.isfinite(summary["final_accuracy"]) and summary["final_accuracy"] > summary["initial_accuracy"]


def test_multirun_writes_one_table_across_runs(tmp_path):
    cmd = [
        sys.executable, "-m", "fl_server", "--multirun", "dataset=digits", "model=mlp", "num_miners=2", "rounds=1",
        "secagg=none", "dgc.enabled=false", "chain=none",
        "dataset.partition=iid,dirichlet", f"data_root={tmp_path / 'data'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "sweep" / "multirun_summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    assert {r["overrides"].split("dataset.partition=")[1].split()[0] for r in rows} == {"iid", "dirichlet"}
    assert (tmp_path / "sweep" / "multirun_accuracy.png").exists()
