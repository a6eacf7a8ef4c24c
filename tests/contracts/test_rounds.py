"""One round end to end, access control, replays, late actions, reveals and slashing."""

from __future__ import annotations

import pytest
from eth_utils import keccak

from aggregator import commitments, eip712
from contracts.chain import ContractRevertError
from contracts.client import FLAG_FAULT, FLAG_REVEALED, Phase, compact_signature
from contracts.testing import Scenario

from .conftest import reverts

MODEL = keccak(b"candidate")
SUPPORT = keccak(b"support")


def _scores(w: Scenario) -> dict[str, int]:
    return {m.address: 100 * (i + 1) for i, m in enumerate(w.miners)}


def _propose(w: Scenario, task: int, round_: int = 1, model: bytes = MODEL):
    subs, openings = w.submissions(task, round_, SUPPORT, _scores(w))
    res = w.client.propose(w.aggregator, task, round_, model, SUPPORT, 1000, subs)
    plist = [(m.address, msg.commitment) for m, (msg, _) in zip(w.miners, subs, strict=True)]
    return res, subs, openings, plist


def _all_vote(w: Scenario, task: int, plist, accept: bool = True, round_: int = 1, model: bytes = MODEL):
    votes = w.votes(task, round_, model, {m.address: accept for m in w.miners},
                    {m.address: 8000 + i for i, m in enumerate(w.miners)})
    return w.client.relay_votes(w.aggregator, task, round_, model, votes, plist)


def test_full_round_happy_path(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish(reward_wei=3 * 10**18, rounds=3)
    res, subs, openings, plist = _propose(w, task)
    assert len(res.all("Committed")) == 3
    assert res.event("RoundProposed")["participants"] == 3
    assert c.participants(task) == [(a, bytes(x)) for a, x in plist]
    rs = c.round_state(task)
    assert rs["phase"] == Phase.VOTING and rs["k"] == 1000

    vres = _all_vote(w, task, plist)
    fin = vres.event("RoundFinalized")
    assert fin["accuracyBps"] == 8001  # median of 8000, 8001, 8002
    assert c.task(task)["modelHash"] == MODEL and c.task(task)["finalizedRounds"] == 1

    rres = c.relay_reveals(w.aggregator, task, 1, w.reveals(task, 1, openings))
    settled = rres.event("RoundSettled")
    per_round = 10**18
    fee, agg = per_round * 200 // 10_000, per_round * 1000 // 10_000
    assert settled["fee"] == fee and settled["aggregatorShare"] == agg
    pool = per_round - fee - agg
    total = 600
    for i, m in enumerate(w.miners):
        assert c.owed(m.address, [task]) == pool * 100 * (i + 1) // total
        assert c.pending_rewards(task, m.address) == c.owed(m.address, [task])
    assert settled["minersPaid"] + settled["returned"] == pool
    rs = c.round_state(task)
    assert rs["round"] == 2 and rs["phase"] == Phase.COMMIT


def test_direct_miner_actions(world: Scenario) -> None:
    """Every miner action works straight from the miner too (no relayer)."""
    w, c = world, world.client
    task = w.publish(rounds=2)
    openings = {}
    for i, m in enumerate(w.miners):
        op = commitments.Opening(10 + i, commitments.new_nonce())
        openings[m.address] = op
        c.commit(m, task, 1, SUPPORT, keccak(b"ct"), commitments.commitment(op.score, op.nonce, task, 1, m.address))
    c.propose(w.aggregator, task, 1, MODEL, SUPPORT, 5)
    plist = c.participants(task)
    for m in w.miners:
        c.vote(m, task, 1, MODEL, True, 7000, plist)
    assert c.round_state(task)["phase"] == Phase.REVEALING
    for m in w.miners:
        op = openings[m.address]
        res = c.reveal(m, task, 1, op.score, op.nonce, plist)
    assert res.event("RoundSettled")["minersPaid"] > 0


def test_access_control(world: Scenario, client) -> None:  # noqa: ANN001
    w, c = world, client
    task = w.publish()
    subs, _ = w.submissions(task, 1, SUPPORT, _scores(w))
    with reverts("NotAggregator"):
        c.propose(w.miners[0], task, 1, MODEL, SUPPORT, 10, subs)
    with reverts("NotPublisher"):
        c.cancel_task(w.aggregator, task)
    spec_nonce = b"\x01" * 32
    with reverts("NotPublisher"):
        c.reveal_target(w.miners[0], task, 9000, spec_nonce)
    with reverts("OwnableUnauthorizedAccount"):
        c.chain.transact(c.contract.functions.pause(), w.miners[0])
    # a registered miner that is not a participant cannot vote
    _, subs, openings, plist = _propose(w, task)
    outsider = c.chain.funded_account()
    from contracts.testing import compressed_pubkey

    c.register_miner(outsider, compressed_pubkey(outsider))
    v = eip712.Vote(task, 1, MODEL, True, 5000)
    sig = eip712.sign(c.domain, v, outsider.key)
    with reverts("NotParticipant"):
        c.chain.transact(c.contract.functions.voteBatch(task, 1, MODEL, plist, [(0, True, 5000, *compact_signature(sig))]),
                         w.aggregator)
    with reverts("NotParticipant"):
        c.chain.transact(c.contract.functions.vote(task, 1, MODEL, True, 5000, plist, 0), outsider)
    # once proposed, the commit phase is over for everyone
    with reverts("WrongPhase"):
        c.commit(outsider, task, 1, SUPPORT, keccak(b"x"), keccak(b"y"))
    # a malformed signature in a relayed batch
    with reverts("ECDSAInvalidSignature"):
        c.chain.transact(c.contract.functions.voteBatch(task, 1, MODEL, plist, [(0, True, 5000, b"\0" * 32, b"\0" * 32)]),
                         w.aggregator)


def test_unregistered_cannot_commit(world: Scenario) -> None:
    c = world.client
    task = world.publish()
    stranger = c.chain.funded_account()
    with reverts("NotRegistered"):
        c.commit(stranger, task, 1, SUPPORT, keccak(b"x"), keccak(b"y"))


def test_double_vote_and_double_reveal(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish()
    _, subs, openings, plist = _propose(w, task)
    first = w.votes(task, 1, MODEL, {m.address: True for m in w.miners}, {m.address: 9000 for m in w.miners})
    c.relay_votes(w.aggregator, task, 1, MODEL, first[:1], plist)
    with reverts("AlreadyVoted"):
        c.relay_votes(w.aggregator, task, 1, MODEL, first[:1], plist)  # same signature resubmitted
    with reverts("AlreadyVoted"):
        c.vote(w.miners[0], task, 1, MODEL, False, 1, plist)
    c.relay_votes(w.aggregator, task, 1, MODEL, first[1:], plist)
    m0 = w.miners[0]
    op = openings[m0.address]
    c.reveal(m0, task, 1, op.score, op.nonce, plist)
    with reverts("AlreadyRevealed"):
        c.reveal(m0, task, 1, op.score, op.nonce, plist)
    with reverts("AlreadyRevealed"):
        c.relay_reveals(w.aggregator, task, 1, w.reveals(task, 1, openings, [m0]), plist)


def test_reveal_mismatch_direct_reverts_and_batch_ignores_then_slashes(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish(round_window_s=100)
    _, subs, openings, plist = _propose(w, task)
    _all_vote(w, task, plist)
    m0, m1 = w.miners[0], w.miners[1]
    with reverts("RevealMismatch"):
        c.reveal(m0, task, 1, openings[m0.address].score + 1, openings[m0.address].nonce, plist)
    bad = {**openings, m1.address: commitments.Opening(openings[m1.address].score + 5, openings[m1.address].nonce)}
    stake_before = c.miner(m1.address)["stake"]
    res = c.relay_reveals(w.aggregator, task, 1, w.reveals(task, 1, bad), plist)
    # a non-opening signed reveal proves nothing (it could be stale): skipped, not a fault
    assert [e["miner"] for e in res.all("RevealInvalid")] == [m1.address]
    assert not c.miner_round(task, m1.address)["flags"] & (FLAG_FAULT | FLAG_REVEALED)
    assert c.round_state(task)["phase"] == Phase.REVEALING
    # m1 never opens its commitment: slashed 10% at settlement, paid nothing
    c.chain.advance_time(101)
    res = c.settle(w.aggregator, task)
    assert res.event("Slashed")["miner"] == m1.address
    assert c.miner(m1.address)["stake"] == stake_before - stake_before // 10
    assert c.owed(m1.address, [task]) == 0 and c.owed(m0.address, [task]) > 0


def test_inflated_score_rejected(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish(quant_bits=4)  # q = 7: max score = k * 49
    k = 10
    cap = k * 49
    scores = {m.address: 5 for m in w.miners}
    scores[w.miners[2].address] = cap + 1  # committed honestly to an impossible score
    subs, openings = w.submissions(task, 1, SUPPORT, scores)
    c.propose(w.aggregator, task, 1, MODEL, SUPPORT, k, subs)
    assert c.max_score(task) == cap
    plist = c.participants(task)
    _all_vote(w, task, plist)
    m2 = w.miners[2]
    with reverts("ScoreTooLarge"):
        c.reveal(m2, task, 1, cap + 1, openings[m2.address].nonce, plist)
    stake = c.miner(m2.address)["stake"]
    res = c.relay_reveals(w.aggregator, task, 1, w.reveals(task, 1, openings), plist)
    assert [e["miner"] for e in res.all("RevealInvalid")] == [m2.address]
    assert res.event("Slashed")["miner"] == m2.address  # a provable fault: settled at once, slashed
    assert c.miner(m2.address)["stake"] == stake - stake // 10
    assert c.owed(m2.address, [task]) == 0
    settled = res.event("RoundSettled")
    owed0, owed1 = c.owed(w.miners[0].address, [task]), c.owed(w.miners[1].address, [task])
    assert owed0 == owed1 == settled["minersPaid"] // 2


def test_late_actions(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish(round_window_s=100)
    _, subs, openings, plist = _propose(w, task)
    with reverts("WindowOpen"):
        c.finalize(w.aggregator, task)
    votes = w.votes(task, 1, MODEL, {m.address: True for m in w.miners}, {m.address: 9000 for m in w.miners})
    c.relay_votes(w.aggregator, task, 1, MODEL, votes[:2], plist)
    c.chain.advance_time(101)
    with reverts("WindowClosed"):
        c.relay_votes(w.aggregator, task, 1, MODEL, votes[2:], plist)
    c.finalize(w.aggregator, task)  # 2 of 3 accepted >= 50%
    reveals = w.reveals(task, 1, openings)
    c.relay_reveals(w.aggregator, task, 1, reveals[:2], plist)
    with reverts("WindowOpen"):
        c.settle(w.aggregator, task)
    c.chain.advance_time(101)
    with reverts("WindowClosed"):
        c.relay_reveals(w.aggregator, task, 1, reveals[2:], plist)
    late = w.miners[2]
    stake = c.miner(late.address)["stake"]
    res = c.settle(w.aggregator, task)
    assert res.event("Slashed")["miner"] == late.address
    assert c.miner(late.address)["stake"] == stake - stake // 10
    # commits after the task deadline
    c.chain.advance_time(8 * 24 * 3600)
    with reverts("DeadlinePassed"):
        c.commit(w.miners[0], task, 2, SUPPORT, keccak(b"x"), keccak(b"y"))


def test_wrong_round_and_model(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish()
    subs, _ = w.submissions(task, 2, SUPPORT, _scores(w))
    with reverts("WrongRound"):
        c.propose(w.aggregator, task, 2, MODEL, SUPPORT, 10, subs)
    _, subs, openings, plist = _propose(w, task)
    votes = w.votes(task, 1, keccak(b"other"), {m.address: True for m in w.miners}, {m.address: 1 for m in w.miners})
    with reverts("ModelMismatch"):
        c.relay_votes(w.aggregator, task, 1, keccak(b"other"), votes, plist)
    with reverts("ParticipantsMismatch"):
        c.relay_votes(w.aggregator, task, 1, MODEL, [], plist[:2])


def test_replayed_and_foreign_signatures(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish()
    other_task = w.publish()
    subs, openings = w.submissions(task, 1, SUPPORT, _scores(w))
    c.relay_submissions(w.aggregator, task, 1, SUPPORT, subs[:1])
    # the same signed submission again
    with reverts("AlreadyCommitted"):
        c.relay_submissions(w.aggregator, task, 1, SUPPORT, subs[:1])
    # a signature for task A relayed into task B: recovers a different (unregistered) signer
    msg, sig = subs[1]
    r, vs = compact_signature(sig)
    with pytest.raises(ContractRevertError) as info:
        c.chain.transact(c.contract.functions.commitBatch(other_task, 1, SUPPORT, [(msg.ciphertextHash, msg.commitment, r, vs)]),
                         w.aggregator)
    assert info.value.name == "NotRegistered" and info.value.args_decoded[0] != w.miners[1].address
    # a signature made for another chain id
    foreign = eip712.Domain(chain_id=c.domain.chain_id + 1, verifying_contract=c.address)
    fsig = eip712.sign(foreign, msg, w.miners[1].key)
    with reverts("NotRegistered"):
        c.chain.transact(c.contract.functions.commitBatch(task, 1, SUPPORT,
                                                          [(msg.ciphertextHash, msg.commitment, *compact_signature(fsig))]),
                         w.aggregator)
    # the relayer alters the commitment: the signature no longer matches the miner
    with reverts("NotRegistered"):
        c.chain.transact(c.contract.functions.commitBatch(task, 1, SUPPORT, [(msg.ciphertextHash, keccak(b"forged"), r, vs)]),
                         w.aggregator)
    # a vote signed for another round
    c.propose(w.aggregator, task, 1, MODEL, SUPPORT, 10, subs[1:])
    plist = c.participants(task)
    v2 = eip712.Vote(task, 2, MODEL, True, 9000)
    s2 = eip712.sign(c.domain, v2, w.miners[0].key)
    with reverts("NotParticipant"):
        c.chain.transact(c.contract.functions.voteBatch(task, 1, MODEL, plist, [(0, True, 9000, *compact_signature(s2))]),
                         w.aggregator)


def test_rejected_round_is_retried_and_old_submission_replay_refused(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish()
    initial = c.task(task)["modelHash"]
    _, subs, openings, plist = _propose(w, task)
    res = _all_vote(w, task, plist, accept=False)
    rej = res.event("RoundRejected")
    assert rej["round"] == 1 and rej["accepts"] == 0
    rs = c.round_state(task)
    assert rs["round"] == 1 and rs["phase"] == Phase.COMMIT and rs["epoch"] == 2
    assert c.task(task)["modelHash"] == initial  # retried from the last finalized model
    assert c.task(task)["finalizedRounds"] == 0
    with reverts("SignatureReplayed"):
        c.relay_submissions(w.aggregator, task, 1, SUPPORT, subs[:1])
    result = w.run_round(task, 1)
    assert result.votes.event("RoundFinalized")["round"] == 1
    assert c.round_state(task)["round"] == 2


def test_early_rejection_and_finalize_by_anyone(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish(quorum_bps=10_000)
    _, subs, openings, plist = _propose(w, task)
    votes = w.votes(task, 1, MODEL, {m.address: False for m in w.miners}, {m.address: 1 for m in w.miners})
    c.relay_votes(w.aggregator, task, 1, MODEL, votes[:1], plist)
    res = c.finalize(w.miners[2], task)  # unanimity impossible after one rejection
    assert res.event("RoundRejected")["votes"] == 1


def test_revealed_flags(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish()
    _, subs, openings, plist = _propose(w, task)
    _all_vote(w, task, plist)
    m0 = w.miners[0]
    c.reveal(m0, task, 1, openings[m0.address].score, openings[m0.address].nonce, plist)
    mr = c.miner_round(task, m0.address)
    assert mr["flags"] & FLAG_REVEALED and mr["score"] == openings[m0.address].score
