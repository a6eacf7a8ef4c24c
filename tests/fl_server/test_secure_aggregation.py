"""The secure round without Flower: miners' real submissions verified and aggregated by the server."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from aggregator import eip712, quantize, secagg
from aggregator.dgc import DGCConfig, DGCState
from aggregator.eip712 import Domain
from aggregator.key_issuer import reply_tag
from aggregator.protocol import SignedSubmission
from aggregator.secagg import AggregatorKeys, PublisherKeys
from fl_client.identity import create_identity
from fl_client.secure_update import build_submission, node_binding
from fl_server.key_service import KeyServiceUnavailable, PublisherKeyService, RemoteKeyService, new_credential
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



def test_defect7_a_relay_cannot_claim_a_miner(tmp_path):
    """First relay no longer wins: node 1 relays miner 0's signed submission, but the binding is the
    miner's own signature for node 0, so node 1 cannot claim the miner (nor can it omit the binding)."""
    sr, ids, _ = make_round(tmp_path, "masked")
    delta = np.full(D, 0.01, dtype=np.float32)
    plan5 = sr.plan(5, b"seed")
    _, relayed = submit(sr, plan5, ids[0], delta, node=0)
    with pytest.raises(ReplyRejected, match="binding is signed by"):
        sr.verify(plan5, 1, relayed, {1})
    unbound = RecordDict({"submission": relayed["submission"]})
    with pytest.raises(ReplyRejected, match="no node binding"):
        sr.verify(plan5, 1, unbound, {1})
    sr.verify(plan5, 0, relayed, {0})  # from its own node the same reply is accepted
    # a miner bound to node 0 that signs for node 1 too is still refused (one node per miner)
    plan6 = sr.plan(6, b"seed")
    _, moved = submit(sr, plan6, ids[0], delta, node=1)
    with pytest.raises(ReplyRejected, match="already answered from node 0"):
        sr.verify(plan6, 1, moved, {1})


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


def _off_curve(ciphertext: bytes) -> bytes:
    """An NDD-FE ciphertext whose first point has an x coordinate with no point on secp256k1."""
    from aggregator.bsgs import PointError, parse_point

    k = int.from_bytes(ciphertext[4:8], "little")
    offset = 8 + (k + 7) // 8
    for x in range(5, 1000):
        try:
            parse_point(bytes([2]) + x.to_bytes(32, "big"))
        except PointError:
            return ciphertext[:offset] + x.to_bytes(32, "big") + ciphertext[offset + 32 :]
    raise AssertionError("no off-curve x found")


def test_defect5_an_off_curve_point_drops_only_that_miner(tmp_path):
    """Miner 1 signs a ciphertext with an off-curve point: verify names it by address and drops it;
    the round still aggregates miners 0 and 2."""
    sr, ids, _ = make_round(tmp_path, "nddfe")
    plan = sr.plan(1, b"seed")
    deltas = [np.full(D, 0.01 * (i + 1), dtype=np.float32) for i in range(3)]
    accepted = []
    for i in range(3):
        result, content = submit(sr, plan, ids[i], deltas[i], node=i)
        if i == 1:  # the malicious miner re-signs its bad ciphertext: the signature is valid
            bad = SignedSubmission(**{**result.submission.__dict__, "ciphertext": _off_curve(result.submission.ciphertext)})
            signature = eip712.sign(plan.domain, bad.message(plan.support_hash), ids[1].eth_key)
            bad = SignedSubmission(**{**bad.__dict__, "signature": signature})
            content = RecordDict({"submission": ConfigRecord(bad.to_config()), "binding": content["binding"]})
            with pytest.raises(ReplyRejected, match=f"{ids[1].address}.*not a point on secp256k1"):
                sr.verify(plan, i, content, {0, 1, 2})
            continue
        accepted.append(sr.verify(plan, i, content, {0, 1, 2}))
    mean = sr.aggregate(plan, accepted)
    assert np.allclose(mean[plan.support], 0.02, atol=1e-4)


def test_defect2_fewer_submitters_than_the_threshold_are_never_decrypted(tmp_path):
    sr, ids, service = make_round(tmp_path, "masked")
    plan = sr.plan(1, b"seed")
    one = [sr.verify(plan, 0, submit(sr, plan, ids[0], np.full(D, 0.01, np.float32))[1], {0})]
    with pytest.raises(RoundFailed, match="threshold t=2"):
        sr.aggregate(plan, one)
    assert not service.ledger.rows  # the key service was never even asked


class FlakyKeyService:
    """Unavailable ``failures`` times, then the real in-process service."""

    def __init__(self, inner, failures: int, error: Exception) -> None:
        self.inner, self.failures, self.error, self.calls = inner, failures, error, 0

    def functional_key(self, *args):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.inner.functional_key(*args)


def _quick_retries(sr, deadline: float = 1.0) -> None:
    sr.settings = dataclasses.replace(sr.settings, key_deadline_s=deadline, key_backoff_s=0.05)


def _three(sr, ids, plan):
    return [sr.verify(plan, i, submit(sr, plan, ids[i], np.full(D, 0.01, np.float32), node=i)[1], {0, 1, 2}) for i in range(3)]


def test_defect6_a_key_service_outage_is_retried_within_the_deadline(tmp_path):
    sr, ids, service = make_round(tmp_path, "masked")
    _quick_retries(sr, deadline=5.0)
    sr.key_service = FlakyKeyService(service, 2, KeyServiceUnavailable("connection refused"))
    plan = sr.plan(1, b"seed")
    mean = sr.aggregate(plan, _three(sr, ids, plan))
    assert sr.key_service.calls == 3 and np.allclose(mean[plan.support], 0.01, atol=1e-4)


@pytest.mark.parametrize("failure", ["down", "timeout", "400", "refused"])
def test_defect6_key_service_down_timing_out_or_400_fails_the_round_not_the_run(tmp_path, failure):
    """The service is down (connection refused), never answers (read timeout), answers 400 without a
    valid reply tag, or refuses (403): each becomes RoundFailed, which the strategy turns into a
    failed round (model unchanged) followed by the next attempt."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    sr, ids, _ = make_round(tmp_path, "masked")
    _quick_retries(sr)
    server = None
    if failure == "down":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again: nothing listens there
    else:
        class Bad(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                if failure == "timeout":
                    time.sleep(2)
                    return
                status = 400 if failure == "400" else 403
                body = b"malformed request"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if failure == "refused":  # a genuine refusal, authenticated for this request
                    self.send_header("X-MM-Reply-Auth", reply_tag(sr.credential, self.headers["X-MM-Auth"], status, body))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", 0), Bad)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
    sr.key_service = RemoteKeyService(f"http://127.0.0.1:{port}", sr.credential, timeout=0.3)
    plan = sr.plan(1, b"seed")
    try:
        expected = "refused" if failure == "refused" else "unavailable after"
        with pytest.raises(RoundFailed, match=expected):
            sr.aggregate(plan, _three(sr, ids, plan))
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


def test_the_published_spec_is_what_the_plan_carries_and_must_match_the_settings(tmp_path):
    """Deployment: the plan carries the publisher's spec (whose hash is on chain) verbatim; a server
    whose settings differ from it fails before any miner is asked."""
    sr, _, _ = make_round(tmp_path, "masked")
    published = dataclasses.replace(sr.task_spec, dataset="digits", epochs=2)  # publisher-only fields
    sr2 = dataclasses.replace(sr, published_spec=published)
    assert sr2.plan(1, b"seed").task_spec == published.to_canonical_json()
    wrong = dataclasses.replace(sr, published_spec=dataclasses.replace(published, bits=8))
    with pytest.raises(ValueError, match="plan field 'bits' differs from the task"):
        wrong.plan(1, b"seed")
