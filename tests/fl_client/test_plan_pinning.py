"""Issue 11, defects 1 and 4 at the miner: every crypto parameter comes from the trusted task spec,
never from the round plan, and an epoch is never encrypted for twice."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from aggregator import secagg
from aggregator.dgc import DGCConfig, DGCState
from aggregator.eip712 import Domain
from aggregator.protocol import ProtocolError, RoundPlan
from aggregator.secagg import AggregatorKeys, PublisherKeys
from aggregator.task_spec import TaskSpec, TaskSpecError
from fl_client.identity import create_identity
from fl_client.secure_update import MinerState, build_submission, pinned_plan, trust_task, trusted_task_hashes

D = 300
DOMAIN = Domain(31337, "0x" + "11" * 20)
PUBLISHER, AGGREGATOR = PublisherKeys.generate(), AggregatorKeys.generate()


def task(backend: str = "masked") -> TaskSpec:
    return TaskSpec(
        chain_id=DOMAIN.chain_id, verifying_contract=DOMAIN.verifying_contract, task_id=4,
        publisher_public=PUBLISHER.public, aggregator_public=AGGREGATOR.public, backend=backend, bits=15, clip=0.5,
        d=D, support_mode="shared", density=0.1, warmup_rounds=0, warmup_start=0.25, warmup_factor=0.25, threshold=2,
    )


def plan_for(spec: TaskSpec, round_: int = 1, epoch: int = 1, **changes: object) -> RoundPlan:
    """The honest plan of ``spec``'s round, then the aggregator's ``changes`` (spec JSON kept as is)."""
    dgc = DGCConfig(density=spec.density, warmup_rounds=spec.warmup_rounds, support="shared")
    plan = RoundPlan(
        task_id=spec.task_id, round=round_, d=spec.d, backend=spec.backend, bits=spec.bits, clip=spec.clip,
        support=np.arange(0, spec.k_at(round_) * 2, 2), density=spec.density_at(round_), dgc=dgc,
        publisher_public=spec.publisher_public, aggregator_public=spec.aggregator_public, domain=DOMAIN,
        epoch=epoch, task_spec=spec.to_canonical_json(),
    )
    return dataclasses.replace(plan, **changes)  # type: ignore[arg-type]


TRUSTED = frozenset({task().spec_hash()})


def test_the_honest_plan_is_accepted_and_round_trips_through_flower_config():
    plan = plan_for(task())
    assert pinned_plan(RoundPlan.from_config(plan.to_config()), TRUSTED) == task()


def test_defect1_aggregator_key_in_place_of_the_publisher_key_is_refused(tmp_path):
    """The attack: with P_T := P_A the aggregator holds s_T's role and unmasks one miner exactly."""
    evil = plan_for(task(), publisher_public=AGGREGATOR.public)
    with pytest.raises(ProtocolError, match="plan field 'publisher_public' differs from the task"):
        pinned_plan(evil, TRUSTED)
    # rewriting the spec in the plan too does not help: its hash is not one the miner trusts
    forged = dataclasses.replace(task(), publisher_public=AGGREGATOR.public)
    with pytest.raises(ProtocolError, match="not a trusted task"):
        pinned_plan(plan_for(forged), TRUSTED)
    # what the attack would have recovered, had the miner encrypted: its exact quantized vector
    identity = create_identity(tmp_path / "m")
    x = np.array([5, -7, 11])
    ct = secagg.encrypt("masked", x, np.arange(3), 4, 1, identity.secagg.secret, AGGREGATOR.public)
    key = secagg.functional_key("masked", AGGREGATOR.secret, [identity.secagg_public], 4, 1, np.arange(3))
    assert np.array_equal(secagg.decrypt_sum("masked", [ct], key, 1), x)  # hence the refusal above


def test_defect1_downgrade_to_plaintext_is_refused():
    with pytest.raises(ProtocolError, match="plan field 'backend' differs from the task: plan 'none', task 'masked'"):
        pinned_plan(plan_for(task(), backend="none"), TRUSTED)


def test_defect1_local_support_under_encryption_is_refused():
    local = DGCConfig(density=0.1, warmup_rounds=0, support="local")
    with pytest.raises(ProtocolError, match="plan field 'support_mode' differs"):
        pinned_plan(plan_for(task(), dgc=local, support=None), TRUSTED)
    with pytest.raises(TaskSpecError, match="needs support_mode=shared"):
        dataclasses.replace(task(), support_mode="local")  # and no encrypted task can say local


@pytest.mark.parametrize(
    ("field", "value"),
    [("aggregator_public", PUBLISHER.public), ("bits", 8), ("clip", 5.0), ("task_id", 5), ("d", D + 1)],
)
def test_defect1_every_pinned_field_is_checked_by_name(field, value):
    with pytest.raises(ProtocolError, match=f"plan field '{field}' differs from the task"):
        pinned_plan(plan_for(task(), **{field: value}), TRUSTED)


def test_defect1_a_bigger_support_than_the_task_allows_is_refused():
    with pytest.raises(ProtocolError, match="plan field 'k' differs from the task"):
        pinned_plan(plan_for(task(), support=np.arange(task().k_at(1) + 1)), TRUSTED)


def test_defect1_no_spec_or_no_trust_means_no_submission():
    with pytest.raises(ProtocolError, match="carries no task spec"):
        pinned_plan(plan_for(task(), task_spec=""), TRUSTED)
    with pytest.raises(ProtocolError, match="trusts no task spec hash"):
        pinned_plan(plan_for(task()), frozenset())
    with pytest.raises(ProtocolError, match="not in canonical form"):
        pinned_plan(plan_for(task(), task_spec=" " + task().to_canonical_json()), TRUSTED)


def test_trusted_hashes_come_from_the_node_config_and_the_miner_folder_only(tmp_path):
    spec_hash = task().spec_hash()
    assert trusted_task_hashes(tmp_path, {}) == frozenset()
    assert trusted_task_hashes(tmp_path, {"task-spec-hash": "0x" + spec_hash.hex()}) == {spec_hash}
    trust_task(tmp_path, spec_hash)
    trust_task(tmp_path, spec_hash)  # idempotent
    assert (tmp_path / "trusted_tasks.txt").read_text().split() == [spec_hash.hex()]
    assert trusted_task_hashes(tmp_path, None) == {spec_hash}
    with pytest.raises(ProtocolError, match="not 32 bytes"):
        trusted_task_hashes(None, {"task-spec-hash": "abcd"})


def test_defect4_an_epoch_is_never_encrypted_for_twice_even_after_a_restart(tmp_path):
    plan = plan_for(task(), round_=2, epoch=5)
    store = MinerState(tmp_path, plan.task_key)
    store.claim_epoch(plan)
    with pytest.raises(ProtocolError, match="not above the last one"):
        store.claim_epoch(plan_for(task(), round_=2, epoch=5, support=np.arange(1, 61, 2)))  # same epoch, other plan
    restarted = MinerState(tmp_path, plan.task_key)  # the miner process restarts: the record is on disk
    for round_, epoch in [(2, 5), (2, 4), (1, 9), (1, 1)]:
        with pytest.raises(ProtocolError, match="refusing to reuse masks"):
            restarted.check_epoch(plan_for(task(), round_=round_, epoch=epoch))
    restarted.claim_epoch(plan_for(task(), round_=2, epoch=6))  # a retried round: a new attempt is fine
    restarted.claim_epoch(plan_for(task(), round_=3, epoch=7))
    assert restarted.highest_epoch() == (3, 7)


def test_defect4_two_plans_of_one_epoch_do_not_leak_the_difference(tmp_path):
    """Even if a miner were tricked into answering twice in one epoch, masks bound to the global
    coordinate and the support hash make y_A - y_B unrelated to q_A - q_B."""
    identity = create_identity(tmp_path / "m")
    spec = task()
    a = plan_for(spec, epoch=3)
    b = plan_for(spec, epoch=3, support=a.support + 1)
    ys = []
    for plan in (a, b):
        state = DGCState(D, plan.dgc)
        delta = np.random.default_rng(0).normal(0, 0.05, D).astype(np.float32)
        result = build_submission(delta, plan, identity, state, np.random.default_rng(1))
        ys.append(np.frombuffer(result.submission.ciphertext[8:], dtype="<u4"))
    diff = (ys[0] - ys[1]).view(np.int32)
    assert np.count_nonzero(np.abs(diff) <= 2 * 16383) <= 2  # the old attack read every q_A - q_B here
