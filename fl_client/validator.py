"""Should this miner join a task? Pure decisions from what the chain says, the task's spec, the
miner's data manifest, its keys and its policy. Every refusal carries a reason a person can read.

The daemon gathers the facts (chain reads, downloads, balances) and calls :func:`decide`; nothing
here does I/O, so every branch is unit-tested.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aggregator.task_spec import TaskSpec

DEFAULT_BACKENDS = ("masked", "nddfe", "secaggplus")


@dataclass(frozen=True)
class MinerPolicy:
    """What a miner is willing to do (conf/miner.yaml ``policy``).

    ``datasets``: data set types this miner serves (empty: whatever its manifest holds).
    ``min_reward_wei``: least reward pool worth joining. ``max_stake_wei``: most it will bond.
    ``gas_reserve_wei``: ether kept back for its own transactions (register, reveal, claim).
    ``backends``: secure-aggregation backends it accepts (plaintext ``none`` is off by default).
    ``min_rounds_left_s``: skip a task whose deadline is closer than this.
    """

    datasets: tuple[str, ...] = ()
    min_reward_wei: int = 0
    max_stake_wei: int = 10**17
    gas_reserve_wei: int = 10**16
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    min_time_left_s: int = 60


@dataclass(frozen=True)
class ChainTask:
    """The task as the chain stores it (the only source a miner trusts for hashes and money)."""

    task_id: int
    status: int  # contracts.client.TaskStatus: 1 = ACTIVE
    dataset_type: str
    model_hash: bytes
    metadata_hash: bytes
    reward_wei: int
    rounds: int
    deadline: int
    aggregator: str
    chain_id: int
    contract: str

    min_stake_wei: int = 0

    @classmethod
    def from_chain(cls, published: dict[str, Any], raw: dict[str, Any], chain_id: int, contract: str) -> ChainTask:
        """From the ``TaskPublished`` event (initial model and metadata hashes as published) and
        ``ModelMineClient.task(task_id)`` (status, current pool, stake rule; Solidity field names)."""
        dataset = bytes(published.get("datasetType", b"")).rstrip(b"\0").decode(errors="replace")
        return cls(
            task_id=int(published["taskId"]),
            status=int(raw.get("status", 0)),
            dataset_type=dataset,
            model_hash=bytes(published.get("modelHash", b"")),
            metadata_hash=bytes(published.get("metadataHash", b"")),
            reward_wei=int(published.get("pool", raw.get("pool", 0)) or 0),
            rounds=int(published.get("rounds", raw.get("rounds", 0))),
            deadline=int(published.get("deadline", raw.get("deadline", 0))),
            aggregator=str(published.get("aggregator", raw.get("aggregator", ""))),
            chain_id=chain_id,
            contract=contract,
            min_stake_wei=int(raw.get("minStake", 0) or 0),
        )


@dataclass(frozen=True)
class MinerFacts:
    """What the daemon found out about itself and the task's artefacts."""

    manifest: dict[str, Any] | None  # the data folder's manifest.json (None: missing)
    keys_present: bool
    balance_wei: int
    stake_needed_wei: int  # stake still to bond for this task (0 when already staked enough)
    now: int  # chain time (unix seconds)
    spec: TaskSpec | None  # verified against metadata_hash (None when download/verification failed)
    spec_error: str = ""
    model_error: str = ""  # non-empty when the initial model failed verification


@dataclass(frozen=True)
class Decision:
    accept: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def explain(self) -> str:
        return "join" if self.accept else "skip: " + "; ".join(self.reasons)


def decide(task: ChainTask, facts: MinerFacts, policy: MinerPolicy) -> Decision:
    """Join only when every check passes; otherwise list every reason (not just the first)."""
    reasons: list[str] = []
    if task.status != 1:
        reasons.append(f"task {task.task_id} is not active (status {task.status})")
    if task.deadline and task.deadline - facts.now < policy.min_time_left_s:
        reasons.append(f"deadline in {task.deadline - facts.now} s (< {policy.min_time_left_s} s)")
    if task.reward_wei < policy.min_reward_wei:
        reasons.append(f"reward {task.reward_wei} wei below this miner's floor {policy.min_reward_wei} wei")
    if not facts.keys_present:
        reasons.append("miner keys missing (create them with `fl-miner keys create`)")
    manifest = facts.manifest
    if manifest is None:
        reasons.append("no data manifest (run scripts/prepare_data.py for this miner's folder)")
    else:
        held = str(manifest.get("dataset", ""))
        if held != task.dataset_type:
            reasons.append(f"task needs data set {task.dataset_type!r}, this miner holds {held!r}")
        elif policy.datasets and held not in policy.datasets:
            reasons.append(f"data set {held!r} is not in this miner's policy {list(policy.datasets)}")
    if facts.model_error:
        reasons.append(f"bad initial model: {facts.model_error}")
    spec = facts.spec
    if spec is None:
        reasons.append(f"bad task spec: {facts.spec_error or 'not verified'}")
    else:
        reasons += _spec_vs_chain(task, spec)
        if spec.backend not in policy.backends:
            reasons.append(f"secure-aggregation backend {spec.backend!r} not accepted by policy {list(policy.backends)}")
        if manifest is not None:
            samples = int(manifest.get("train_samples", 0))
            if samples < spec.min_samples:
                reasons.append(f"task needs at least {spec.min_samples} training samples, this miner has {samples}")
    if facts.stake_needed_wei > policy.max_stake_wei:
        reasons.append(f"stake {facts.stake_needed_wei} wei above this miner's limit {policy.max_stake_wei} wei")
    if facts.balance_wei < facts.stake_needed_wei + policy.gas_reserve_wei:
        reasons.append(
            f"stake unaffordable: balance {facts.balance_wei} wei < stake {facts.stake_needed_wei} + "
            f"gas reserve {policy.gas_reserve_wei} wei"
        )
    return Decision(not reasons, tuple(reasons))


def _spec_vs_chain(task: ChainTask, spec: TaskSpec) -> list[str]:
    """The spec must describe this very task: same id, chain, contract, model, data set, rounds."""
    out = []
    if spec.task_id != task.task_id:
        out.append(f"spec is for task {spec.task_id}, not {task.task_id}")
    if spec.chain_id != task.chain_id or spec.verifying_contract.lower() != task.contract.lower():
        out.append("spec names another chain or contract")
    if spec.model_hash and spec.model_hash != task.model_hash:
        out.append("spec's model hash differs from the chain's")
    if spec.dataset and spec.dataset != task.dataset_type:
        out.append(f"spec's data set {spec.dataset!r} differs from the chain's {task.dataset_type!r}")
    if spec.rounds and task.rounds and spec.rounds != task.rounds:
        out.append(f"spec's rounds {spec.rounds} differ from the chain's {task.rounds}")
    if spec.aggregator and task.aggregator and spec.aggregator.lower() != task.aggregator.lower():
        out.append("spec's aggregator differs from the chain's")
    return out
