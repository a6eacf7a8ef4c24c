"""Escrow accounting to the wei, a 3-round task with a rejected round, early completion, cancel,
expiry, the hidden target, stake life cycle and reentrancy on claim."""

from __future__ import annotations

import pytest
from eth_utils import keccak

from contracts.build_info import load_artifact
from contracts.chain import ContractRevertError
from contracts.client import ModelMineClient, Phase, TaskStatus, target_commitment
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

    w.run_round(task, 1, accuracy_bps=7000)
    w.run_round(task, 2, accept=False)  # rejected: retried as round 2
    assert c.round_state(task)["round"] == 2
    w.run_round(task, 2, accuracy_bps=8000)
    # round 3: one miner does not reveal -> slashed after the window
    last = w.run_round(task, 3, accuracy_bps=8500, reveal=False)
    assert last.votes.event("TaskCompleted")["finalizedRounds"] == 3
    plist = c.participants(task)
    c.relay_reveals(w.aggregator, task, 3, w.reveals(task, 3, last.openings, w.miners[:3]), plist)
    c.chain.advance_time(spec.round_window_s + 1)
    res = c.settle(w.aggregator, task)
    assert res.event("Slashed")["miner"] == w.miners[3].address
    assert c.task(task)["status"] == TaskStatus.COMPLETED
    c.reveal_target(w.publisher, task, 9900, nonce)  # revealed at the end, for the record

    # everyone claims and withdraws their stake
    assert c.reward_tasks(w.miners[0].address) == [task]
    paid = _claim_all(c, [w.publisher, w.aggregator, *w.miners], [task])
    for m in w.miners:
        c.request_unstake(m)
    c.chain.advance_time(3601)
    withdrawn = sum(int(c.withdraw_stake(m).event("StakeWithdrawn")["amount"]) for m in w.miners)
    treasury_owed = c.owed(treasury)
    deposits = pool + 4 * 10**16
    assert paid + withdrawn + treasury_owed == deposits
    assert c.chain.balance(c.address) == treasury_owed  # only the treasury's unclaimed credit is left
    per_round = pool // 3
    fee = per_round * 200 // 10_000
    slashed = 10**16 // 10
    assert treasury_owed == 3 * fee + slashed


def test_publisher_cannot_escape_a_finalized_round(world: Scenario) -> None:
    w, c = world, world.client
    pool = 9 * 10**17
    task = w.publish(reward_wei=pool, rounds=3)
    res = w.run_round(task, 1, reveal=False)
    assert res.votes.event("RoundFinalized")
    cancel = c.cancel_task(w.publisher, task)  # during the reveal phase of round 1
    per_round = pool // 3
    assert cancel.event("TaskCancelled")["refund"] == pool - per_round
    plist = c.participants(task)
    settled = c.relay_reveals(w.aggregator, task, 1, w.reveals(task, 1, res.openings), plist).event("RoundSettled")
    assert settled["minersPaid"] + settled["fee"] + settled["aggregatorShare"] + settled["returned"] == per_round
    assert all(c.owed(m.address, [task]) > 0 for m in w.miners)
    with reverts("TaskNotActive"):
        w.client.propose(w.aggregator, task, 2, keccak(b"m"), keccak(b"s"), 1)


def test_cancel_during_voting_abandons_the_attempt(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish(reward_wei=10**18, rounds=2)
    subs, _ = w.submissions(task, 1, keccak(b"s"), {m.address: 5 for m in w.miners})
    c.propose(w.aggregator, task, 1, keccak(b"m"), keccak(b"s"), 10, subs)
    assert c.cancel_task(w.publisher, task).event("TaskCancelled")["refund"] == 10**18
    with reverts("TaskNotActive"):
        c.finalize(w.aggregator, task)
    assert c.claim(w.publisher) == 10**18


def test_early_completion_when_target_reached(world: Scenario) -> None:
    w, c = world, world.client
    spec, nonce = w.spec(rounds=4, target_bps=8000)
    task, _ = c.publish_task(w.publisher, spec, 4 * 10**18)
    c.reveal_target(w.publisher, task, 8000, nonce)
    w.run_round(task, 1, accuracy_bps=7000)
    res = w.run_round(task, 2, accuracy_bps=8100)
    done = res.votes.event("TaskCompleted")
    assert done["finalizedRounds"] == 2 and done["refund"] == 2 * 10**18
    assert c.task(task)["status"] == TaskStatus.COMPLETED
    assert res.reveals.event("RoundSettled")  # round 2 still paid


def test_target_revealed_late_completes_and_refunds(world: Scenario) -> None:
    w, c = world, world.client
    spec, nonce = w.spec(rounds=5, target_bps=6000)
    task, _ = c.publish_task(w.publisher, spec, 5 * 10**18)
    w.run_round(task, 1, accuracy_bps=9000)
    w.run_round(task, 2, accuracy_bps=9000)
    with reverts("BadTargetOpening"):
        c.reveal_target(w.publisher, task, 5999, nonce)
    res = c.reveal_target(w.publisher, task, 6000, nonce)
    assert res.event("TaskCompleted")["refund"] == 3 * 10**18
    with reverts("TargetAlreadyRevealed"):
        c.reveal_target(w.publisher, task, 6000, nonce)
    assert target_commitment(6000, nonce) == c.task(task)["targetCommitment"]


def test_expired_task_refunds_unrun_rounds(world: Scenario) -> None:
    w, c = world, world.client
    task = w.publish(reward_wei=3 * 10**18, rounds=3)
    w.run_round(task, 1)
    with reverts("DeadlineNotPassed"):
        c.close_expired(w.aggregator, task)
    c.chain.advance_time(8 * 24 * 3600)
    assert c.close_expired(w.miners[0], task).event("TaskCompleted")["refund"] == 2 * 10**18


def test_publish_validation(world: Scenario) -> None:
    w, c = world, world.client
    spec, _ = w.spec()
    from dataclasses import replace

    with pytest.raises(ContractRevertError) as info:
        c.publish_task(w.publisher, replace(spec, rounds=0), 10**18)
    assert info.value.name == "InvalidParams" and info.value.args_decoded == ("rounds",)
    with reverts("InvalidParams"):
        c.publish_task(w.publisher, replace(spec, quant_bits=17), 10**18)
    with reverts("InvalidParams"):
        c.publish_task(w.publisher, replace(spec, deadline=1), 10**18)
    with reverts("InvalidParams"):
        c.publish_task(w.publisher, replace(spec, aggregator_share_bps=9900), 10**18)
    with reverts("InvalidKey"):
        c.publish_task(w.publisher, replace(spec, publisher_key=b"\x04" + b"\x01" * 32), 10**18)
    with reverts("ZeroAddress"):
        c.publish_task(w.publisher, replace(spec, aggregator="0x" + "00" * 20), 10**18)
    task, res = c.publish_task(w.publisher, spec, 10**18)
    ev = res.event("TaskPublished")
    assert ev["pool"] == 10**18 and ev["aggregator"] == w.aggregator.address
    t = c.task(task)
    assert t["quantBits"] == 15 and t["feeBps"] == 200 and t["datasetType"].rstrip(b"\0") == b"mnist"
    keys = c.chain.call(c.contract.functions.taskKeys(task))
    assert keys[0] == spec.publisher_key and keys[1] == spec.aggregator_key
    with reverts("TaskNotFound"):
        c.task(999)


def test_miner_registration_and_unstake(client: ModelMineClient) -> None:
    c = client
    m = c.chain.funded_account()
    with reverts("InvalidKey"):
        c.register_miner(m, b"\x02" * 10)
    with reverts("InsufficientStake"):
        c.register_miner(m, compressed_pubkey(m), 10)
    res = c.register_miner(m, compressed_pubkey(m), 10**16)
    assert res.event("MinerRegistered")["publicKey"] == compressed_pubkey(m)
    with reverts("AlreadyRegistered"):
        c.register_miner(m, compressed_pubkey(m), 10**16)
    c.add_stake(m, 5)
    assert c.miner(m.address)["stake"] == 10**16 + 5
    with reverts("StakeLocked"):
        c.withdraw_stake(m)
    c.request_unstake(m)
    # an unbonding miner can no longer submit
    w = Scenario(c, 0)
    task = w.publish()
    with reverts("Unbonding"):
        c.commit(m, task, 1, keccak(b"s"), keccak(b"c"), keccak(b"x"))
    with reverts("StakeLocked"):
        c.withdraw_stake(m)
    c.chain.advance_time(3601)
    assert c.withdraw_stake(m).event("StakeWithdrawn")["amount"] == 10**16 + 5
    assert not c.miner(m.address)["registered"]


def test_nothing_to_claim(world: Scenario) -> None:
    with reverts("NothingToClaim"):
        world.client.claim(world.miners[0])


def test_pause_blocks_rounds_not_claims(embedded_chain) -> None:  # noqa: ANN001
    owner = embedded_chain.funded_account()
    c = ModelMineClient.deploy(embedded_chain, owner)
    w = Scenario(c, 1)
    task = w.publish(rounds=1)
    c.cancel_task(w.publisher, task)
    with reverts("OwnableUnauthorizedAccount"):
        c.chain.transact(c.contract.functions.pause(), w.publisher)
    c.chain.transact(c.contract.functions.pause(), owner)
    spec, _ = w.spec()
    with reverts("EnforcedPause"):
        c.publish_task(w.publisher, spec, 10**18)
    with reverts("EnforcedPause"):
        c.commit(w.miners[0], task, 1, keccak(b"s"), keccak(b"c"), keccak(b"x"))
    assert c.claim(w.publisher) == 10**18  # claims stay open
    c.chain.transact(c.contract.functions.unpause(), owner)
    c.publish_task(w.publisher, spec, 10**18)


def test_reentrant_claim_is_blocked(world: Scenario) -> None:
    w, c = world, world.client
    art = load_artifact("ReentrantClaimer")
    attacker_eoa = c.chain.funded_account()
    addr, _ = c.chain.deploy(art["abi"], art["bytecode"], attacker_eoa, c.address)
    attacker = c.chain.w3.eth.contract(address=addr, abi=art["abi"])
    spec, _ = w.spec(rounds=1)
    params = (spec.metadata_hash, spec.model_hash, b"mnist".ljust(32, b"\0"), target_commitment(1, b"\0" * 32),
              spec.publisher_key, spec.aggregator_key, spec.aggregator, 1, spec.deadline, 3600, 0, 5000, 15)
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
    res = w.run_round(task, 1, combined=True)
    names = [n for n, _ in res.votes.events]
    assert names.index("RoundFinalized") < names.index("Revealed") < names.index("RoundSettled")
    assert all(c.owed(m.address, [task]) > 0 for m in w.miners)
    # rejected: the reveals are ignored, the round is retried
    rej = w.run_round(task, 2, combined=True, accept=False)
    assert rej.votes.event("RoundRejected") and not rej.votes.all("Revealed")
    assert c.round_state(task)["round"] == 2 and c.round_state(task)["phase"] == Phase.COMMIT
    # claim through claimRewards pays the pending rewards once
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
    with reverts("InvalidParams"):
        c._tx(c.contract.functions.setNetworkParams(10_001, 5, 2000, 60), owner)
    with reverts("OwnableUnauthorizedAccount"):
        c._tx(c.contract.functions.setNetworkParams(1, 5, 2000, 60), new_treasury)
    w = Scenario(c, 1, stake_wei=10)
    assert c.chain.call(c.contract.functions.minerKey(w.miners[0].address)) == compressed_pubkey(w.miners[0])
    task = w.publish(rounds=2)
    assert c.task(task)["feeBps"] == 300  # the fee in force at publish time
    c.cancel_task(w.publisher, task)
    assert tuple(c.chain.call(c.contract.functions.balanceOf(w.publisher.address))) == (10**18, 0)
    c.claim(w.publisher)
    assert tuple(c.chain.call(c.contract.functions.balanceOf(w.publisher.address))) == (10**18, 10**18)
