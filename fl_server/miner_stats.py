"""What the server has measured about each miner: the inputs of adaptive selection.

Per miner (keyed by Flower node id): how often it was selected, completed, timed out or was lost;
its last and smoothed round duration (virtual seconds), upload bytes and effective bandwidth; its last
training loss and examples (Oort's statistical utility); seconds per local step (for local work
adaptation); and, when the chain is on, its on-chain record (rounds accepted, valid reveals, slashes).

Everything here is what the server itself observed or read from public chain events; nothing comes
from a miner's self-report except the training metrics in its (signed, in secure mode) reply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

EMA = 0.5  # weight of the newest observation in smoothed durations and bandwidths


@dataclass
class MinerRecord:
    node_id: int
    selections: int = 0
    completions: int = 0
    timeouts: int = 0  # late or lost (lost ones are also counted in ``drops``)
    drops: int = 0
    rejections: int = 0  # replies that arrived but failed validation
    cuts: int = 0  # replies not waited for: the round had its quorum (over-selection); not a failure
    consecutive_failures: int = 0
    last_selected_round: int = 0
    last_completed_round: int = 0
    last_duration_s: float = math.nan
    duration_s: float = math.nan  # smoothed
    last_upload_bytes: int = 0
    bandwidth_bps: float = math.nan  # smoothed effective bandwidth (upload bytes / network seconds)
    last_train_loss: float = math.nan
    examples: int = 0
    seconds_per_step: float = math.nan  # reference-device seconds per local step (smoothed)
    accepted_rounds: int = 0
    valid_reveals: int = 0
    invalid_reveals: int = 0
    slashes: int = 0

    @property
    def explored(self) -> bool:
        """Completed at least one round (its utility and speed are known)."""
        return self.completions > 0

    @property
    def observed(self) -> bool:
        """Selected and heard of (completed, timed out or rejected): no longer a candidate for exploration."""
        return self.completions + self.timeouts + self.rejections + self.cuts > 0

    @property
    def statistical_utility(self) -> float:
        """Oort's |B_i| * sqrt(mean loss^2), approximated by examples x last mean training loss."""
        if not self.explored or math.isnan(self.last_train_loss):
            return 0.0
        return self.examples * abs(self.last_train_loss)

    @property
    def reliability(self) -> float:
        """Posterior mean of on-time completion (Beta(1, 1) prior): 0.5 for a newcomer."""
        return (self.completions + 1) / (self.completions + self.timeouts + self.rejections + 2)

    @property
    def chain_score(self) -> float:
        """On-chain standing in (0, 1]: accepted rounds and valid reveals raise it, slashes and
        invalid reveals lower it (1.0 without chain history)."""
        good = self.accepted_rounds + self.valid_reveals
        bad = 3 * self.slashes + 2 * self.invalid_reveals
        return (good + 1) / (good + bad + 1)

    @property
    def reputation(self) -> float:
        """Reliability (dropout/latency history) times on-chain standing, in (0, 1]."""
        return self.reliability * self.chain_score

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(statistical_utility=self.statistical_utility, reliability=self.reliability,
                   chain_score=self.chain_score, reputation=self.reputation)
        return row


def _ema(old: float, new: float) -> float:
    return new if math.isnan(old) else (1 - EMA) * old + EMA * new


@dataclass
class MinerStats:
    """The server's book of :class:`MinerRecord` (created on first mention of a node)."""

    records: dict[int, MinerRecord] = field(default_factory=dict)

    def get(self, node_id: int) -> MinerRecord:
        node_id = int(node_id)
        rec = self.records.get(node_id)
        if rec is None:
            rec = self.records[node_id] = MinerRecord(node_id)
        return rec

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.records

    def selected(self, nodes: Iterable[int], server_round: int) -> None:
        for n in nodes:
            rec = self.get(n)
            rec.selections += 1
            rec.last_selected_round = server_round

    def completed(
        self,
        node_id: int,
        server_round: int,
        *,
        duration_s: float,
        network_s: float = math.nan,
        upload_bytes: int = 0,
        train_loss: float = math.nan,
        examples: int = 0,
        compute_s: float = math.nan,
        steps: int = 0,
    ) -> None:
        """An on-time, valid reply. ``compute_s`` is reference-device training time for ``steps``."""
        rec = self.get(node_id)
        rec.completions += 1
        rec.consecutive_failures = 0
        rec.last_completed_round = server_round
        rec.last_duration_s = float(duration_s)
        rec.duration_s = _ema(rec.duration_s, float(duration_s))
        rec.last_upload_bytes = int(upload_bytes)
        if upload_bytes > 0 and network_s > 0 and math.isfinite(network_s):
            rec.bandwidth_bps = _ema(rec.bandwidth_bps, upload_bytes / network_s)
        if math.isfinite(train_loss):
            rec.last_train_loss = float(train_loss)
        if examples > 0:
            rec.examples = int(examples)
        if steps > 0 and math.isfinite(compute_s):
            rec.seconds_per_step = _ema(rec.seconds_per_step, compute_s / steps)

    def timed_out(self, node_id: int, server_round: int, *, dropped: bool, deadline_s: float = math.nan) -> None:
        """A late or lost reply. A late one teaches us it takes at least the deadline."""
        rec = self.get(node_id)
        rec.timeouts += 1
        rec.drops += int(dropped)
        rec.consecutive_failures += 1
        if not dropped and math.isfinite(deadline_s) and deadline_s > 0:
            rec.duration_s = _ema(rec.duration_s, 1.5 * deadline_s)

    def cut(self, node_id: int, server_round: int, closed_at_s: float) -> None:
        """The round closed at ``closed_at_s`` without this reply (over-selection): it is slower than that."""
        rec = self.get(node_id)
        rec.cuts += 1
        bound = 1.25 * float(closed_at_s)
        if math.isnan(rec.duration_s) or rec.duration_s < bound:
            rec.duration_s = _ema(rec.duration_s, bound)

    def rejected(self, node_id: int, server_round: int) -> None:
        """A reply that arrived but failed validation (bad signature, NaN, wrong size)."""
        rec = self.get(node_id)
        rec.rejections += 1
        rec.consecutive_failures += 1

    def chain_round(self, accepted: Iterable[int], valid_reveals: Iterable[int]) -> None:
        """Outcome of a finalized on-chain round for the nodes of its participants."""
        for n in accepted:
            self.get(n).accepted_rounds += 1
        for n in valid_reveals:
            self.get(n).valid_reveals += 1

    def chain_faults(self, invalid_reveals: Iterable[int], slashed: Iterable[int]) -> None:
        """Provable on-chain faults of a round (``RevealInvalid`` and ``Slashed`` events' miners)."""
        for n in invalid_reveals:
            self.get(n).invalid_reveals += 1
        for n in slashed:
            self.get(n).slashes += 1

    def rows(self) -> list[dict[str, Any]]:
        return [self.records[n].to_dict() for n in sorted(self.records)]
