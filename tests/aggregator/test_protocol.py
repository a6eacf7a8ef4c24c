import numpy as np
import pytest

from aggregator.dgc import DGCConfig
from aggregator.eip712 import Domain, Reveal, Vote
from aggregator.protocol import ProtocolError, RoundPlan, SignedSubmission, SignedVote, VoteRequest, task_key

DOMAIN = Domain(31337, "0x" + "11" * 20)


def _plan(**kw):
    base = dict(
        task_id=3, round=2, d=50, backend="masked", bits=15, clip=0.5, support=np.array([1, 4, 9]), density=0.06,
        dgc=DGCConfig(density=0.06), publisher_public=b"\2" * 33, aggregator_public=b"\3" * 33, domain=DOMAIN, epoch=5,
    )
    base.update(kw)
    return RoundPlan(**base)


def test_round_plan_round_trips_through_config():
    plan = _plan()
    back = RoundPlan.from_config(plan.to_config())
    assert np.array_equal(back.support, plan.support) and back.support_hash == plan.support_hash
    assert (back.task_id, back.round, back.epoch, back.crypto_round, back.backend) == (3, 2, 5, 5, "masked")
    assert back.task_key == plan.task_key
    mask = back.grad_mask()
    assert mask is not None and mask.sum() == 3 and mask[4] == 1


def test_task_key_separates_tasks_chains_and_publishers():
    keys = {
        task_key(DOMAIN, 1, b"\2" * 33),
        task_key(DOMAIN, 2, b"\2" * 33),
        task_key(Domain(1, DOMAIN.verifying_contract), 1, b"\2" * 33),
        task_key(DOMAIN, 1, b"\4" * 33),
    }
    assert len(keys) == 4


def test_malformed_plans_and_payloads_name_the_field():
    cfg = _plan().to_config()
    del cfg["mm-clip"]
    with pytest.raises(ProtocolError, match="mm-clip"):
        RoundPlan.from_config(cfg)
    cfg = _plan().to_config()
    cfg["mm-support"] = b"\x05\x00\x00\x00\x01\x00\x00\x00"  # not increasing
    with pytest.raises(Exception, match="increasing"):
        RoundPlan.from_config(cfg)
    sub = SignedSubmission("0x" + "22" * 20, 3, 2, b"ct", b"\1" * 32, b"\2" * 65).to_config()
    sub["mm-signature"] = b"short"
    with pytest.raises(ProtocolError, match="65 bytes"):
        SignedSubmission.from_config(sub)


def test_vote_round_trip_with_huge_score():
    request = VoteRequest(3, 2, b"\7" * 32, DOMAIN, 0.02, "abcd")
    assert VoteRequest.from_config(request.to_config()) == request
    vote = Vote(3, 2, b"\7" * 32, True, 9876)
    reveal = Reveal(3, 2, 2**70 + 5, rb"\8" * 32)
    signed = SignedVote("0x" + "33" * 20, vote, b"\1" * 65, reveal, b"\2" * 65)
    assert SignedVote.from_config(signed.to_config()) == signed
