"""End to end on Flower's simulation engine: secure rounds, dropouts, and rounds driven on chain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.chain import AnvilProcess
from fl_server.experiment import run_experiment
from tests.fl_server.test_simulation import _cfg, derived_app

pytestmark = pytest.mark.slow

FLAKY_TRAIN = """

@app.train()
def _train(msg: Message, context: Context) -> Message:
    if int(context.node_config["partition-id"]) == 0:
        raise RuntimeError("miner went offline")
    return base.train_handler(msg, context)
"""

GRUMPY_EVALUATE = """
from aggregator import eip712
from aggregator.eip712 import Vote
from aggregator.protocol import SignedVote, VoteRequest
from fl_client.identity import load_identity


@app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    reply = base.evaluate_handler(msg, context)
    config = msg.content["config"]
    request = VoteRequest.from_config(config)
    folder = base.data_folder(config, context)
    marker = folder / "state" / "rejected-once"
    if not marker.exists() and "vote" in reply.content.config_records:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()  # only the first candidate is rejected; its retry is judged honestly
        honest = SignedVote.from_config(reply.content["vote"])
        identity = load_identity(folder, base.keys_folder(folder, context))
        nay = Vote(request.task_id, request.round, request.model_hash, False, honest.vote.accuracyBps, request.attempt)
        signed = SignedVote(identity.address, nay, eip712.sign(request.domain, nay, identity.eth_key),
                            honest.reveal, honest.reveal_signature)
        reply.content["vote"] = ConfigRecord(signed.to_config())
    return reply
"""


def _rows(out: Path) -> list[dict]:
    return json.loads((out / "rounds.json").read_text())


def test_masked_round_with_a_dropped_miner(tmp_path):
    """Miner 0 crashes after being selected: the key is derived for the two that submitted."""
    flaky = derived_app(tmp_path / "app", FLAKY_TRAIN)
    cfg = _cfg(tmp_path / "data", "secagg=masked", "dgc.enabled=true", "dgc.density=0.2")
    summary = run_experiment(cfg, tmp_path / "run", app_dir=flaky)
    rows = _rows(tmp_path / "run")
    assert all(r["selected"] == 3 and r["received"] == 2 for r in rows)
    assert summary["final_accuracy"] > summary["initial_accuracy"] + 0.1
    # 20% of the mlp's 55k coordinates (after warm-up) as 8-byte masked words, far below dense float32
    assert rows[-1]["upload_bytes_per_miner"] < 0.5 * 4 * summary["parameters"]


def test_nddfe_rounds_finalize_on_the_embedded_chain_and_pay_miners(tmp_path):
    cfg = _cfg(tmp_path / "data", "secagg=nddfe", "dgc.enabled=true", "dgc.density=0.05", "chain=embedded")
    summary = run_experiment(cfg, tmp_path / "run")
    rows = _rows(tmp_path / "run")
    assert [r["chain_status"] for r in rows] == ["finalized", "finalized"]
    assert all(r["votes_accept"] == "3/3" and r["reveals"] == 3 and r["rewards_eth"] > 0 for r in rows)
    chain = summary["chain"]
    assert chain["finalized_rounds"] == 2
    assert len(chain["miner_rewards_eth"]) == 3 and all(v > 0 for v in chain["miner_rewards_eth"].values())
    assert summary["final_accuracy"] > summary["initial_accuracy"]


def test_a_rejected_round_is_reverted_and_retried(tmp_path):
    """Every voter rejects the first round-1 candidate: the chain rejects it, the global model stays
    the initial one, and the next attempt re-runs task round 1 (with fresh masks and nonces)."""
    grumpy = derived_app(tmp_path / "app", GRUMPY_EVALUATE, replaced=("evaluate.default",))
    cfg = _cfg(tmp_path / "data", "secagg=masked", "dgc.enabled=true", "dgc.density=0.2", "chain=embedded", "rounds=3")
    summary = run_experiment(cfg, tmp_path / "run", app_dir=grumpy)
    rows = _rows(tmp_path / "run")
    assert rows[0]["chain_status"] == "rejected" and rows[0]["votes_accept"] == "0/3"
    assert rows[0]["accuracy"] == pytest.approx(summary["initial_accuracy"])  # reverted to the last finalized model
    assert rows[0]["rewards_eth"] == 0
    assert [r["chain_status"] for r in rows[1:]] == ["finalized", "finalized"]
    assert summary["chain"]["finalized_rounds"] == 2


@pytest.mark.anvil
def test_secure_rounds_on_anvil(tmp_path):
    if not AnvilProcess.available():
        pytest.skip("anvil binary missing (npm @foundry-rs/anvil)")
    cfg = _cfg(tmp_path / "data", "secagg=masked", "dgc.enabled=true", "dgc.density=0.2", "chain=anvil")
    summary = run_experiment(cfg, tmp_path / "run")
    assert [r["chain_status"] for r in _rows(tmp_path / "run")] == ["finalized", "finalized"]
    assert summary["chain"]["miner_rewards_total_eth"] > 0
