"""Which miners train in a round, and why.

Policies (``conf/selection/<name>.yaml``, built by :func:`build_selector`):

- ``random``: a uniform sample of ``per_round`` miners, seeded per round (Flower's default sampling).
- ``oort``: Oort (Lai et al., OSDI'21) guided participant selection. A miner's score is its
  statistical utility (examples x last training loss, normalised) plus a staleness bonus
  ``sqrt(staleness_weight * ln(round) / last_selected_round)``, multiplied by the system penalty
  ``(T / t_i) ** alpha`` when its round duration ``t_i`` exceeds the preferred round time ``T``.
  A share ``epsilon`` of the slots explores miners never heard from (epsilon decays each round to a
  floor); the rest are drawn, with probability proportional to the score, among miners scoring at
  least ``cutoff`` x the k-th best score. ``T`` is the ``preferred_quantile`` of the known
  durations (or ``preferred_duration_s``), times a pacer factor that grows by ``pacer_step`` when
  the utility collected over the last ``pacer_window`` rounds is flat (within 10% of the window
  before; at most ``pacer_max_factor``), and shrinks back when it jumps 5x.
- ``oort_reputation``: ``oort`` with scores multiplied by ``reputation ** reputation_weight``
  (reliability from the timeout/drop history times the on-chain standing), and quarantine.

Shared by the adaptive policies:

- quarantine: after ``quarantine_after`` consecutive failures (timeouts, drops, rejected replies) a
  miner sits out ``quarantine_rounds`` rounds (doubling at each repeat); it then returns on
  probation: at most ``probation_slots`` probationers per round, a failure sends it straight back,
  ``probation_successes`` on-time rounds clear it;
- fairness floor: every eligible (online, not quarantined) miner is selected at least once every
  ``fairness_rounds`` rounds (these picks come first; guaranteed when fairness_rounds x per_round
  >= eligible miners).

Each call of ``select`` leaves a :class:`SelectionDecision` (who, why, who was skipped and why) in
``selector.last_decision``; ``selector.observe(RoundFeedback)`` feeds back what happened.
:class:`SelectionController` is the glue the strategy uses: availability and deadlines from the
network simulator, per-miner local work caps, feedback, decisions log.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fl_server.miner_stats import MinerStats
from fl_server.network_sim import NetworkSim, RoundTiming

log = logging.getLogger("modelmine.selection")


class SelectionError(RuntimeError):
    """Not enough miners connected to run a round."""


class SelectionConfigError(ValueError):
    """A selection configuration that cannot work (unknown policy, impossible numbers)."""


# -- feedback ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Completion:
    """An on-time, valid reply: virtual duration and what the miner reported/sent."""

    duration_s: float
    network_s: float = math.nan
    upload_bytes: int = 0
    train_loss: float = math.nan
    examples: int = 0
    compute_s: float = math.nan  # virtual compute seconds (reference time x speed factor)
    steps: int = 0


@dataclass(frozen=True)
class RoundFeedback:
    """What became of one round's selection."""

    round: int
    completed: Mapping[int, Completion] = field(default_factory=dict)
    timed_out: Mapping[int, bool] = field(default_factory=dict)  # node -> lost (True) or late (False)
    rejected: frozenset[int] = frozenset()
    deadline_s: float = math.nan
    cut: Mapping[int, float] = field(default_factory=dict)  # node -> time the round closed without it


@dataclass
class SelectionDecision:
    """Who was selected in a round, why, and why the others were not."""

    round: int
    policy: str
    selected: list[int]
    reasons: dict[int, str] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    epsilon: float = math.nan
    preferred_duration_s: float = math.nan
    work_caps: dict[int, int] = field(default_factory=dict)  # node -> max local steps
    scores: dict[int, float] = field(default_factory=dict)  # node -> score (adaptive policies, observed miners)
    quorum: int = 0  # over-selection: the round closes once this many replies are in (0 = wait for all)
    must_wait: list[int] = field(default_factory=list)  # replies the round waits for even past its quorum

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (node ids as string keys; NaN as None)."""
        d = asdict(self)
        for key in ("reasons", "skipped", "work_caps"):
            d[key] = {str(k): v for k, v in getattr(self, key).items()}
        d["scores"] = {str(k): round(v, 6) for k, v in self.scores.items() if math.isfinite(v)}
        for key in ("epsilon", "preferred_duration_s"):
            if isinstance(d[key], float) and not math.isfinite(d[key]):
                d[key] = None
        return d

    def summary(self) -> str:
        """One log line: counts by reason."""
        why: dict[str, int] = {}
        for r in self.reasons.values():
            why[r.split(":")[0]] = why.get(r.split(":")[0], 0) + 1
        skip: dict[str, int] = {}
        for r in self.skipped.values():
            skip[r.split(":")[0]] = skip.get(r.split(":")[0], 0) + 1
        t = f", T={self.preferred_duration_s:.2f}s" if math.isfinite(self.preferred_duration_s) else ""
        e = f", eps={self.epsilon:.2f}" if math.isfinite(self.epsilon) else ""
        caps = f", {len(self.work_caps)} capped" if self.work_caps else ""
        return (f"round {self.round} {self.policy}: selected {len(self.selected)} {why}; "
                f"skipped {len(self.skipped)} {skip}{t}{e}{caps}")


class Selector(Protocol):
    stats: MinerStats
    last_decision: SelectionDecision | None

    def select(self, node_ids: Sequence[int], server_round: int) -> list[int]: ...

    def observe(self, feedback: RoundFeedback) -> None: ...


def record_feedback(stats: MinerStats, fb: RoundFeedback) -> None:
    """Enter one round's feedback into the stats book."""
    for node, c in fb.completed.items():
        stats.completed(node, fb.round, duration_s=c.duration_s, network_s=c.network_s, upload_bytes=c.upload_bytes,
                        train_loss=c.train_loss, examples=c.examples, compute_s=c.compute_s, steps=c.steps)
    for node, dropped in fb.timed_out.items():
        stats.timed_out(node, fb.round, dropped=dropped, deadline_s=fb.deadline_s)
    for node in fb.rejected:
        stats.rejected(node, fb.round)
    for node, closed_at in fb.cut.items():
        stats.cut(node, fb.round, closed_at)


# -- random -----------------------------------------------------------------------------------------
@dataclass
class RandomSelector:
    """Uniform sample of ``per_round`` miners (all when ``per_round`` <= 0), seeded per round."""

    per_round: int = 0
    min_available: int = 1
    seed: int = 0
    stats: MinerStats = field(default_factory=MinerStats)
    last_decision: SelectionDecision | None = None
    overcommit: float = 1.0  # select ceil(per_round x overcommit); the round closes at per_round replies

    def select(self, node_ids: Sequence[int], server_round: int) -> list[int]:
        nodes = sorted(int(n) for n in node_ids)
        if len(nodes) < self.min_available:
            raise SelectionError(f"{len(nodes)} miners connected, need at least {self.min_available}")
        k = len(nodes) if self.per_round <= 0 else min(math.ceil(self.per_round * self.overcommit), len(nodes))
        rng = np.random.default_rng([self.seed, server_round])
        # Node ids are uint64; sample positions so they never pass through a numpy dtype.
        picks = rng.choice(len(nodes), size=k, replace=False)
        chosen = sorted(nodes[int(i)] for i in picks)
        self.stats.selected(chosen, server_round)
        chosen_set = set(chosen)
        self.last_decision = SelectionDecision(
            server_round, "random", chosen, {n: "random: uniform draw" for n in chosen},
            {n: "random: not drawn" for n in nodes if n not in chosen_set},
            quorum=self.per_round if 0 < self.per_round < k else 0,
        )
        return chosen

    def observe(self, feedback: RoundFeedback) -> None:
        record_feedback(self.stats, feedback)


# -- oort ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OortConfig:
    alpha: float = 2.0  # system penalty exponent
    preferred_duration_s: float = 0.0  # T; 0 = the preferred_quantile of known durations
    preferred_quantile: float = 0.5
    staleness_weight: float = 0.1
    epsilon: float = 0.9  # initial exploration share
    epsilon_decay: float = 0.9  # per round
    epsilon_min: float = 0.2
    cutoff: float = 0.95  # exploit among scores >= cutoff x the k-th best
    pacer_window: int = 5
    pacer_step: float = 0.2  # T grows by this fraction when utility plateaus
    pacer_max_factor: float = 2.0  # T never grows beyond this multiple of its base
    reputation_weight: float = 0.0  # score x reputation ** weight (0 = off)
    quarantine_after: int = 0  # consecutive failures; 0 = never quarantine
    quarantine_rounds: int = 5
    probation_slots: int = 1
    probation_successes: int = 2
    fairness_rounds: int = 0  # 0 = no floor

    def __post_init__(self) -> None:
        checks = [
            (self.alpha >= 0, "alpha must be >= 0"),
            (0 < self.preferred_quantile <= 1, "preferred_quantile must be in (0, 1]"),
            (0 <= self.epsilon_min <= self.epsilon <= 1, "need 0 <= epsilon_min <= epsilon <= 1"),
            (0 < self.epsilon_decay <= 1, "epsilon_decay must be in (0, 1]"),
            (0 < self.cutoff <= 1, "cutoff must be in (0, 1]"),
            (self.pacer_window >= 1 and self.pacer_step >= 0 and self.pacer_max_factor >= 1,
             "pacer_window >= 1, pacer_step >= 0, pacer_max_factor >= 1"),
            (self.quarantine_after >= 0 and self.quarantine_rounds >= 1, "quarantine_after >= 0, quarantine_rounds >= 1"),
            (self.probation_slots >= 1 and self.probation_successes >= 1, "probation_slots, probation_successes >= 1"),
            (self.fairness_rounds >= 0 and self.reputation_weight >= 0, "fairness_rounds, reputation_weight >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise SelectionConfigError(f"selection: {message}")


@dataclass
class _Quarantine:
    until: int = 0  # first round it may return
    strikes: int = 0
    probation_left: int = 0


class OortSelector:
    """Oort-style guided selection with reputation, quarantine/probation and a fairness floor."""

    def __init__(self, per_round: int, config: OortConfig | None = None, min_available: int = 1, seed: int = 0,
                 name: str = "oort", stats: MinerStats | None = None, overcommit: float = 1.0) -> None:
        if per_round < 1:
            raise SelectionConfigError("selection: oort needs per_round >= 1")
        if overcommit < 1:
            raise SelectionConfigError("selection.overcommit must be >= 1")
        self.per_round = per_round
        self.overcommit = overcommit
        self.config = config or OortConfig()
        self.min_available = min_available
        self.seed = seed
        self.name = name
        self.stats = stats if stats is not None else MinerStats()
        self.last_decision: SelectionDecision | None = None
        self.pacer_factor = 1.0
        self._round_utility: list[float] = []
        self._quarantine: dict[int, _Quarantine] = {}

    # -- state ----------------------------------------------------------------------------------
    def epsilon_at(self, server_round: int) -> float:
        c = self.config
        return max(c.epsilon_min, c.epsilon * c.epsilon_decay ** max(server_round - 1, 0))

    def preferred_duration(self) -> float:
        """T: configured, or the quantile of known smoothed durations, relaxed by the pacer."""
        c = self.config
        if c.preferred_duration_s > 0:
            return c.preferred_duration_s * self.pacer_factor
        known = [r.duration_s for r in self.stats.records.values() if r.observed and math.isfinite(r.duration_s)]
        if not known:
            return math.nan
        return float(np.quantile(known, c.preferred_quantile)) * self.pacer_factor

    def quarantined(self, node: int, server_round: int) -> bool:
        q = self._quarantine.get(node)
        return q is not None and server_round < q.until

    def on_probation(self, node: int, server_round: int) -> bool:
        q = self._quarantine.get(node)
        return q is not None and server_round >= q.until and q.probation_left > 0

    def score(self, node: int, server_round: int, max_utility: float, preferred: float) -> tuple[float, str]:
        """(score, explanation) of an explored miner."""
        rec = self.stats.get(node)
        c = self.config
        util = rec.statistical_utility / max_utility if max_utility > 0 else 0.0
        bonus = math.sqrt(c.staleness_weight * math.log(max(server_round, 1)) / max(rec.last_selected_round, 1))
        score = util + bonus
        why = f"utility {util:.2f} + staleness {bonus:.2f}"
        if math.isfinite(preferred) and math.isfinite(rec.duration_s) and rec.duration_s > preferred > 0:
            penalty = (preferred / rec.duration_s) ** c.alpha
            score *= penalty
            why += f" x speed {penalty:.2f} ({rec.duration_s:.1f}s > T)"
        if c.reputation_weight > 0:
            rep = rec.reputation ** c.reputation_weight
            score *= rep
            why += f" x reputation {rep:.2f}"
        return score, why

    # -- select ----------------------------------------------------------------------------------
    def select(self, node_ids: Sequence[int], server_round: int) -> list[int]:
        c = self.config
        nodes = sorted(int(n) for n in node_ids)
        rng = np.random.default_rng([self.seed, server_round, 0x00A7])
        skipped: dict[int, str] = {}
        eligible = []
        for n in nodes:
            if self.quarantined(n, server_round):
                skipped[n] = f"quarantined: until round {self._quarantine[n].until}"
            else:
                eligible.append(n)
        if len(eligible) < max(self.min_available, 1):
            raise SelectionError(
                f"{len(eligible)} eligible miners ({len(nodes)} connected, {len(skipped)} quarantined), "
                f"need at least {max(self.min_available, 1)}"
            )
        k = min(math.ceil(self.per_round * self.overcommit), len(eligible))
        reasons: dict[int, str] = {}
        chosen: list[int] = []
        probation_used = 0

        def take(n: int, why: str) -> None:
            nonlocal probation_used
            chosen.append(n)
            reasons[n] = why
            if self.on_probation(n, server_round):
                probation_used += 1
                reasons[n] += " (on probation)"

        def probation_blocked(n: int) -> bool:
            return self.on_probation(n, server_round) and probation_used >= c.probation_slots

        # 1. fairness floor: the most overdue first
        if c.fairness_rounds > 0:
            overdue = [n for n in eligible if server_round - self.stats.get(n).last_selected_round >= c.fairness_rounds]
            ties = rng.random(len(overdue))
            overdue = [n for _, n in sorted(zip(ties, overdue, strict=True),
                                            key=lambda p: (self.stats.get(p[1]).last_selected_round, p[0]))]
            for n in overdue[:k]:
                gap = server_round - self.stats.get(n).last_selected_round
                take(n, f"fairness: not selected for {gap} rounds")
            self._batch_slow_dues(eligible, chosen, k, server_round, take, probation_blocked)
        taken = set(chosen)
        rest = [n for n in eligible if n not in taken]
        slots = k - len(chosen)
        explored = [n for n in rest if self.stats.get(n).observed]
        unexplored = [n for n in rest if not self.stats.get(n).observed]
        eps = self.epsilon_at(server_round)
        n_explore = min(len(unexplored), int(round(eps * slots)))
        if len(explored) < slots - n_explore:
            n_explore = min(len(unexplored), slots - len(explored))
        n_exploit = slots - n_explore
        preferred = self.preferred_duration()

        # 2. exploitation among explored miners
        max_util = max((self.stats.get(n).statistical_utility for n in explored), default=0.0)
        scored = {n: self.score(n, server_round, max_util, preferred) for n in explored}
        candidates = [n for n in explored if not probation_blocked(n)]
        if n_exploit > 0 and candidates:
            ordered = sorted(candidates, key=lambda n: -scored[n][0])
            kth = scored[ordered[min(n_exploit, len(ordered)) - 1]][0]
            pool = [n for n in ordered if scored[n][0] >= c.cutoff * kth]
            if len(pool) < n_exploit:
                pool = ordered[: max(n_exploit, len(pool))]
            self._weighted_draw(pool, [scored[n][0] for n in pool], rng, n_exploit, lambda n: not probation_blocked(n),
                                lambda n: take(n, f"exploit: score {scored[n][0]:.3f} = {scored[n][1]}"))
        # 3. exploration among never-heard-from miners (plus any exploitation shortfall)
        if len(chosen) < k and unexplored:
            for i in rng.permutation(len(unexplored)):
                n = unexplored[int(i)]
                if len(chosen) >= k:
                    break
                if not probation_blocked(n):
                    take(n, f"explore: never selected before (epsilon {eps:.2f})")
        # 4. fill any slot left (everyone else blocked): best remaining score
        if len(chosen) < k:
            taken = set(chosen)
            left = sorted((n for n in eligible if n not in taken and not probation_blocked(n)),
                          key=lambda n: -scored.get(n, (0.0, ""))[0])
            for n in left[: k - len(chosen)]:
                take(n, "fill: slot left over")
        taken = set(chosen)
        for n in eligible:
            if n in taken:
                continue
            if probation_blocked(n):
                skipped[n] = f"probation: {c.probation_slots} probation slot(s) in use"
            elif n in scored:
                skipped[n] = f"lower score: {scored[n][0]:.3f} = {scored[n][1]}"
            else:
                skipped[n] = "unexplored: not drawn for exploration"
        chosen.sort()
        self.stats.selected(chosen, server_round)
        self.last_decision = SelectionDecision(
            server_round, self.name, chosen, reasons, skipped, eps, preferred,
            scores={n: v[0] for n, v in scored.items()},
            quorum=self.per_round if self.per_round < len(chosen) else 0,
            must_wait=sorted(n for n in chosen if reasons[n].startswith("fairness")),
        )
        return chosen

    def _batch_slow_dues(self, eligible: list[int], chosen: list[int], k: int, server_round: int,
                         take: Callable[[int, str], None], blocked: Callable[[int], bool]) -> None:
        """When a fairness pick already makes this round long, bring forward other slow miners that
        are due within the next half window (up to half the free slots): their turn then costs no
        extra long round later."""
        c = self.config
        preferred = self.preferred_duration()
        horizon = max((self.stats.get(n).duration_s for n in chosen if math.isfinite(self.stats.get(n).duration_s)),
                      default=math.nan)
        if not (math.isfinite(preferred) and math.isfinite(horizon) and horizon > preferred):
            return
        taken = set(chosen)
        soon = [n for n in eligible if n not in taken and not blocked(n)
                and server_round - self.stats.get(n).last_selected_round >= (c.fairness_rounds + 1) // 2
                and preferred < self.stats.get(n).duration_s <= horizon]
        soon.sort(key=lambda n: (self.stats.get(n).last_selected_round, n))
        for n in soon[: max(0, (k - len(chosen)) // 2)]:
            gap = server_round - self.stats.get(n).last_selected_round
            take(n, f"fairness (batched): due in {c.fairness_rounds - gap} rounds, fits this long round "
                    f"({self.stats.get(n).duration_s:.1f}s <= {horizon:.1f}s)")

    @staticmethod
    def _weighted_draw(pool: list[int], weights: list[float], rng: np.random.Generator, n: int,
                       allowed: Callable[[int], bool], take: Callable[[int], None]) -> None:
        """Take up to ``n`` distinct allowed nodes, probability proportional to weight (uniform if all 0);
        ``allowed`` is asked at draw time (a probation slot may fill up during the draw)."""
        pool, w = list(pool), np.where(np.asarray(weights, dtype=float) > 0, np.asarray(weights, dtype=float), 0.0)
        taken = 0
        while pool and taken < n:
            p = w / w.sum() if w.sum() > 0 else np.full(len(pool), 1 / len(pool))
            i = int(rng.choice(len(pool), p=p))
            node = pool.pop(i)
            w = np.delete(w, i)
            if allowed(node):
                take(node)
                taken += 1

    # -- feedback ---------------------------------------------------------------------------------
    def observe(self, feedback: RoundFeedback) -> None:
        """Record the round in the stats, update quarantine/probation and the pacer."""
        record_feedback(self.stats, feedback)
        c = self.config
        r = feedback.round
        failed = set(feedback.timed_out) | set(feedback.rejected)
        for node in failed:
            q = self._quarantine.get(node)
            on_probation = q is not None and q.probation_left > 0 and r >= q.until
            if on_probation or (c.quarantine_after > 0 and self.stats.get(node).consecutive_failures >= c.quarantine_after):
                q = q or _Quarantine()
                length = c.quarantine_rounds * 2 ** q.strikes
                q.until, q.strikes, q.probation_left = r + 1 + length, q.strikes + 1, c.probation_successes
                self._quarantine[node] = q
                log.info("round %d: miner %d quarantined for %d rounds (strike %d)", r, node, length, q.strikes)
        for node in feedback.completed:
            q = self._quarantine.get(node)
            if q is not None and q.probation_left > 0 and r >= q.until:
                q.probation_left -= 1
                if q.probation_left == 0:
                    del self._quarantine[node]
        # pacer: relax T when the utility collected stops growing
        self._round_utility.append(sum(c_.examples * abs(c_.train_loss) for c_ in feedback.completed.values()
                                       if math.isfinite(c_.train_loss)))
        w = c.pacer_window
        if len(self._round_utility) >= 2 * w and len(self._round_utility) % w == 0:
            recent, before = sum(self._round_utility[-w:]), sum(self._round_utility[-2 * w:-w])
            if abs(recent - before) <= 0.1 * before:  # collected utility is flat: relax T
                self.pacer_factor = min(c.pacer_max_factor, self.pacer_factor * (1 + c.pacer_step))
                log.info("round %d: pacer relaxes T (factor %.2f)", r, self.pacer_factor)
            elif recent >= 5 * before and self.pacer_factor > 1:  # utility jumped: tighten again
                self.pacer_factor = max(1.0, self.pacer_factor / (1 + c.pacer_step))


# -- local work adaptation ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalWorkConfig:
    """Cap a selected miner's local steps so it finishes by the target (``deadline`` of the network,
    or the selector's ``preferred`` round time T), from its measured seconds per step."""

    enabled: bool = False
    target: str = "deadline"  # deadline | preferred
    safety: float = 0.9
    min_steps: int = 1

    def __post_init__(self) -> None:
        if self.target not in ("deadline", "preferred"):
            raise SelectionConfigError("selection.local_work.target must be deadline|preferred")
        if not 0 < self.safety <= 1 or self.min_steps < 1:
            raise SelectionConfigError("selection.local_work: safety in (0, 1], min_steps >= 1")


def plan_steps(stats: MinerStats, node: int, budget_s: float, network_s: float, cfg: LocalWorkConfig) -> int | None:
    """Max local steps for ``node`` to finish within ``budget_s``; None = no cap (unknown speed)."""
    rec = stats.get(node)
    if not math.isfinite(rec.seconds_per_step) or rec.seconds_per_step <= 0 or not math.isfinite(budget_s):
        return None
    spare = budget_s * cfg.safety - (network_s if math.isfinite(network_s) else 0.0)
    return max(cfg.min_steps, int(spare / rec.seconds_per_step))


# -- the strategy's glue ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplyFacts:
    """What the server reads off one reply (real message size and the miner's training metrics)."""

    node: int
    ok: bool
    train_seconds: float = 0.0
    upload_bytes: int = 0
    train_loss: float = math.nan
    examples: int = 0
    steps: int = 0


def reply_facts(reply: Any) -> ReplyFacts:
    """ReplyFacts of a Flower reply Message (bytes: ``upload-bytes`` metric or the array payload)."""
    node = int(reply.metadata.src_node_id)
    if reply.has_error():
        return ReplyFacts(node, False)
    content = reply.content
    metrics = {k: float(v) for k, v in content["metrics"].items()} if "metrics" in content.metric_records else {}
    upload = int(metrics.get("upload-bytes", 0)) or sum(
        len(a.data) for rec in content.array_records.values() for a in rec.values())
    return ReplyFacts(
        node, True, float(metrics.get("train-seconds", 0.0)), upload, float(metrics.get("train-loss", math.nan)),
        int(metrics.get("num-examples", 0)), int(metrics.get("train-steps", 0)))


class SelectionController:
    """Runs a selector against the (optionally simulated) network for the strategy.

    Per round: :meth:`select` (availability from the simulator, the selector's decision, local work
    caps), :meth:`arrive` (virtual arrivals, deadline: which replies count), :meth:`feedback`
    (which counted replies were valid), :meth:`round_extra` (columns for rounds.csv).
    Without a simulator, durations are the measured training times and nothing times out here.
    """

    def __init__(self, selector: Any, network: NetworkSim | None = None, local_work: LocalWorkConfig | None = None,
                 download_bytes: int = 0) -> None:
        self.selector = selector
        if not hasattr(selector, "stats"):
            selector.stats = MinerStats()
        self.network = network
        self.local_work = local_work or LocalWorkConfig()
        self.download_bytes = download_bytes
        self.decisions: list[SelectionDecision] = []
        self._facts: dict[int, ReplyFacts] = {}
        self._timing: RoundTiming | None = None
        self._selected: list[int] = []
        self._extra: dict[str, Any] = {}
        self._written: dict[Path, int] = {}

    @property
    def stats(self) -> MinerStats:
        return self.selector.stats

    @property
    def decision(self) -> SelectionDecision | None:
        return self.decisions[-1] if self.decisions else None

    def select(self, node_ids: Sequence[int], server_round: int) -> list[int]:
        nodes = sorted(int(n) for n in node_ids)
        offline: list[int] = []
        if self.network is not None:
            index = self.network.index_nodes(nodes)
            offline = [n for n in nodes if not self.network.online(index[n], server_round)]
            nodes = [n for n in nodes if n not in set(offline)]
        chosen = self.selector.select(nodes, server_round)
        decision = getattr(self.selector, "last_decision", None) or SelectionDecision(
            server_round, type(self.selector).__name__, list(chosen))
        for n in offline:
            decision.skipped[n] = "offline: disconnected (network event)"
        decision.work_caps = self._caps(chosen, server_round)
        self.decisions.append(decision)
        self._selected, self._facts, self._timing = list(chosen), {}, None
        log.info("%s", decision.summary())
        return list(chosen)

    def work_caps(self) -> dict[int, int]:
        return dict(self.decision.work_caps) if self.decision else {}

    def selection_event(self) -> dict[str, Any]:
        """Payload of the run database's ``selection`` event for the latest decision."""
        d = self.decision
        if d is None:
            return {}
        row = d.to_dict()
        return {"round": d.round, "policy": d.policy, "available": sorted(set(d.selected) | set(d.skipped)),
                "selected": list(d.selected), "scores": row["scores"], "reasons": row["reasons"],
                "skipped": row["skipped"], "work_caps": row["work_caps"], "epsilon": row["epsilon"],
                "preferred_duration_s": row["preferred_duration_s"]}

    def status_of(self, node: int, server_round: int) -> str:
        sel = self.selector
        if hasattr(sel, "quarantined") and sel.quarantined(node, server_round + 1):
            return "quarantined"
        if hasattr(sel, "on_probation") and sel.on_probation(node, server_round + 1):
            return "probation"
        return "active"

    def _emit_node_stats(self, server_round: int) -> None:
        """``node_stats`` events for this round's selected miners (O(selected), not O(registered))."""
        try:
            from fl_server.events import emit
        except ImportError:  # pragma: no cover - the event bus is optional
            return
        for node in self._selected:
            rec = self.stats.get(node)
            status = self.status_of(node, server_round)
            emit("node_stats", node_id=node, address=None,
                 latency_s=rec.last_duration_s if math.isfinite(rec.last_duration_s) else None,
                 reliability=rec.reliability, reputation=rec.reputation, status=status,
                 quarantined=status == "quarantined", timeouts=rec.timeouts, drops=rec.drops,
                 selections=rec.selections, completions=rec.completions)

    def _caps(self, chosen: Iterable[int], server_round: int) -> dict[int, int]:
        lw = self.local_work
        if not lw.enabled:
            return {}
        deadline = self.network.config.deadline_s if self.network is not None else 0.0
        preferred = self.selector.preferred_duration() if hasattr(self.selector, "preferred_duration") else math.nan
        if lw.target == "preferred" and math.isfinite(preferred):
            budget = min(preferred, deadline) if deadline > 0 else preferred
        else:
            budget = deadline if deadline > 0 else math.nan
        caps: dict[int, int] = {}
        for n in chosen:
            rec = self.stats.get(n)
            network_s = math.nan
            if self.network is not None:
                payload = (rec.last_upload_bytes or 0) + self.download_bytes
                network_s = self.network.expected_network_s(self.network.miner_of(n), server_round, payload)
            steps = plan_steps(self.stats, n, budget, network_s, lw)
            if steps is not None:
                caps[n] = steps
        return caps

    def arrive(self, server_round: int, facts: Iterable[ReplyFacts]) -> set[int]:
        """The nodes whose replies count: arrived (virtually) by the deadline. Others time out."""
        self._facts = {f.node: f for f in facts}
        if self.network is None:
            return set(self._facts)
        arrivals = {}
        for node, f in self._facts.items():
            miner = self.network.miner_of(node)
            train_s = self.network.train_seconds(f.train_seconds, f.examples)
            arrivals[node] = self.network.arrival(miner, server_round, train_s, f.upload_bytes, self.download_bytes)
        missing = [n for n in self._selected if n not in self._facts]
        d = self.decision
        self._timing = self.network.settle(arrivals, missing, quorum=d.quorum if d else 0,
                                           must_wait=d.must_wait if d else ())
        for node in sorted(self._timing.timed_out):
            a = self._timing.arrivals.get(node)
            log.info("round %d: miner %d timed out (%s)", server_round, node,
                     "lost" if a is None or a.dropped else f"{a.duration_s:.1f}s > deadline")
        return set(self._timing.on_time)

    def feedback(self, server_round: int, accepted: Iterable[int]) -> None:
        """Tell the selector what happened: ``accepted`` nodes counted; on-time others were rejected."""
        accepted = set(accepted)
        timing = self._timing
        completed: dict[int, Completion] = {}
        timed_out: dict[int, bool] = {}
        rejected: set[int] = set()
        cut: dict[int, float] = {}
        for node in self._selected:
            f = self._facts.get(node)
            if timing is not None and node in timing.cut:
                cut[node] = timing.duration_s
                continue
            if timing is not None and node in timing.timed_out:
                timed_out[node] = node in timing.dropped or node not in self._facts
                continue
            if f is None:
                timed_out[node] = True
                continue
            if node not in accepted:
                rejected.add(node)
                continue
            if timing is not None:
                a = timing.arrivals[node]
                completed[node] = Completion(a.duration_s, a.network_s, f.upload_bytes, f.train_loss, f.examples,
                                             a.compute_s, f.steps)
            else:
                completed[node] = Completion(f.train_seconds, math.nan, f.upload_bytes, f.train_loss, f.examples,
                                             f.train_seconds, f.steps)
        deadline = self.network.config.deadline_s if self.network is not None else math.nan
        self.selector.observe(RoundFeedback(server_round, completed, timed_out, frozenset(rejected), deadline, cut))
        sim = {}
        if timing is not None:
            sim = {"sim_round_s": round(timing.duration_s, 3), "sim_clock_s": round(self.network.clock.now_s, 3)}
        self._emit_node_stats(server_round)
        self._extra = {
            "policy": self.decision.policy if self.decision else "",
            "timeouts": len(timed_out),
            "dropped": sum(timed_out.values()),
            "cut": len(cut),
            **sim,
        }

    def chain_outcome(
        self, finalized: bool, participants: Iterable[int], revealed: Iterable[int],
        invalid: Iterable[int] = (), slashed: Iterable[int] = (),
    ) -> None:
        """On-chain reputation: a finalized round counts for its participants and valid reveals;
        invalid reveals and slashes (from the contract's events) count against, in any round."""
        if finalized:
            self.stats.chain_round(participants, revealed)
        self.stats.chain_faults(invalid, slashed)

    def round_extra(self) -> dict[str, Any]:
        extra = dict(self._extra)
        if self.decision is not None:
            extra["selected_ids"] = " ".join(str(n) for n in self.decision.selected)
            if self.decision.work_caps:
                extra["capped"] = len(self.decision.work_caps)
        return extra

    def write_jsonl(self, path: Path) -> None:
        """selection.jsonl: one decision per line (round, policy, selected, reasons, skipped, caps).
        Appends the decisions not yet written to ``path`` (the first call starts the file afresh)."""
        path = Path(path)
        done = self._written.get(path)
        with open(path, "a" if done is not None else "w") as fh:
            for d in self.decisions[done or 0:]:
                fh.write(json.dumps(d.to_dict()) + "\n")
        self._written[path] = len(self.decisions)


# -- wiring ---------------------------------------------------------------------------------------------
POLICIES = ("random", "oort", "oort_reputation")


def build_selector(cfg_selection: Mapping[str, Any], seed: int) -> RandomSelector | OortSelector:
    """The selector of ``cfg.selection`` (conf/selection/*.yaml); SelectionConfigError if invalid."""
    plain = _plain(cfg_selection)
    name = str(plain.get("name", "random"))
    per_round = int(plain.get("per_round", 0))
    min_available = int(plain.get("min_available", 1))
    overcommit = float(plain.get("overcommit", 1.0))
    if overcommit < 1:
        raise SelectionConfigError(f"selection.overcommit must be >= 1 (select that many x per_round), got {overcommit}")
    if name == "random":
        return RandomSelector(per_round=per_round, min_available=min_available, seed=seed, overcommit=overcommit)
    if name not in POLICIES:
        raise SelectionConfigError(f"selection.name must be one of {POLICIES}, got {name!r}")
    fields = set(OortConfig.__dataclass_fields__)
    oort = dict(plain.get("oort") or {})
    unknown = set(oort) - fields
    if unknown:
        raise SelectionConfigError(f"selection.oort has unknown keys {sorted(unknown)}; known: {sorted(fields)}")
    if per_round < 1:
        raise SelectionConfigError(f"selection={name} needs selection.per_round >= 1 (got {per_round})")
    return OortSelector(per_round, OortConfig(**oort), min_available, seed, name=name, overcommit=overcommit)


def build_local_work(cfg_selection: Mapping[str, Any]) -> LocalWorkConfig:
    plain = _plain(cfg_selection)
    lw = dict(plain.get("local_work") or {})
    unknown = set(lw) - set(LocalWorkConfig.__dataclass_fields__)
    if unknown:
        raise SelectionConfigError(f"selection.local_work has unknown keys {sorted(unknown)}")
    return LocalWorkConfig(**lw)


def build_controller(cfg_selection: Mapping[str, Any], network: NetworkSim | None, seed: int,
                     download_bytes: int = 0) -> SelectionController:
    """Selector + local work + simulator for the strategy (``selector=`` of ModelMineStrategy)."""
    return SelectionController(build_selector(cfg_selection, seed), network, build_local_work(cfg_selection),
                               download_bytes)


def build_selection(cfg: Any, download_bytes: int = 0) -> SelectionController:
    """The run's selection from the whole Hydra config: ``cfg.selection`` (policy, local work),
    ``cfg.network`` (simulated network; absent or ``perfect`` = none), ``cfg.seed``, ``cfg.num_miners``
    and ``cfg.strategy.round_timeout_s`` (what a lost reply costs without a deadline).
    ``download_bytes``: size of the broadcast model (it crosses each simulated link too)."""
    from fl_server.network_sim import build_network

    seed = int(cfg.seed)
    network_cfg = cfg.get("network") if hasattr(cfg, "get") else None
    timeout = float(cfg.strategy.round_timeout_s) if "strategy" in cfg else 600.0
    network = build_network(network_cfg, int(cfg.num_miners), seed, timeout)
    return build_controller(cfg.selection, network, seed, download_bytes)


def check_selection_config(cfg: Any) -> None:
    """Raise ValueError (SelectionConfigError or NetworkConfigError, one fixable line) if
    ``cfg.selection`` or ``cfg.network`` cannot work; builds nothing that lasts, touches nothing."""
    build_selection(cfg)


def _plain(cfg: Any) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return dict(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg or {})
