"""Simulated network and device conditions on a virtual clock (no real sleeping).

Each miner gets a *profile* (latency range, loss rate, bandwidth range, compute-speed range) by the
configured mix, deterministically from the seed. For a selected miner in a round the simulator turns
what really happened (its measured, or nominal, training time and the real bytes of its messages)
into a virtual duration::

    duration = train_seconds x speed_factor + latency + (upload_bytes + download_bytes) / bandwidth

and decides whether the reply is lost (probability = the profile's loss rate; a lost reply is a
timeout). The server waits for replies until the round deadline on the virtual clock and aggregates
what arrived by then; the round's virtual length is the last on-time arrival, or the deadline when
someone was late or lost.

Every draw comes from ``numpy.random.default_rng([seed, round, miner, stream])``: the outcome of a
miner in a round depends only on the seed, the round, the miner and its inputs, not on call order.

Miners are numbered 0..N-1. In a Flower run the strategy numbers the connected nodes by sorted node
id (:meth:`NetworkSim.index_nodes`), so "miner 3" of a scheduled event is the fourth-smallest node id.

Scheduled events (``events`` in conf/network/*.yaml), applied from their round on:
- ``{round: 5, miner: 3, action: degrade, profile: poor}``: miner 3 switches to profile ``poor``;
- ``{round: 4, miner: 7, action: disconnect, rounds: 3}``: miner 7 is offline for rounds 4-6
  (``rounds: 0`` = for good); an offline miner is not available for selection;
- ``{round: 9, miner: 7, action: reconnect}``: ends a disconnection early.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

INF = float("inf")


class NetworkConfigError(ValueError):
    """A network configuration that cannot be simulated (unknown profile, bad mix, bad event)."""


@dataclass(frozen=True)
class NetworkProfile:
    """Link and device class of a miner.

    ``loss`` is the probability that a round's reply is lost (it then counts as a timeout);
    ``bandwidth_mbps`` is drawn once per miner (per round when ``jitter_bandwidth``); ``latency_ms``
    is drawn per round; ``compute_factor`` multiplies the training time (1 = reference device),
    drawn once per miner.
    """

    name: str
    latency_ms: tuple[float, float] = (0.0, 0.0)
    loss: float = 0.0
    bandwidth_mbps: tuple[float, float] = (INF, INF)
    compute_factor: tuple[float, float] = (1.0, 1.0)
    jitter_bandwidth: bool = False

    def __post_init__(self) -> None:
        for label, (lo, hi) in (("latency_ms", self.latency_ms), ("bandwidth_mbps", self.bandwidth_mbps),
                                ("compute_factor", self.compute_factor)):
            if not (0 <= lo <= hi):
                raise NetworkConfigError(f"profile {self.name}: {label} must be a range 0 <= low <= high")
        if self.bandwidth_mbps[0] <= 0 or self.compute_factor[0] <= 0:
            raise NetworkConfigError(f"profile {self.name}: bandwidth and compute factor must be > 0")
        if not 0.0 <= self.loss < 1.0:
            raise NetworkConfigError(f"profile {self.name}: loss must be in [0, 1), got {self.loss}")


PROFILES: dict[str, NetworkProfile] = {
    "perfect": NetworkProfile("perfect"),
    "good": NetworkProfile("good", (10, 50), 0.001, (50, 100), (0.8, 1.5)),
    "average": NetworkProfile("average", (50, 150), 0.01, (10, 50), (1.5, 3.0)),
    "poor": NetworkProfile("poor", (150, 300), 0.05, (1, 5), (3.0, 6.0)),
    "unstable": NetworkProfile("unstable", (50, 500), 0.10, (1, 20), (1.5, 8.0), jitter_bandwidth=True),
}


@dataclass(frozen=True)
class NetworkEvent:
    round: int
    miner: int
    action: str  # degrade | disconnect | reconnect
    profile: str | None = None
    rounds: int = 0  # disconnect length; 0 = for good

    def __post_init__(self) -> None:
        if self.action not in ("degrade", "disconnect", "reconnect"):
            raise NetworkConfigError(f"event action must be degrade|disconnect|reconnect, got {self.action!r}")
        if self.round < 1 or self.miner < 0 or self.rounds < 0:
            raise NetworkConfigError(f"event {self}: round >= 1, miner >= 0, rounds >= 0")
        if self.action == "degrade" and not self.profile:
            raise NetworkConfigError(f"degrade event at round {self.round} for miner {self.miner} needs a profile")


@dataclass(frozen=True)
class NetworkConfig:
    """What conf/network/<name>.yaml holds (see that folder for the fields)."""

    name: str = "perfect"
    mix: Mapping[str, float] = field(default_factory=lambda: {"perfect": 1.0})
    deadline_s: float = 0.0  # round deadline on the virtual clock; 0 = wait for every reply
    train_time: str = "measured"  # measured (the miner's real train-seconds) | nominal
    nominal_seconds_per_example: float = 0.001
    download: bool = True  # the broadcast model crosses the link too
    events: tuple[NetworkEvent, ...] = ()
    profiles: Mapping[str, NetworkProfile] = field(default_factory=lambda: dict(PROFILES))

    def __post_init__(self) -> None:
        unknown = [p for p in self.mix if p not in self.profiles]
        if unknown:
            raise NetworkConfigError(f"network {self.name}: unknown profiles {unknown}; known: {sorted(self.profiles)}")
        if not self.mix or any(v < 0 for v in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise NetworkConfigError(f"network {self.name}: mix needs non-negative shares with a positive sum")
        if self.deadline_s < 0:
            raise NetworkConfigError(f"network {self.name}: deadline_s must be >= 0")
        if self.train_time not in ("measured", "nominal"):
            raise NetworkConfigError(f"network {self.name}: train_time must be measured|nominal")
        for e in self.events:
            if e.profile is not None and e.profile not in self.profiles:
                raise NetworkConfigError(f"network {self.name}: event names unknown profile {e.profile!r}")

    @property
    def is_perfect(self) -> bool:
        """No delays, no loss, no deadline, no events: the simulator changes nothing."""
        return (
            all(self.profiles[p] == NetworkProfile(p) for p, share in self.mix.items() if share > 0)
            and self.deadline_s == 0
            and not self.events
        )

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> NetworkConfig:
        """Build from a plain mapping (a resolved Hydra node); unknown keys are an error."""
        known = {"name", "mix", "deadline_s", "train_time", "nominal_seconds_per_example", "download", "events",
                 "profiles"}
        extra = set(cfg) - known
        if extra:
            raise NetworkConfigError(f"network config has unknown keys {sorted(extra)}; known: {sorted(known)}")
        profiles = dict(PROFILES)
        for name, spec in dict(cfg.get("profiles") or {}).items():
            base = profiles.get(name, NetworkProfile(name))
            spec = dict(spec)
            for key in ("latency_ms", "bandwidth_mbps", "compute_factor"):
                if key in spec:
                    spec[key] = tuple(float(x) for x in spec[key])
            try:
                profiles[name] = replace(base, **spec)
            except TypeError as exc:
                raise NetworkConfigError(f"profile {name}: {exc}") from exc
        events = tuple(NetworkEvent(**dict(e)) for e in (cfg.get("events") or []))
        return cls(
            name=str(cfg.get("name", "custom")),
            mix={str(k): float(v) for k, v in dict(cfg.get("mix") or {"perfect": 1.0}).items()},
            deadline_s=float(cfg.get("deadline_s", 0.0)),
            train_time=str(cfg.get("train_time", "measured")),
            nominal_seconds_per_example=float(cfg.get("nominal_seconds_per_example", 0.001)),
            download=bool(cfg.get("download", True)),
            events=events,
            profiles=profiles,
        )


@dataclass(frozen=True)
class Arrival:
    """One selected miner's reply on the virtual clock."""

    miner: int
    profile: str
    compute_s: float
    network_s: float
    dropped: bool

    @property
    def duration_s(self) -> float:
        """Seconds from dispatch to arrival; infinite when the reply was lost."""
        return INF if self.dropped else self.compute_s + self.network_s

    def on_time(self, deadline_s: float) -> bool:
        return not self.dropped and (deadline_s <= 0 or self.duration_s <= deadline_s)


@dataclass(frozen=True)
class RoundTiming:
    """What the server saw by the deadline of one round."""

    arrivals: dict[int, Arrival]
    on_time: frozenset[int]
    timed_out: frozenset[int]  # late or lost
    dropped: frozenset[int]
    duration_s: float  # virtual length of the round
    cut: frozenset[int] = frozenset()  # arrived in time but after the round closed at its quorum


@dataclass
class VirtualClock:
    """Simulated wall time: advances by the virtual length of each round (never sleeps)."""

    now_s: float = 0.0

    def advance(self, seconds: float) -> float:
        if seconds < 0 or math.isnan(seconds):
            raise ValueError(f"the clock only moves forward, got {seconds}")
        self.now_s += seconds
        return self.now_s


class NetworkSim:
    """Profiles, events and the virtual clock of one run (see the module docstring)."""

    def __init__(self, config: NetworkConfig, num_miners: int, seed: int = 0, fallback_timeout_s: float = 600.0):
        if num_miners < 1:
            raise NetworkConfigError("the network needs at least one miner")
        self.config = config
        self.num_miners = num_miners
        self.seed = int(seed)
        self.fallback_timeout_s = float(fallback_timeout_s)
        self.clock = VirtualClock()
        self.base_profiles = self._assign(num_miners)
        rng = np.random.default_rng([self.seed, 0xC0DE])
        self._compute_draw = rng.random(num_miners)  # position inside the profile's compute range
        self._bandwidth_draw = rng.random(num_miners)
        self._node_index: dict[int, int] = {}

    # -- assignment -------------------------------------------------------------------------------
    def _assign(self, n: int) -> list[str]:
        """Exact shares by largest remainder, then a seeded shuffle over the miners."""
        shares = {k: v for k, v in self.config.mix.items() if v > 0}
        total = sum(shares.values())
        exact = {k: n * v / total for k, v in shares.items()}
        counts = {k: int(math.floor(x)) for k, x in exact.items()}
        for k in sorted(exact, key=lambda k: (-(exact[k] - counts[k]), k))[: n - sum(counts.values())]:
            counts[k] += 1
        names = [k for k in sorted(counts) for _ in range(counts[k])]
        order = np.random.default_rng([self.seed, 0xA551]).permutation(n)
        return [names[int(i)] for i in order]

    def index_nodes(self, node_ids: Iterable[int]) -> dict[int, int]:
        """Number nodes 0..N-1 by sorted id on first sight (later newcomers get the next numbers)."""
        for node in sorted(int(n) for n in node_ids):
            if node not in self._node_index:
                self._node_index[node] = len(self._node_index) % self.num_miners
        return self._node_index

    def miner_of(self, node_id: int) -> int:
        return self.index_nodes([node_id])[int(node_id)]

    # -- state at a round ---------------------------------------------------------------------------
    def profile_at(self, miner: int, server_round: int) -> NetworkProfile:
        name = self.base_profiles[miner]
        for e in sorted(self.config.events, key=lambda e: e.round):
            if e.miner == miner and e.action == "degrade" and e.round <= server_round:
                name = str(e.profile)
        return self.config.profiles[name]

    def online(self, miner: int, server_round: int) -> bool:
        offline = False
        for e in sorted(self.config.events, key=lambda e: e.round):
            if e.miner != miner or e.round > server_round:
                continue
            if e.action == "disconnect":
                offline = e.rounds == 0 or server_round < e.round + e.rounds
            elif e.action == "reconnect":
                offline = False
        return not offline

    def available(self, miners: Sequence[int], server_round: int) -> list[int]:
        return [m for m in miners if self.online(m, server_round)]

    def compute_factor(self, miner: int, server_round: int) -> float:
        lo, hi = self.profile_at(miner, server_round).compute_factor
        return lo + (hi - lo) * float(self._compute_draw[miner])

    def bandwidth_bps(self, miner: int, server_round: int) -> float:
        p = self.profile_at(miner, server_round)
        lo, hi = p.bandwidth_mbps
        if math.isinf(hi):
            return INF
        u = np.random.default_rng([self.seed, server_round, miner, 2]).random() if p.jitter_bandwidth else (
            float(self._bandwidth_draw[miner]))
        return (lo + (hi - lo) * float(u)) * 1e6 / 8

    def expected_network_s(self, miner: int, server_round: int, payload_bytes: float) -> float:
        """Mean latency plus transfer time of ``payload_bytes`` (what a scheduler can plan with)."""
        p = self.profile_at(miner, server_round)
        bw = self.bandwidth_bps(miner, server_round)
        transfer = 0.0 if math.isinf(bw) else payload_bytes / bw
        return sum(p.latency_ms) / 2 / 1000 + transfer

    # -- one round -----------------------------------------------------------------------------------
    def train_seconds(self, measured_s: float, examples_processed: int) -> float:
        """The reference-device training time: measured, or nominal per example (deterministic)."""
        if self.config.train_time == "nominal":
            return self.config.nominal_seconds_per_example * max(int(examples_processed), 0)
        return max(float(measured_s), 0.0)

    def arrival(
        self,
        miner: int,
        server_round: int,
        train_seconds: float,
        upload_bytes: int,
        download_bytes: int = 0,
    ) -> Arrival:
        """The virtual arrival of ``miner``'s reply in ``server_round`` (``train_seconds`` on the
        reference device; see :meth:`train_seconds`)."""
        p = self.profile_at(miner, server_round)
        rng = np.random.default_rng([self.seed, server_round, miner, 1])
        lo, hi = p.latency_ms
        latency = (lo + (hi - lo) * rng.random()) / 1000
        dropped = bool(rng.random() < p.loss)
        bw = self.bandwidth_bps(miner, server_round)
        moved = upload_bytes + (download_bytes if self.config.download else 0)
        transfer = 0.0 if math.isinf(bw) else moved / bw
        compute = train_seconds * self.compute_factor(miner, server_round)
        return Arrival(miner, p.name, compute, latency + transfer, dropped)

    def settle(self, arrivals: Mapping[int, Arrival], missing: Iterable[int] = (), quorum: int = 0,
               must_wait: Iterable[int] = ()) -> RoundTiming:
        """Apply the deadline: on-time replies are kept; late, lost and ``missing`` ones time out.
        The round lasts until the last on-time arrival, or the deadline when anyone timed out
        (without a deadline, a lost reply costs ``fallback_timeout_s``).

        With ``quorum`` > 0 (over-selection) the round closes as soon as ``quorum`` replies and every
        on-time ``must_wait`` reply have arrived; on-time replies after that are ``cut``. Advances the clock."""
        deadline = self.config.deadline_s
        in_time = {k for k, a in arrivals.items() if a.on_time(deadline)}
        timed_out = frozenset(set(arrivals) - in_time) | frozenset(missing)
        dropped = frozenset(k for k, a in arrivals.items() if a.dropped)
        cut: frozenset[int] = frozenset()
        if 0 < quorum < len(in_time):
            by_time = sorted(in_time, key=lambda k: (arrivals[k].duration_s, k))
            close = max([arrivals[by_time[quorum - 1]].duration_s]
                        + [arrivals[k].duration_s for k in must_wait if k in in_time])
            on_time = frozenset(k for k in in_time if arrivals[k].duration_s <= close)
            cut = frozenset(in_time - on_time)
            duration = close
        else:
            on_time = frozenset(in_time)
            last = max((arrivals[k].duration_s for k in on_time), default=0.0)
            wait_for_late = deadline if deadline > 0 else self.fallback_timeout_s
            duration = wait_for_late if timed_out else last
        self.clock.advance(duration)
        return RoundTiming(dict(arrivals), on_time, timed_out, dropped, duration, cut)

    def describe(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for p in self.base_profiles:
            counts[p] = counts.get(p, 0) + 1
        return {"network": self.config.name, "profiles": counts, "deadline_s": self.config.deadline_s,
                "events": len(self.config.events)}


def build_network(cfg_network: Mapping[str, Any] | None, num_miners: int, seed: int,
                  fallback_timeout_s: float = 600.0) -> NetworkSim | None:
    """The run's simulator from ``cfg.network`` (None when absent or perfect: nothing to simulate).

    Raises NetworkConfigError (a one-line, fixable message) on a bad configuration.
    """
    if cfg_network is None:
        return None
    plain = _plain(cfg_network)
    config = NetworkConfig.from_mapping(plain)
    if config.is_perfect:
        return None
    return NetworkSim(config, num_miners, seed, fallback_timeout_s)


def _plain(cfg: Any) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return dict(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        pass
    return dict(cfg)
