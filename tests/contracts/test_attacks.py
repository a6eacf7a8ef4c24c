"""Issue 10: one test per defect, named after it. Each performs the attack on the real contract (py-evm)
and asserts that it now fails."""

from __future__ import annotations

from dataclasses import replace

import pytest
from eth_utils import keccak

from aggregator import eip712
from contracts.client import (
    FLAG_REVEALED,
    ModelMineClient,
    Phase,
    RoundSettingsMismatch,
    check_round_settings,
    compact_signature,
)
from contracts.testing import Scenario, compressed_pubkey

from .conftest import reverts

MODEL = keccak(b"candidate")


def _open_commit(w: Scenario, task: int, scores: dict[str, int], miners=None, relay=None):  # noqa: ANN001, ANN202
    """Open the next attempt for ``miners`` and relay the submissions of ``relay`` (default: all)."""
    miners = miners or w.miners
    round_, attempt, support = w.open(task, miners)
    subs, openings = w.submissions(task, round_, support, scores, miners, attempt)
    chosen = [s for s, m in zip(subs, miners, strict=True) if relay is None or m in relay]
    if chosen:
        w.client.relay_submissions(w.aggregator, task, round_, attempt, chosen)
    return round_, attempt, support, subs, openings


def _pay(c: ModelMineClient, task: int, miner: str) -> int:
    return c.pending_rewards(task, miner)


def test_aggregator_cannot_set_score_cap_after_commitments(world: Scenario) -> None:
    """Defect 1: k and the quantization are fixed at publish; propose takes no k; an honest miner at
    the task's maximum score is paid, never slashed; a plan with another k or bits is refused."""
    w, c = world, world.client
    task = w.publish(k=1000, quant_bits=4)  # q = 7: cap = 1000 * 49
    cap = 1000 * 49
    assert c.max_score(task) == cap
    propose_abi = next(i for i in c.abi if i.get("name") == "propose")
    assert [i["name"] for i in propose_abi["inputs"]] == ["taskId", "round", "attempt", "modelHash"]
    scores = {w.miners[0].address: cap, w.miners[1].address: 10, w.miners[2].address: 20}
    round_, attempt, _, subs, openings = _open_commit(w, task, scores)
    c.propose(w.aggregator, task, round_, attempt, MODEL)
    assert c.max_score(task) == cap  # nothing the aggregator did changed the cap
    stake = c.miner(w.miners[0].address)["stake"]
    plist = [(m.address, s[0].commitment) for m, s in zip(w.miners, subs, strict=True)]
    votes = w.votes(task, round_, MODEL, {m.address: True for m in w.miners}, {m.address: 9000 for m in w.miners},
                    attempt=attempt)
    res = c.relay_votes_and_reveals(w.aggregator, task, round_, MODEL, votes,
                                    w.reveals(task, round_, openings, attempt=attempt), plist, attempt)
    assert res.event("RoundSettled") and not res.all("Slashed")
    assert c.miner(w.miners[0].address)["stake"] == stake
    assert c.miner_round(task, w.miners[0].address)["flags"] & FLAG_REVEALED
    settings = c.task(task)
    check_round_settings(settings, backend="masked", bits=4, clip=0.5, support_mode="shared", support_size=1000)
    with pytest.raises(RoundSettingsMismatch, match="support size"):
        check_round_settings(settings, backend="masked", bits=4, clip=0.5, support_mode="shared", support_size=1001)
    with pytest.raises(RoundSettingsMismatch, match="bits"):
        check_round_settings(settings, backend="masked", bits=8, clip=0.5, support_mode="shared", support_size=10)


def test_aggregator_cannot_exclude_committed_miners_or_drop_their_reveals(world: Scenario) -> None:
    """Defect 2: the honest miner the aggregator censors commits, votes and reveals itself; it is a
    participant whatever the aggregator proposes, and it is paid. A sybil the aggregator did not select
    on chain cannot join, and the aggregator cannot cut the commit window short."""
    w, c = world, world.client
    honest, sybils = w.miners[2], w.miners[:2]
    task = w.publish()
    scores = {m.address: 500 for m in w.miners}
    round_, attempt, support, subs, openings = _open_commit(w, task, scores, relay=sybils)
    with reverts("WindowOpen"):  # the honest miner has not committed yet and the window is open
        c.propose(w.aggregator, task, round_, attempt, MODEL)
    outsider = c.chain.funded_account()
    c.register_miner(outsider, compressed_pubkey(outsider))
    with pytest.raises(Exception, match="skipped"):  # not selected on chain: the commit does not count
        c.commit(outsider, task, round_, attempt, support, keccak(b"x"), keccak(b"y"))
    c.commit(honest, task, round_, attempt, support, subs[2][0].ciphertextHash, subs[2][0].commitment)
    assert c.committed_miners(task, round_, attempt) == [m.address for m in (*sybils, honest)]
    c.propose(w.aggregator, task, round_, attempt, MODEL)
    assert c.round_state(task)["participants"] == 3
    plist = c.participants(task)
    # the aggregator relays only its sybils' votes and reveals; the honest miner acts directly
    votes = w.votes(task, round_, MODEL, {m.address: True for m in sybils}, {m.address: 9000 for m in sybils},
                    sybils, attempt)
    c.relay_votes(w.aggregator, task, round_, MODEL, votes, plist, attempt)
    c.vote(honest, task, round_, MODEL, True, 9000, plist, attempt)
    assert c.round_state(task)["phase"] == Phase.REVEALING
    c.relay_reveals(w.aggregator, task, round_, w.reveals(task, round_, openings, sybils, attempt), plist, attempt)
    res = c.reveal(honest, task, round_, scores[honest.address], openings[honest.address].nonce, plist, attempt)
    assert res.event("RoundSettled")
    assert _pay(c, task, honest.address) == _pay(c, task, sybils[0].address) > 0


def test_self_reported_max_score_gets_at_most_bounded_share(client: ModelMineClient) -> None:
    """Defect 3: 9 honest miners and 1 revealing the task's maximum score. With weight =
    min(score, 2 x median revealed score) the cheat gets at most its bounded share (2 x the median
    honest weight), not ~97% of the pool."""
    w = Scenario(client, 10)
    task = w.publish(k=1000, voter_share_bps=0)
    cheat = w.miners[9]
    honest_scores = [900, 950, 1000, 1020, 1040, 1060, 1080, 1100, 1200]
    scores = {m.address: s for m, s in zip(w.miners, honest_scores, strict=False)}
    scores[cheat.address] = client.max_score(task)
    r = w.run_round(task, scores=scores, combined=True)
    settled = r.votes.event("RoundSettled")
    median = sorted(scores.values())[(10 - 1) // 2]  # lower median of the 10 revealed scores
    assert settled["weightCap"] == 2 * median
    paid = {m.address: client.pending_rewards(task, m.address) for m in w.miners}
    pool = settled["minersPaid"] + settled["returned"]
    total_weight = sum(min(s, 2 * median) for s in scores.values())
    assert paid[cheat.address] == pool * 2 * median // total_weight
    assert paid[cheat.address] <= 2 * max(paid[m.address] for m in w.miners[:9])
    assert paid[cheat.address] < pool * 20 // 100  # before the fix: ~97%


def test_publisher_cannot_cancel_after_the_work(world: Scenario) -> None:
    """Defect 4: cancelling while the round is in voting (quorum reached) refunds only the rounds never
    started; the started round finalizes and settles, and its miners are paid."""
    w, c = world, world.client
    task = w.publish(reward_wei=3 * 10**18, rounds=3)
    scores = {m.address: 100 * (i + 1) for i, m in enumerate(w.miners)}
    round_, attempt, _, subs, openings = _open_commit(w, task, scores)
    c.propose(w.aggregator, task, round_, attempt, MODEL)
    plist = c.participants(task)
    two = w.miners[:2]
    c.relay_votes(w.aggregator, task, round_, MODEL,
                  w.votes(task, round_, MODEL, {m.address: True for m in two}, {m.address: 8000 for m in two}, two,
                          attempt), plist, attempt)
    cancel = c.cancel_task(w.publisher, task)
    assert cancel.event("TaskCancelled")["refund"] == 2 * 10**18  # rounds 2 and 3 only
    assert c.escrow(task) == 10**18
    with reverts("TaskNotActive"):
        w.open(task)
    c.chain.advance_time(3601)
    c.finalize(w.aggregator, task)  # 2/3 accepted, quorum 50%
    res = c.relay_reveals(w.aggregator, task, round_, w.reveals(task, round_, openings, attempt=attempt), plist, attempt)
    settled = res.event("RoundSettled")
    assert settled["minersPaid"] > 0
    assert all(c.pending_rewards(task, m.address) > 0 for m in w.miners)
    assert c.escrow(task) == 0


@pytest.mark.slow
def test_settlement_with_512_voters_is_linear_and_always_succeeds(fast_client: ModelMineClient) -> None:
    """Defect 5: 512 voters with adversarial (all distinct, alternating) accuracies: finalize (the
    timeout path, by anyone) stays under 10M gas, and settle with 512 reveals succeeds."""
    client = fast_client
    n = 512
    w = Scenario(client, n)
    task = w.publish(k=10**6)
    scores = {m.address: 1000 + (i * 7919) % 5000 for i, m in enumerate(w.miners)}
    round_, attempt, support = w.open(task)
    subs, openings = w.submissions(task, round_, support, scores, attempt=attempt)
    for i in range(0, n, 128):
        client.relay_submissions(w.aggregator, task, round_, attempt, subs[i:i + 128])
    client.propose(w.aggregator, task, round_, attempt, MODEL)
    plist = [(m.address, s[0].commitment) for m, s in zip(w.miners, subs, strict=True)]
    accuracy = {m.address: (10_000 - i) if i % 2 else i for i, m in enumerate(w.miners)}
    voters = w.miners[:-1]  # one silent voter: finalize is the timeout path
    votes = w.votes(task, round_, MODEL, {m.address: True for m in voters}, accuracy, voters, attempt)
    for i in range(0, len(votes), 128):
        client.relay_votes(w.aggregator, task, round_, MODEL, votes[i:i + 128], plist, attempt)
    client.chain.advance_time(3601)
    fin = client.finalize(client.chain.funded_account(), task)
    assert fin.event("RoundFinalized")["accuracyBps"] == sorted(accuracy[m.address] for m in voters)[(n - 2) // 2]
    assert fin.gas_used < 10_000_000, fin.gas_used
    reveals = w.reveals(task, round_, openings, attempt=attempt)
    for i in range(0, n - 128, 128):
        client.relay_reveals(w.aggregator, task, round_, reveals[i:i + 128], plist, attempt)
    last = client.relay_reveals(w.aggregator, task, round_, reveals[n - 128:], plist, attempt)
    assert last.event("RoundSettled") and last.gas_used < 30_000_000


def test_stake_cannot_be_withdrawn_before_the_round_settles(world: Scenario) -> None:
    """Defect 6: a miner that committed requests unstake and waits out unbonding; withdrawing reverts
    OpenRounds until its round settles; settlement slashes it (no reveal) and only then it withdraws."""
    w, c = world, world.client
    task = w.publish(round_window_s=7200)  # longer than the 1 h unbonding period
    scores = {m.address: 100 for m in w.miners}
    round_, attempt, _, subs, openings = _open_commit(w, task, scores)
    c.propose(w.aggregator, task, round_, attempt, MODEL)
    plist = c.participants(task)
    runner = w.miners[0]
    c.request_unstake(runner)
    c.chain.advance_time(3601)
    with reverts("OpenRounds"):
        c.withdraw_stake(runner)
    c.relay_votes(w.aggregator, task, round_, MODEL,
                  w.votes(task, round_, MODEL, {m.address: True for m in w.miners},
                          {m.address: 8000 for m in w.miners}, attempt=attempt), plist, attempt)
    with reverts("OpenRounds"):  # finalized, reveal window open: still locked
        c.withdraw_stake(runner)
    others = w.miners[1:]
    c.relay_reveals(w.aggregator, task, round_, w.reveals(task, round_, openings, others, attempt), plist, attempt)
    c.chain.advance_time(7201)
    stake = c.miner(runner.address)["stake"]
    res = c.settle(w.aggregator, task, plist)
    slashed = res.event("Slashed")
    assert slashed["miner"] == runner.address and slashed["amount"] == stake // 10
    before = c.chain.balance(runner.address)
    tx = c.withdraw_stake(runner)
    assert tx.event("StakeWithdrawn")["amount"] == stake - stake // 10
    assert c.chain.balance(runner.address) > before


def test_submission_replay_across_retries_fails(world: Scenario) -> None:
    """Defect 7: the victim's signed submission of a rejected attempt, replayed into the retry, does not
    commit it (the attempt is signed), so it cannot be slashed for a commitment it never made."""
    w, c = world, world.client
    task = w.publish()
    scores = {m.address: 100 for m in w.miners}
    round_, a1, _, subs, _ = _open_commit(w, task, scores)
    c.propose(w.aggregator, task, round_, a1, MODEL)
    plist = c.participants(task)
    res = c.relay_votes(w.aggregator, task, round_, MODEL,
                        w.votes(task, round_, MODEL, {m.address: False for m in w.miners},
                                {m.address: 1000 for m in w.miners}, attempt=a1), plist, a1)
    assert res.event("RoundRejected")
    victim = w.miners[0]
    others = w.miners[1:]
    round2, a2, support2 = w.open(task)
    assert (round2, a2) == (round_, a1 + 1)
    old_msg, old_sig = subs[0]
    with pytest.raises(ValueError, match="attempt"):  # the client refuses it outright
        c.relay_submissions(w.aggregator, task, round2, a2, [(old_msg, old_sig)])
    r, vs = compact_signature(old_sig)  # straight to the contract
    fn = c.contract.functions.commitBatch(task, round2, a2, [(old_msg.ciphertextHash, old_msg.commitment, r, vs)])
    replay = c._tx(fn, w.aggregator)
    assert not replay.all("Committed")
    assert c.miner_round(task, victim.address)["attempt"] == a1
    subs2, openings2 = w.submissions(task, round2, support2, scores, others, a2)
    c.relay_submissions(w.aggregator, task, round2, a2, subs2)
    c.chain.advance_time(3601)
    c.propose(w.aggregator, task, round2, a2, MODEL)
    plist2 = c.participants(task)
    assert victim.address not in [m for m, _ in plist2]
    stake = c.miner(victim.address)["stake"]
    c.relay_votes_and_reveals(w.aggregator, task, round2, MODEL,
                              w.votes(task, round2, MODEL, {m.address: True for m in others},
                                      {m.address: 9000 for m in others}, others, a2),
                              w.reveals(task, round2, openings2, others, a2), plist2, a2)
    assert c.miner(victim.address)["stake"] == stake  # never slashed


def test_vote_replay_across_retries_fails(world: Scenario) -> None:
    """Defect 8: a participant's signed reject vote of attempt 1 replayed into attempt 2 with the same
    candidate hash is refused (the attempt is signed)."""
    w, c = world, world.client
    task = w.publish()
    scores = {m.address: 100 for m in w.miners}
    round_, a1, _, _, _ = _open_commit(w, task, scores)
    c.propose(w.aggregator, task, round_, a1, MODEL)
    plist = c.participants(task)
    old_votes = w.votes(task, round_, MODEL, {m.address: False for m in w.miners},
                        {m.address: 1000 for m in w.miners}, attempt=a1)
    assert c.relay_votes(w.aggregator, task, round_, MODEL, old_votes, plist, a1).event("RoundRejected")
    round2, a2, _, _, _ = _open_commit(w, task, scores)
    c.propose(w.aggregator, task, round2, a2, MODEL)  # same candidate hash again
    plist2 = c.participants(task)
    with pytest.raises(ValueError, match="attempt"):
        c.relay_votes(w.aggregator, task, round2, MODEL, old_votes[:1], plist2, a2)
    msg, sig = old_votes[0]
    item = (0, msg.accept, msg.accuracyBps, *compact_signature(sig))
    fn = c.contract.functions.voteRevealBatch(task, round2, a2, MODEL, plist2, [item], [])
    with reverts("NotParticipant"):
        c._tx(fn, w.aggregator)
    assert c.round_state(task)["votes"] == 0


def test_front_running_and_free_riding_fail(world: Scenario) -> None:
    """Defect 9: the support hash is the aggregator's (openRound); a front-runner that copies the
    aggregator's batch cannot make it revert; a participant that does not vote forfeits its voter share."""
    w, c = world, world.client
    task = w.publish(voter_share_bps=3000)
    scores = {m.address: 100 for m in w.miners}
    round_, attempt, support = w.open(task)
    assert c.round_state(task)["supportHash"] == support
    subs, openings = w.submissions(task, round_, support, scores, attempt=attempt)
    griefer = c.chain.funded_account()
    front = c.relay_submissions(griefer, task, round_, attempt, subs)  # copies the pending batch
    assert len(front.all("Committed")) == 3
    again = c.relay_submissions(w.aggregator, task, round_, attempt, subs)  # the aggregator's own: no revert
    assert not again.all("Committed") and c.round_state(task)["participants"] == 3
    assert c.round_state(task)["supportHash"] == support
    bad_support = keccak(b"griefer support")
    foreign, _ = w.submissions(task, round_, bad_support, scores, attempt=attempt)
    with pytest.raises(ValueError, match="support"):
        c.relay_submissions(griefer, task, round_, attempt, foreign)
    c.propose(w.aggregator, task, round_, attempt, MODEL)
    plist = c.participants(task)
    free_rider = w.miners[2]
    voters = w.miners[:2]
    c.relay_votes(w.aggregator, task, round_, MODEL,
                  w.votes(task, round_, MODEL, {m.address: True for m in voters}, {m.address: 8000 for m in voters},
                          voters, attempt), plist, attempt)
    c.chain.advance_time(3601)
    c.finalize(griefer, task)
    res = c.relay_reveals(w.aggregator, task, round_, w.reveals(task, round_, openings, attempt=attempt), plist, attempt)
    settled = res.event("RoundSettled")
    per_voter = settled["votersPaid"] // 2
    assert per_voter > 0
    paid = {m.address: c.pending_rewards(task, m.address) for m in w.miners}
    assert paid[voters[0].address] == paid[free_rider.address] + per_voter


def test_parameters_bounded_and_owner_changes_apply_to_new_tasks_only(world: Scenario) -> None:
    """Defect 10: unbounded windows and a 100% slash are refused; an owner raising slashBps mid-round
    does not change the running task, whose miners are slashed at the 10% snapshotted at publish."""
    w, c = world, world.client
    owner = w.publisher  # deploy a contract whose owner we hold
    own = ModelMineClient.deploy(c.chain, owner, treasury=owner.address)
    f = own.contract.functions
    with reverts("InvalidParams"):
        own._tx(f.setNetworkParams(200, 10**15, 10_000, 3600), owner)
    with reverts("InvalidParams"):
        own._tx(f.setNetworkParams(5000, 10**15, 1000, 3600), owner)
    with reverts("InvalidParams"):
        own._tx(f.setNetworkParams(200, 10**15, 1000, 10**9), owner)
    w2 = Scenario(own, 3)
    spec, _ = w2.spec()
    for bad in (dict(round_window_s=10**9), dict(round_window_s=5), dict(commit_window_s=0), dict(quorum_bps=100),
                dict(aggregator_share_bps=9000), dict(voter_share_bps=9000), dict(threshold=1), dict(k=0),
                dict(rounds=10**6), dict(deadline=own.chain.timestamp() + 10 * 365 * 86400)):
        with reverts("InvalidParams"):
            own.publish_task(w2.publisher, replace(spec, **bad), 10**18)
    task = w2.publish()
    scores = {m.address: 100 for m in w2.miners}
    round_, attempt, _, subs, openings = _open_commit(w2, task, scores)
    own.propose(w2.aggregator, task, round_, attempt, MODEL)
    own._tx(f.setNetworkParams(1000, 10**15, 5000, 3600), owner)  # raise slash to the 50% bound mid-round
    assert own.task(task)["slashBps"] == 1000 and own.task(task)["feeBps"] == 200
    plist = own.participants(task)
    own.relay_votes(w2.aggregator, task, round_, MODEL,
                    w2.votes(task, round_, MODEL, {m.address: True for m in w2.miners},
                             {m.address: 8000 for m in w2.miners}, attempt=attempt), plist, attempt)
    own.chain.advance_time(3601)
    silent = w2.miners[0]
    stake = own.miner(silent.address)["stake"]
    res = own.settle(w2.aggregator, task, plist)
    assert res.event("Slashed")["amount"] == stake * 1000 // 10_000
    assert res.event("RoundSettled")["fee"] == 10**18 // 3 * 200 // 10_000
    new_task = w2.publish()
    assert own.task(new_task)["slashBps"] == 5000


def test_relayed_registration_credits_the_miner(client: ModelMineClient) -> None:
    """registerFor: the relayer pays the stake, the miner's signature binds its key, the stake is the
    miner's (only it can withdraw); a tampered key or a replayed signature is refused."""
    chain = client.chain
    relayer, miner = chain.funded_account(), chain.funded_account()
    key = compressed_pubkey(miner)
    deadline = chain.timestamp() + 86_400
    msg = client.registration_message(miner.address, key, deadline)
    sig = eip712.sign(client.domain, msg, miner.key)
    with reverts("BadSignature"):
        client.register_for(relayer, miner.address, key[:-1] + bytes([key[-1] ^ 1]), deadline, sig, 10**16)
    client.register_for(relayer, miner.address, key, deadline, sig, 10**16)
    rec = client.miner(miner.address)
    assert rec["registered"] and rec["stake"] == 10**16
    assert client.chain.call(client.contract.functions.minerKey(miner.address)) == key
    client.request_unstake(miner)
    with reverts("NotRegistered"):  # the relayer has no miner record: it cannot take the stake
        client.withdraw_stake(relayer, [])
    chain.advance_time(3601)
    client.withdraw_stake(miner, [])
    with reverts("BadSignature"):  # the nonce moved on: the old signature cannot re-register the miner
        client.register_for(relayer, miner.address, key, deadline, sig, 10**16)
    chain.advance_time(86_400)
    fresh = client.registration_message(miner.address, key, deadline)
    with reverts("SignatureExpired"):
        client.register_for(relayer, miner.address, key, deadline, eip712.sign(client.domain, fresh, miner.key), 10**16)
