"""Checkpoint and resume (MISSION C19): atomic single-file checkpoints, integrity on load, and a server
that crashes after round 1 of 3 and is restarted with resume=true applies (and, on chain, pays) every
round exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fl_server.checkpoint import Checkpoint, CheckpointError, CheckpointStore, atomic_write
from fl_server.results import RoundRecord

REPO = Path(__file__).resolve().parents[2]


def _ckpt(round_: int = 2) -> Checkpoint:
    model = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}
    record = RoundRecord(1, 0.5, 1.2, 3.0, 100.0, 3, 3, extra={"chain_status": "finalized", "gas": 7})
    return Checkpoint(round_, model, velocity=np.linspace(0, 1, 9), prev_aggregate=np.full(9, 0.25),
                      chain={"contract": "0x" + "11" * 20, "task_id": 1, "task_round": 3, "epoch": 3,
                             "finalized_rounds": 2, "from_block": 0},
                      records=[record], initial_accuracy=0.1, rejected=1)


def test_checkpoint_round_trips_every_part(tmp_path):
    store = CheckpointStore(tmp_path)
    assert store.load() is None
    store.save(_ckpt())
    back = store.load()
    assert back is not None and back.round == 2 and back.rejected == 1 and back.initial_accuracy == 0.1
    assert torch.equal(back.model["w"], _ckpt().model["w"]) and back.model_hash == _ckpt().model_hash
    assert np.array_equal(back.velocity, np.linspace(0, 1, 9)) and np.array_equal(back.prev_aggregate, np.full(9, 0.25))
    assert back.chain["finalized_rounds"] == 2 and back.records[0].extra["gas"] == 7


def test_a_tampered_or_foreign_checkpoint_is_refused(tmp_path):
    data = bytearray(_ckpt().to_bytes())
    data[-1] ^= 0xFF  # flip a bit of the last tensor (the model's hash no longer matches)
    with pytest.raises(CheckpointError):
        Checkpoint.from_bytes(bytes(data))
    import pickle

    with pytest.raises(CheckpointError):
        Checkpoint.from_bytes(pickle.dumps({"round": 3}))


def test_a_crash_during_the_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save(_ckpt(1))

    def crash(*_a, **_k):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.save(_ckpt(2))
    monkeypatch.undo()
    assert store.load().round == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]  # no torn temporary left


def test_atomic_write_sets_the_mode(tmp_path):
    atomic_write(tmp_path / "s.json", b"{}", mode=0o600)
    assert (tmp_path / "s.json").stat().st_mode & 0o777 == 0o600


def _fl_server(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "fl_server", "dataset=digits", "model=mlp", "num_miners=3", "rounds=3",
        f"data_root={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}", *extra,
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)


def _assert_each_round_once(run: Path) -> dict:
    rows = json.loads((run / "rounds.json").read_text())
    assert [r["round"] for r in rows] == [1, 2, 3]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_round"] == 1 and summary["rounds"] == 3
    final = CheckpointStore(run / "checkpoint").load()
    assert final.round == 3 and "0x" + final.model_hash.hex() == summary["final_model_hash"]
    return summary


@pytest.mark.slow
def test_crash_after_round_1_then_resume_applies_rounds_once(tmp_path):
    plain = ("secagg=none", "dgc.enabled=false", "chain=none", "strategy.server_momentum=0.5")
    crashed = _fl_server(tmp_path, *plain, "debug.crash_after_round=1")
    assert crashed.returncode == 1 and "simulated server crash" in crashed.stderr, crashed.stderr[-3000:]
    after_crash = json.loads((tmp_path / "run" / "rounds.json").read_text())
    assert [r["round"] for r in after_crash] == [1]
    saved = CheckpointStore(tmp_path / "run" / "checkpoint").load()
    assert saved.round == 1 and saved.velocity is not None  # the server momentum is part of the state
    resumed = _fl_server(tmp_path, *plain, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: from the checkpoint of round 1" in resumed.stdout
    rows = json.loads((tmp_path / "run" / "rounds.json").read_text())
    assert rows[0] == after_crash[0]  # round 1 was not run again
    _assert_each_round_once(tmp_path / "run")


@pytest.mark.slow
@pytest.mark.anvil
def test_on_chain_resume_finalizes_and_pays_each_round_once(tmp_path):
    from contracts.chain import AnvilProcess, Chain, ChainConfig
    from contracts.client import ModelMineClient

    if not AnvilProcess.available():
        pytest.skip("anvil binary not installed (npm @foundry-rs/anvil)")
    with AnvilProcess() as anvil:
        chain = ("secagg=masked", "dgc.density=0.1", "chain=anvil", f"chain.rpc_url={anvil.url}", "chain.start_anvil=false",
                 "++chain.dev_chain=true")
        crashed = _fl_server(tmp_path, *chain, "debug.crash_after_round=1")
        assert crashed.returncode == 1 and "simulated server crash" in crashed.stderr, crashed.stderr[-3000:]
        position = CheckpointStore(tmp_path / "run" / "checkpoint").load().chain
        assert position["finalized_rounds"] == 1
        resumed = _fl_server(tmp_path, *chain, "resume=true")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        summary = _assert_each_round_once(tmp_path / "run")
        client = ModelMineClient(Chain(ChainConfig.from_mapping({"backend": "rpc", "rpc_url": anvil.url})), position["contract"])
        task = client.task(position["task_id"])
        assert int(task["finalizedRounds"]) == 3
        rows = json.loads((tmp_path / "run" / "rounds.json").read_text())
        assert [r["chain_status"] for r in rows] == ["finalized"] * 3
        assert summary["chain"]["finalized_rounds"] == 3  # each round finalized (and paid) exactly once
        assert all(v > 0 for v in summary["chain"]["miner_rewards_eth"].values())
