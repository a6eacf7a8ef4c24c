"""The secure round without Flower: miners' real submissions verified and aggregated by the server."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from aggregator import quantize, secagg
from aggregator.dgc import DGCConfig, DGCState
from aggregator.eip712 import Domain
from aggregator.secagg import AggregatorKeys, PublisherKeys
from fl_client.identity import create_identity
from fl_client.secure_update import build_submission, node_binding
from fl_server.key_service import PublisherKeyService, new_credential
from fl_server.registry import MinerRegistry
from fl_server.secure_aggregation import ReplyRejected, RoundFailed, SecureRound, SecureSettings

D = 400


def make_round(tmp_path, backend: str, n: int = 3, density: float = 0.1, support: str = "shared"):
    folders = [tmp_path / f"m{i}" for i in range(n)]
    identities = [create_identity(f) for f in folders]
    registry = MinerRegistry()
    for identity in identities:  # registration (on chain or via enrollment) publishes (address, P_i)
        registry.register(identity.address, identity.secagg_public)
    publisher, aggregator = PublisherKeys.generate(), AggregatorKeys.generate()
    credential = new_credential()
    service = PublisherKeyService(backend, publisher, credential, registry.key_of)
    dgc = DGCConfig(density=density, warmup_rounds=0, support=support)  # type: ignore[arg-type]
    settings = SecureSettings(backend, 15, 0.5, dgc, 0.5, task_id=7, domain=Domain(31337, "0x" + "00" * 20))
    sr = SecureRound(settings, D, registry, service, credential, publisher.public, aggregator.public)
    return sr, identities, service


def submit(sr, plan, identity, delta, seed=0, node=0):
    """A miner's reply: its submission and its own signature binding it to Flower node ``node``."""
    state = DGCState(D, plan.dgc)
    result = build_submission(delta, plan, identity, state, np.random.default_rng(seed))
    content = RecordDict(
        {
            "submission": ConfigRecord(result.submission.to_config()),
            "binding": ConfigRecord(node_binding(identity, plan, node)),
            "metrics": MetricRecord({"train-loss": 0.1}),
        }
    )
    return result, content


@pytest.mark.parametrize("backend", ["none", "masked", "nddfe"])
def test_aggregate_is_the_mean_of_the_quantized_updates(tmp_path, backend):
    sr, ids, _ = make_round(tmp_path, backend)
    plan = sr.plan(1, b"seed")
    rng = np.random.default_rng(1)
    deltas = [rng.normal(0, 0.1, D).astype(np.float32) for _ in ids]
    accepted = []
    for node, (identity, delta) in enumerate(zip(ids, deltas, strict=True)):
        _, content = submit(sr, plan, identity, delta, seed=node, node=node)
        accepted.append(sr.verify(plan, node, content, {0, 1, 2}))
    mean = sr.aggregate(plan, accepted)
    expected = np.zeros(D)
    expected[plan.support] = np.mean([np.clip(d[plan.support], -0.5, 0.5) for d in deltas], axis=0)
    step = 0.5 / quantize.max_abs(15)
    assert np.abs(mean - expected).max() <= step + 1e-7  # within one quantization step
    assert np.count_nonzero(mean) <= plan.support.size


def test_dropped_miner_costs_nothing(tmp_path):
    sr, ids, service = make_round(tmp_path, "nddfe")
    plan = sr.plan(1, b"seed")
    deltas = [np.full(D, 0.01 * (i + 1), dtype=np.float32) for i in range(3)]
    accepted = [sr.verify(plan, i, submit(sr, plan, ids[i], deltas[i], node=i)[1], {0, 1, 2}) for i in (0, 2)]  # 1 dropped
    mean = sr.aggregate(plan, accepted)
    assert np.allclose(mean[plan.support], 0.02, atol=1e-4)
    issued_set = service.ledger.rows[(7, 1, 1)].members
    assert set(issued_set) == {ids[0].address, ids[2].address}


def test_bad_submissions_are_rejected_with_reasons(tmp_path):
    sr, ids, _ = make_round(tmp_path, "masked")
    plan = sr.plan(3, b"seed")
    delta = np.full(D, 0.01, dtype=np.float32)
    result, content = submit(sr, plan, ids[0], delta)
    with pytest.raises(ReplyRejected, match="not selected"):
        sr.verify(plan, 5, content, {0})
    # tampered ciphertext: the signature no longer matches
    tampered = dict(result.submission.to_config())
    tampered["mm-ciphertext"] = bytes([tampered["mm-ciphertext"][0] ^ 1]) + tampered["mm-ciphertext"][1:]
    with pytest.raises(ReplyRejected, match="signed by"):
        sr.verify(plan, 0, RecordDict({"submission": ConfigRecord(tampered)}), {0})
    # wrong size
    longer = dict(result.submission.to_config())
    longer["mm-ciphertext"] = longer["mm-ciphertext"] + b"\0" * 8
    with pytest.raises(ReplyRejected, match="bytes, expected"):
        sr.verify(plan, 0, RecordDict({"submission": ConfigRecord(longer)}), {0})
    # submission made for another round
    other_plan = sr.plan(4, b"seed")
    _, stale = submit(sr, other_plan, ids[0], delta)
    with pytest.raises(ReplyRejected, match="round 4"):
        sr.verify(plan, 0, stale, {0})
    # plaintext weights instead of a submission
    with pytest.raises(ReplyRejected, match="no submission"):
        sr.verify(plan, 0, RecordDict({"metrics": MetricRecord({"x": 1.0})}), {0})
    # valid once, then a replay
    sr.verify(plan, 0, content, {0})
    with pytest.raises(ReplyRejected, match="replay"):
        sr.verify(plan, 0, content, {0})
    # defect 7 (first relay wins): node 1 relays miner 0's signed submission; the binding is the
    # miner's own signature for node 0, so node 1 cannot claim the miner
    plan5 = sr.plan(5, b"seed")
    _, relayed = submit(sr, plan5, ids[0], delta, node=0)
    with pytest.raises(ReplyRejected, match="binding is signed by"):
        sr.verify(plan5, 1, relayed, {1})
    unbound = RecordDict({"submission": relayed["submission"]})
    with pytest.raises(ReplyRejected, match="no node binding"):
        sr.verify(plan5, 1, unbound, {1})
    # a miner already bound to node 0 that signs for node 1 too is still refused (one node per miner)
    _, moved = submit(sr, plan5, ids[0], delta, node=1)
    with pytest.raises(ReplyRejected, match="already answered from node 0"):
        sr.verify(plan5, 1, moved, {1})


def test_unregistered_miner_is_rejected(tmp_path):
    sr, _, _ = make_round(tmp_path, "none")
    stranger = create_identity(tmp_path / "stranger")
    plan = sr.plan(1, b"seed")
    _, content = submit(sr, plan, stranger, np.zeros(D, dtype=np.float32))
    with pytest.raises(ReplyRejected, match="not registered"):
        sr.verify(plan, 0, content, {0})


def test_server_never_decrypts_an_individual_update(tmp_path, monkeypatch):
    """In masked/nddfe mode the only decryption is one call over the whole set I with I's key."""
    sr, ids, _ = make_round(tmp_path, "masked")
    plan = sr.plan(1, b"seed")
    calls = []
    real = secagg.decrypt_sum

    def spy(backend, ciphertexts, key, n, *args, **kwargs):
        calls.append((backend, len(ciphertexts), n))
        return real(backend, ciphertexts, key, n, *args, **kwargs)

    monkeypatch.setattr(secagg, "decrypt_sum", spy)
    accepted = [
        sr.verify(plan, i, submit(sr, plan, ids[i], np.full(D, 0.01, np.float32), node=i)[1], {0, 1, 2}) for i in range(3)
    ]
    # what the server holds per miner: opaque ciphertext bytes, no float or int vectors of the update
    for a in accepted:
        assert isinstance(a.submission.ciphertext, bytes)
        assert not any(isinstance(v, np.ndarray) and v.dtype.kind == "f" for v in vars(a.submission).values())
    sr.aggregate(plan, accepted)
    assert calls == [("masked", 3, 3)]


def test_local_support_needs_plaintext_and_a_wrong_key_fails_the_round(tmp_path):
    with pytest.raises(ValueError, match="only with secagg=none"):
        make_round(tmp_path / "a", "masked", support="local")
    sr, ids, service = make_round(tmp_path / "b", "masked")
    plan = sr.plan(1, b"seed")
    accepted = [
        sr.verify(plan, i, submit(sr, plan, ids[i], np.full(D, 0.01, np.float32), node=i)[1], {0, 1, 2}) for i in range(3)
    ]
    service.functional_key(service.credential, 7, 1, 1, [ids[0].address, ids[1].address], plan.support)  # another set
    with pytest.raises(RoundFailed, match="another set"):
        sr.aggregate(plan, accepted)
