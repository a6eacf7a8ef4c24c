"""One round end to end (rules v2), direct miner actions, access control, windows, reveal faults."""

from __future__ import annotations

from eth_utils import keccak

from contracts.client import FLAG_FAULT, FLAG_OPEN, FLAG_REVEALED, Phase
from contracts.testing import Scenario

from .conftest import reverts

MODEL = keccak(b"candidate")


def _scores(w: Scenario) -> dict[str, int]:
    return {m.address: 100 * (i + 1) for i, m in enumerate(w.miners)}


def _committed(w: Scenario, task: int, scores: dict[str, int] | None = None):  # noqa: ANN202
    round_, attempt, support = w.open(task)
    subs, openings = w.submissions(task, round_, support, scores or _scores(w), attempt=attempt)
    w.client.relay_submissions(w.aggregator, task, round_, attempt, subs)
    return round_, attempt, support, subs, openings


def test_full_round_happy_path(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish(reward_wei=3 * 10**18, rounds=3)
    round_, attempt, support, subs, openings = _committed(w, task)
    rs = c.round_state(task)
    assert (rs["round"], rs["attempt"], rs["phase"], rs["selected"], rs["participants"]) == (1, 1, Phase.COMMIT, 3, 3)
    assert rs["supportHash"] == support
    prop = c.propose(w.aggregator, task, round_, attempt, MODEL)  # all selected committed: no need to wait
    assert prop.event("RoundProposed")["participants"] == 3
    plist = c.participants(task)
    votes = w.votes(task, round_, MODEL, {m.address: True for m in w.miners},
                    {m.address: 8000 + i for i, m in enumerate(w.miners)}, attempt=attempt)
    vres = c.relay_votes(w.aggregator, task, round_, MODEL, votes, plist, attempt)
    assert vres.event("RoundFinalized")["accuracyBps"] == 8001
    assert c.task(task)["modelHash"] == MODEL and c.task(task)["finalizedRounds"] == 1
    rres = c.relay_reveals(w.aggregator, task, round_, w.reveals(task, round_, openings, attempt=attempt), plist, attempt)
    settled = rres.event("RoundSettled")
    per_round = 10**18
    fee, agg = per_round * 200 // 10_000, per_round * 1000 // 10_000
    miners_pool = per_round - fee - agg
    voter_pool = miners_pool * 1000 // 10_000
    assert settled["fee"] == fee and settled["aggregatorShare"] == agg and settled["votersPaid"] == voter_pool // 3 * 3
    assert settled["weightCap"] == 2 * 200  # 2 x median of 100, 200, 300: nobody capped
    score_pool = miners_pool - voter_pool
    for i, m in enumerate(w.miners):
        assert c.pending_rewards(task, m.address) == score_pool * 100 * (i + 1) // 600 + voter_pool // 3
        assert c.miner_round(task, m.address)["flags"] & (FLAG_REVEALED | FLAG_OPEN) == FLAG_REVEALED | FLAG_OPEN
    assert settled["minersPaid"] + settled["votersPaid"] + settled["returned"] == miners_pool
    rs = c.round_state(task)
    assert rs["round"] == 2 and rs["phase"] == Phase.IDLE and c.next_attempt(task) == 2


def test_direct_miner_actions(world: Scenario) -> None:
    """Every miner action works straight from the miner (no relayer)."""
    w, c = world, world.client
    task = w.publish(rounds=2)
    round_, attempt, support = w.open(task)
    subs, openings = w.submissions(task, round_, support, _scores(w), attempt=attempt)
    for m, (msg, _) in zip(w.miners, subs, strict=True):
        c.commit(m, task, round_, attempt, support, msg.ciphertextHash, msg.commitment)
    c.propose(w.aggregator, task, round_, attempt, MODEL)
    plist = c.participants(task)
    for m in w.miners:
        c.vote(m, task, round_, MODEL, True, 7000, plist, attempt)
    assert c.round_state(task)["phase"] == Phase.REVEALING
    for m in w.miners:
        res = c.reveal(m, task, round_, openings[m.address].score, openings[m.address].nonce, plist, attempt)
    assert res.event("RoundSettled")["minersPaid"] > 0


def test_access_control(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish()
    with reverts("NotAggregator"):
        c.open_round(w.publisher, task, 1, 1, keccak(b"s"), [m.address for m in w.miners])
    with reverts("WrongRound"):
        c.open_round(w.aggregator, task, 1, 2, keccak(b"s"), [m.address for m in w.miners])  # skipping an attempt
    with reverts("InvalidParams"):  # fewer than the threshold t = 2
        c.open_round(w.aggregator, task, 1, 1, keccak(b"s"), [w.miners[0].address])
    round_, attempt, _, _, _ = _committed(w, task)
    with reverts("WrongPhase"):
        c.open_round(w.aggregator, task, 1, 2, keccak(b"s"), [m.address for m in w.miners])
    with reverts("NotAggregator"):
        c.propose(w.miners[0], task, round_, attempt, MODEL)
    with reverts("NotPublisher"):
        c.cancel_task(w.aggregator, task)
    with reverts("InvalidParams"):
        c.propose(w.aggregator, task, round_, attempt, b"\0" * 32)


def test_commit_window_and_late_actions(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish()
    round_, attempt, support = w.open(task)
    subs, openings = w.submissions(task, round_, support, _scores(w), attempt=attempt)
    c.relay_submissions(w.aggregator, task, round_, attempt, subs[:2])
    assert c.committed_miners(task, round_, attempt) is None  # window still open
    c.chain.advance_time(3601)
    with reverts("WindowClosed"):
        c.relay_submissions(w.aggregator, task, round_, attempt, subs[2:])
    assert c.committed_miners(task, round_, attempt) == [w.miners[0].address, w.miners[1].address]
    c.propose(w.aggregator, task, round_, attempt, MODEL)
    plist = c.participants(task)
    votes = w.votes(task, round_, MODEL, {m.address: True for m in w.miners[:2]}, {m.address: 1 for m in w.miners[:2]},
                    w.miners[:2], attempt)
    with reverts("WindowOpen"):
        c.finalize(w.aggregator, task)
    c.chain.advance_time(3601)
    with reverts("WindowClosed"):
        c.relay_votes(w.aggregator, task, round_, MODEL, votes, plist, attempt)
    fin = c.finalize(c.chain.funded_account(), task)  # anyone, after the window: 0 accepts -> rejected
    assert fin.event("RoundRejected")["votes"] == 0
    assert c.round_state(task)["phase"] == Phase.IDLE


def test_propose_window_expires_and_the_round_is_retried(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish()
    round_, attempt, _, _, _ = _committed(w, task)
    c.chain.advance_time(3601 + 3601)
    with reverts("WindowClosed"):
        c.propose(w.aggregator, task, round_, attempt, MODEL)
    c.expire(w.miners[0], task)
    r = w.run_round(task, combined=True)
    assert r.attempt == attempt + 1 and r.votes.event("RoundSettled")
    assert not r.votes.all("Slashed")


def test_double_vote_and_double_reveal(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish()
    round_, attempt, _, _, openings = _committed(w, task)
    c.propose(w.aggregator, task, round_, attempt, MODEL)
    plist = c.participants(task)
    one = w.miners[:1]
    votes = w.votes(task, round_, MODEL, {one[0].address: True}, {one[0].address: 1}, one, attempt)
    c.relay_votes(w.aggregator, task, round_, MODEL, votes, plist, attempt)
    with reverts("AlreadyVoted"):
        c.relay_votes(w.aggregator, task, round_, MODEL, votes, plist, attempt)
    rest = w.miners[1:]
    c.relay_votes(w.aggregator, task, round_, MODEL,
                  w.votes(task, round_, MODEL, {m.address: True for m in rest}, {m.address: 1 for m in rest}, rest,
                          attempt), plist, attempt)
    reveal = w.reveals(task, round_, openings, one, attempt)
    c.relay_reveals(w.aggregator, task, round_, reveal, plist, attempt)
    with reverts("AlreadyRevealed"):
        c.relay_reveals(w.aggregator, task, round_, reveal, plist, attempt)


def test_inflated_score_is_a_fault_and_mismatch_is_ignored(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish(quant_bits=4, k=10)  # max score = 10 * 49 = 490
    scores = {w.miners[0].address: 491, w.miners[1].address: 100, w.miners[2].address: 200}
    round_, attempt, _, _, openings = _committed(w, task, scores)
    c.propose(w.aggregator, task, round_, attempt, MODEL)
    plist = c.participants(task)
    c.relay_votes(w.aggregator, task, round_, MODEL,
                  w.votes(task, round_, MODEL, {m.address: True for m in w.miners}, {m.address: 1 for m in w.miners},
                          attempt=attempt), plist, attempt)
    from aggregator.commitments import Opening

    wrong = {**openings, w.miners[1].address: Opening(101, openings[w.miners[1].address].nonce)}
    res = c.relay_reveals(w.aggregator, task, round_, w.reveals(task, round_, wrong, attempt=attempt), plist, attempt)
    invalid = {e["miner"] for e in res.all("RevealInvalid")}
    assert invalid == {w.miners[0].address, w.miners[1].address}
    assert c.miner_round(task, w.miners[0].address)["flags"] & FLAG_FAULT
    assert not c.miner_round(task, w.miners[1].address)["flags"] & FLAG_REVEALED  # may still reveal
    res = c.reveal(w.miners[1], task, round_, 100, openings[w.miners[1].address].nonce, plist, attempt)
    settled = res.event("RoundSettled")
    assert [e["miner"] for e in res.all("Slashed")] == [w.miners[0].address]
    assert settled["minersPaid"] > 0
    voter_share = settled["votersPaid"] // 3
    assert c.pending_rewards(task, w.miners[0].address) == voter_share  # the faulty miner earns no score share
