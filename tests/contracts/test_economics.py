"""Escrow accounting to the wei over a whole task (a rejected round, a slashed non-revealer), early
completion, expiry, pause, admin parameters and reentrancy on claim (rules v2)."""

from __future__ import annotations

from eth_utils import keccak

from contracts.build_info import load_artifact
from contracts.client import SECAGG_BACKEND_IDS, ModelMineClient, Phase, TaskStatus, target_commitment
from contracts.testing import Scenario, compressed_pubkey

from .conftest import reverts


def _claim_all(c: ModelMineClient, accounts, task_ids=()) -> int:  # noqa: ANN001
    total = 0
    for a in accounts:
        if c.owed(a.address, task_ids) > 0:
            total += c.claim(a, task_ids)
    return total


def test_full_task_three_rounds_with_a_rejected_round_accounts_to_the_wei(client: ModelMineClient) -> None:
    c = client
    w = Scenario(c, 4, stake_wei=10**16)
    treasury = c.chain.call(c.contract.functions.treasury())
    pool = 10**18 + 7  # not divisible by 3: dust goes back to the publisher
    spec, nonce = w.spec(rounds=3, target_bps=9900)
    task, _ = c.publish_task(w.publisher, spec, pool)
    assert c.chain.balance(c.address) == pool + 4 * 10**16
    w.run_round(task, accuracy_bps=7000)
    w.run_round(task, accept=False)  # rejected: retried under a new attempt
    assert c.round_state(task)["round"] == 2 and c.round_state(task)["attempt"] == 2
    w.run_round(task, accuracy_bps=8000)
    last = w.run_round(task, accuracy_bps=8500, reveal=False)  # one miner will not reveal
    assert last.votes.event("TaskCompleted")["finalizedRounds"] == 3
    plist = c.participants(task)
    c.relay_reveals(w.aggregator, task, 3, w.reveals(task, 3, last.openings, w.miners[:3], last.attempt), plist,
                    last.attempt)
    c.chain.advance_time(spec.round_window_s + 1)
    res = c.settle(w.aggregator, task)
    assert res.event("Slashed")["miner"] == w.miners[3].address
    assert c.task(task)["status"] == TaskStatus.COMPLETED and c.escrow(task) == 0
    c.reveal_target(w.publisher, task, 9900, nonce)
    assert c.reward_tasks(w.miners[0].address) == [task]
    paid = _claim_all(c, [w.publisher, w.aggregator, *w.miners], [task])
    for m in w.miners:
        c.request_unstake(m)
    c.chain.advance_time(3601)
    withdrawn = sum(int(c.withdraw_stake(m).event("StakeWithdrawn")["amount"]) for m in w.miners)
    treasury_owed = c.owed(treasury)
    assert paid + withdrawn + treasury_owed == pool + 4 * 10**16
    assert c.chain.balance(c.address) == treasury_owed  # only the treasury's unclaimed credit is left
    fee = pool // 3 * 200 // 10_000
    assert treasury_owed == 3 * fee + 10**16 // 10


def test_early_completion_when_target_reached(world: Scenario) -> None:
    w, c = world, world.client
    spec, nonce = w.spec(rounds=3, target_bps=8000)
    task, _ = c.publish_task(w.publisher, spec, 3 * 10**18)
    c.reveal_target(w.publisher, task, 8000, nonce)
    r = w.run_round(task, accuracy_bps=8100, combined=True)
    assert r.votes.event("TaskCompleted")
    assert c.task(task)["status"] == TaskStatus.COMPLETED
    assert c.escrow(task) == 0  # rounds 2 and 3 refunded, round 1 paid
    assert c.owed(w.publisher.address) >= 2 * 10**18


def test_expired_task_refunds_unrun_rounds_and_expire_retries(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish(reward_wei=2 * 10**18, rounds=2)
    round_, attempt, _ = w.open(task)
    with reverts("WindowOpen"):
        c.expire(w.aggregator, task)
    c.chain.advance_time(3601)  # commit window over, nobody committed (< threshold): anyone may expire
    res = c.expire(c.chain.funded_account(), task)
    assert res.event("RoundExpired")["attempt"] == attempt
    assert c.round_state(task)["phase"] == Phase.IDLE and c.next_attempt(task) == attempt + 1
    with reverts("DeadlineNotPassed"):
        c.close_expired(w.aggregator, task)
    c.chain.advance_time(8 * 24 * 3600)
    with reverts("DeadlinePassed"):
        w.open(task)
    c.close_expired(w.aggregator, task)
    assert c.task(task)["status"] == TaskStatus.COMPLETED and c.escrow(task) == 0
    assert c.owed(w.publisher.address) == 2 * 10**18


def test_publish_validation(world: Scenario) -> None:
    from dataclasses import replace

    w, c = world, world.client
    spec, _ = w.spec()
    with reverts("InvalidParams"):
        c.publish_task(w.publisher, replace(spec, rounds=0), 10**18)
    with reverts("InvalidParams"):
        c.publish_task(w.publisher, replace(spec, quant_bits=17), 10**18)
    with reverts("InvalidKey"):
        c.publish_task(w.publisher, replace(spec, publisher_key=b"\x04" * 33), 10**18)
    with reverts("ZeroAddress"):
        c.publish_task(w.publisher, replace(spec, aggregator="0x" + "00" * 20), 10**18)
    task, res = c.publish_task(w.publisher, replace(spec, secagg_backend="nddfe", clip=0.25), 10**18)
    settings = res.event("TaskSettings")
    assert settings["secaggBackend"] == SECAGG_BACKEND_IDS["nddfe"] and settings["clipMicros"] == 250_000
    assert c.task_settings(task)["k"] == spec.k


def test_pause_blocks_new_work_not_running_rounds_or_claims(embedded_chain) -> None:  # noqa: ANN001
    owner = embedded_chain.funded_account()
    c = ModelMineClient.deploy(embedded_chain, owner)
    w = Scenario(c, 2)
    task = w.publish(rounds=2)
    round_, attempt, support = w.open(task)
    with reverts("OwnableUnauthorizedAccount"):
        c.chain.transact(c.contract.functions.pause(), w.publisher)
    c.chain.transact(c.contract.functions.pause(), owner)
    spec, _ = w.spec()
    with reverts("EnforcedPause"):
        c.publish_task(w.publisher, spec, 10**18)
    extra = c.chain.funded_account()
    with reverts("EnforcedPause"):
        c.register_miner(extra, compressed_pubkey(extra))
    # the round already open runs to its end while paused
    subs, openings = w.submissions(task, round_, support, {m.address: 5 for m in w.miners}, attempt=attempt)
    c.relay_submissions(w.aggregator, task, round_, attempt, subs)
    c.propose(w.aggregator, task, round_, attempt, keccak(b"m"))
    plist = c.participants(task)
    res = c.relay_votes_and_reveals(
        w.aggregator, task, round_, keccak(b"m"),
        w.votes(task, round_, keccak(b"m"), {m.address: True for m in w.miners}, {m.address: 1 for m in w.miners},
                attempt=attempt),
        w.reveals(task, round_, openings, attempt=attempt), plist, attempt)
    assert res.event("RoundSettled")
    with reverts("EnforcedPause"):
        w.open(task)
    assert c.claim(w.miners[0], [task]) > 0  # claims stay open
    c.chain.transact(c.contract.functions.unpause(), owner)
    w.open(task)


def test_reentrant_claim_is_blocked(world: Scenario) -> None:
    w, c = world, world.client
    art = load_artifact("ReentrantClaimer")
    attacker_eoa = c.chain.funded_account()
    addr, _ = c.chain.deploy(art["abi"], art["bytecode"], attacker_eoa, c.address)
    attacker = c.chain.w3.eth.contract(address=addr, abi=art["abi"])
    spec, _ = w.spec(rounds=1)
    params = (spec.metadata_hash, spec.model_hash, b"mnist".ljust(32, b"\0"), target_commitment(1, b"\0" * 32),
              spec.publisher_key, spec.aggregator_key, spec.aggregator, 1, spec.deadline, 3600, 3600, 0, 0, 5000, 15,
              1000, 500_000, 1, 0, 2)
    c.chain.transact(attacker.functions.publishAndCancel(params), attacker_eoa, value=10**18)
    assert c.owed(addr) == 10**18
    before = c.chain.balance(c.address)
    c.chain.transact(attacker.functions.attack(), attacker_eoa)
    assert c.chain.call(attacker.functions.reentries()) == 1
    assert c.chain.call(attacker.functions.reentrySucceeded()) is False
    assert c.chain.balance(addr) == 10**18  # paid exactly once
    assert c.chain.balance(c.address) == before - 10**18
    assert c.owed(addr) == 0


def test_vote_reveal_batch_one_transaction(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish(reward_wei=2 * 10**18, rounds=2)
    res = w.run_round(task, combined=True)
    names = [n for n, _ in res.votes.events]
    assert names.index("RoundFinalized") < names.index("Revealed") < names.index("RoundSettled")
    assert all(c.owed(m.address, [task]) > 0 for m in w.miners)
    rej = w.run_round(task, combined=True, accept=False)  # rejected: reveals ignored, round retried
    assert rej.votes.event("RoundRejected") and not rej.votes.all("Revealed")
    assert c.round_state(task)["round"] == 2 and c.round_state(task)["phase"] == Phase.IDLE
    m = w.miners[0]
    amount = c.owed(m.address, [task])
    assert c.claim(m, [task]) == amount and c.pending_rewards(task, m.address) == 0
    with reverts("NothingToClaim"):
        c.claim(m, [task])


def test_admin_parameters_and_views(embedded_chain) -> None:  # noqa: ANN001
    owner = embedded_chain.funded_account()
    c = ModelMineClient.deploy(embedded_chain, owner)
    new_treasury = embedded_chain.funded_account()
    res = c._tx(c.contract.functions.setTreasury(new_treasury.address), owner)
    assert res.event("TreasuryChanged")["treasury"] == new_treasury.address
    with reverts("ZeroAddress"):
        c._tx(c.contract.functions.setTreasury("0x" + "00" * 20), owner)
    res = c._tx(c.contract.functions.setNetworkParams(300, 5, 2000, 60), owner)
    assert res.event("NetworkParamsChanged")["slashBps"] == 2000
    with reverts("OwnableUnauthorizedAccount"):
        c._tx(c.contract.functions.setNetworkParams(1, 5, 2000, 60), new_treasury)
    w = Scenario(c, 1, stake_wei=10)
    assert c.chain.call(c.contract.functions.minerKey(w.miners[0].address)) == compressed_pubkey(w.miners[0])
    task = w.publish(rounds=2)
    assert c.task(task)["feeBps"] == 300 and c.task(task)["slashBps"] == 2000  # in force at publish
    c.cancel_task(w.publisher, task)
    assert tuple(c.chain.call(c.contract.functions.balanceOf(w.publisher.address))) == (10**18, 0)
    c.claim(w.publisher)
    assert tuple(c.chain.call(c.contract.functions.balanceOf(w.publisher.address))) == (10**18, 10**18)
