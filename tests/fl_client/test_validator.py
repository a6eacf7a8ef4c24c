"""The daemon's join decision: each refusal is made, and named, for the right reason."""

from __future__ import annotations

import dataclasses

import pytest

from fl_client.validator import ChainTask, Decision, MinerFacts, MinerPolicy, decide
from tests.fl_server.test_model_store import sample_spec

CONTRACT = "0x" + "11" * 20


def chain_task(**over: object) -> ChainTask:
    base: dict = dict(task_id=1, status=1, dataset_type="digits", model_hash=b"", metadata_hash=b"\x01" * 32,
                      reward_wei=10**18, rounds=2, deadline=10_000, aggregator="0x" + "22" * 20,
                      chain_id=31337, contract=CONTRACT, min_stake_wei=10**15)
    base.update(over)
    return ChainTask(**base)


def facts(**over: object) -> MinerFacts:
    base: dict = dict(manifest={"dataset": "digits", "train_samples": 500}, keys_present=True,
                      balance_wei=10**18, stake_needed_wei=10**16, now=1_000, spec=sample_spec(min_samples=100))
    base.update(over)
    return MinerFacts(**base)


def only_reason(decision: Decision, needle: str) -> None:
    assert not decision.accept
    assert len(decision.reasons) == 1, decision.reasons
    assert needle in decision.reasons[0], decision.reasons


def test_good_task_is_joined() -> None:
    decision = decide(chain_task(), facts(), MinerPolicy())
    assert decision.accept and decision.explain() == "join"


def test_wrong_dataset() -> None:
    only_reason(decide(chain_task(dataset_type="mnist"), facts(spec=sample_spec(dataset="")), MinerPolicy()),
                "needs data set 'mnist'")


def test_too_few_samples() -> None:
    only_reason(decide(chain_task(), facts(spec=sample_spec(min_samples=501)), MinerPolicy()), "at least 501")


def test_missing_keys() -> None:
    only_reason(decide(chain_task(), facts(keys_present=False), MinerPolicy()), "keys missing")


def test_missing_manifest() -> None:
    only_reason(decide(chain_task(), facts(manifest=None), MinerPolicy()), "no data manifest")


def test_bad_spec_hash() -> None:
    only_reason(decide(chain_task(), facts(spec=None, spec_error="task spec bytes hash to ab.., the chain says cd.."),
                       MinerPolicy()), "bad task spec")


def test_bad_model_hash() -> None:
    only_reason(decide(chain_task(), facts(model_error="model bytes hash to x, the chain says y"), MinerPolicy()),
                "bad initial model")


def test_stake_unaffordable() -> None:
    only_reason(decide(chain_task(), facts(balance_wei=10**16), MinerPolicy(gas_reserve_wei=10**15)),
                "stake unaffordable")


def test_stake_above_limit() -> None:
    only_reason(decide(chain_task(), facts(stake_needed_wei=10**18, balance_wei=10**19), MinerPolicy()), "above")


def test_reward_below_floor() -> None:
    only_reason(decide(chain_task(reward_wei=10**15), facts(), MinerPolicy(min_reward_wei=10**16)), "below")


def test_spec_for_another_task_or_chain() -> None:
    only_reason(decide(chain_task(task_id=2), facts(), MinerPolicy()), "spec is for task 1")
    only_reason(decide(chain_task(contract="0x" + "33" * 20), facts(), MinerPolicy()), "another chain")
    only_reason(decide(chain_task(), facts(spec=sample_spec(rounds=5)), MinerPolicy()), "rounds 5")


def test_plaintext_backend_refused_by_default() -> None:
    only_reason(decide(chain_task(), facts(spec=dataclasses.replace(sample_spec(), backend="none",
                                                                   support_mode="shared")), MinerPolicy()),
                "backend 'none'")


@pytest.mark.parametrize("status", [0, 2, 3])
def test_inactive_task(status: int) -> None:
    only_reason(decide(chain_task(status=status), facts(), MinerPolicy()), "not active")


def test_every_reason_is_listed() -> None:
    decision = decide(chain_task(dataset_type="mnist"), facts(keys_present=False, balance_wei=0), MinerPolicy())
    assert len(decision.reasons) >= 3
