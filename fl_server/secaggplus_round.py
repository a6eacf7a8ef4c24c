"""The server's stage driver of ``secagg=secaggplus`` inside ModelMineStrategy's round (Message API).

One attempt, around the strategy's own train exchange:

1. ``prepare`` (before the train messages go out): ``query.secaggplus`` stage ``advertise`` to the
   selected miners -> signed keys of registered miners form the roster; stage ``share`` with the roster
   -> encrypted shares; the miners who shared form ``U2``. Each train message of a miner in ``U2``
   gets a ``secaggplus`` ConfigRecord: ``U2`` and the encrypted shares addressed to it.
2. the strategy's train exchange: each miner replies with its signed submission whose ciphertext is
   the masked input; ``SecureRound.verify`` checks signature, size and replay as for every backend.
3. ``aggregate`` (instead of the key service): stage ``unmask`` to the survivors (miners whose
   submission was accepted) -> shares; :func:`aggregator.secaggplus.unmask_sum` gives the sum over the
   survivors, which is dequantized to the mean update.

There is no key service: the aggregator needs ``t`` neighbours of every miner to answer, and each
honest miner answers only as the protocol allows (aggregator/secaggplus.py). A stage that yields too
few miners ends the attempt: ``prepare`` returns no train messages (the round is skipped, the global
model unchanged) or ``aggregate`` raises ``RoundFailed``; the run goes on.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from aggregator import quantize, shamir
from aggregator import secaggplus as sp
from aggregator.bsgs import CryptoError
from aggregator.protocol import RoundPlan
from fl_server.registry import RegistryError
from fl_server.secure_aggregation import Accepted, RoundFailed, SecureRound

log = logging.getLogger("modelmine.secaggplus")

MESSAGE_TYPE = "query.secaggplus"
RECORD = "secaggplus"  # ConfigRecord name in the replies and in the train messages


@dataclass
class AttemptState:
    """What the server knows of the running attempt."""

    tag: sp.RoundTag
    roster: tuple[sp.AdvertiseKeys, ...] = ()
    node_of: dict[int, int] = field(default_factory=dict)  # roster index -> node id
    u2: tuple[int, ...] = ()
    base_config: dict[str, Any] = field(default_factory=dict)
    stage_bytes: dict[int, int] = field(default_factory=dict)  # node -> bytes of its stage replies
    stage_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class SecAggPlusRound:
    """Drives the extra stages; ``simulate_dropout`` (benchmarks and tests only) withholds the train
    message from that fraction of ``U2``: those miners shared keys and then never send a masked input,
    exactly like miners that crash after stage 2."""

    secure: SecureRound
    config: sp.SecAggPlusConfig
    simulate_dropout: float = 0.0
    seed: int = 0
    timeout: float = 3600.0
    grid: Any = None
    attempt: AttemptState | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    failure: str = ""  # why the last prepare gave up ("" when it did not)

    def __post_init__(self) -> None:
        if not 0.0 <= self.simulate_dropout < 1.0:
            raise ValueError(f"simulate_dropout must be in [0, 1), got {self.simulate_dropout}")
        if self.config.bits != self.secure.settings.bits:
            raise ValueError("secaggplus bits differ from the round's quantization bits")

    # -- helpers ---------------------------------------------------------------------------------------
    def _stage_config(self, plan: RoundPlan) -> dict[str, Any]:
        return {
            "sap-degree-factor": float(self.config.degree_factor),
            "sap-threshold-fraction": float(self.config.threshold_fraction),
            "sap-min-survivors-fraction": float(self.config.min_survivors_fraction),
        }

    def _exchange(self, stage: str, payloads: dict[int, dict[str, Any]]) -> dict[int, ConfigRecord]:
        """Send stage ``stage`` to each node of ``payloads``; the ``secaggplus`` records of good replies."""
        assert self.attempt is not None and self.grid is not None
        messages = []
        for node, extra in payloads.items():
            config = ConfigRecord({**self.attempt.base_config, "sap-stage": stage, **extra})
            messages.append(Message(content=RecordDict({"config": config}), dst_node_id=node, message_type=MESSAGE_TYPE))
        t0 = time.perf_counter()
        replies = self.grid.send_and_receive(messages, timeout=self.timeout)
        self.attempt.stage_seconds[stage] = time.perf_counter() - t0
        out: dict[int, ConfigRecord] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("secaggplus %s: node %d refused or failed: %s", stage, node, reply.error.reason)
                continue
            if RECORD not in reply.content.config_records:
                log.warning("secaggplus %s: node %d sent no %s record", stage, node, RECORD)
                continue
            self.attempt.stage_bytes[node] = self.attempt.stage_bytes.get(node, 0) + sum(
                r.count_bytes() for r in reply.content.values()
            )
            out[node] = reply.content[RECORD]
        return out

    # -- stages 1 and 2 ------------------------------------------------------------------------------
    def prepare(self, grid: Any, plan: RoundPlan, messages: Iterable[Message], timeout: float) -> list[Message]:
        """Advertise and share keys among the nodes of ``messages`` (the strategy's train messages);
        returns the train messages of ``U2`` carrying their shares (empty when too few miners remain)."""
        self.grid, self.timeout, self.failure = grid, timeout, ""
        train = {m.metadata.dst_node_id: m for m in messages}
        tag = sp.tag_of(plan)
        base = {k: v for k, v in dict(next(iter(train.values())).content["config"]).items()} if train else {}
        self.attempt = AttemptState(tag=tag, base_config={**base, **self._stage_config(plan)})
        try:
            return self._prepare(plan, train)
        except (CryptoError, RoundFailed) as exc:
            log.error("secaggplus attempt %d: %s; no training this round", tag.attempt, exc)
            self.failure = str(exc)
            return []

    def _prepare(self, plan: RoundPlan, train: dict[int, Message]) -> list[Message]:
        assert self.attempt is not None
        tag = self.attempt.tag
        adverts: dict[int, sp.AdvertiseKeys] = {}
        for node, record in self._exchange("advertise", {node: {} for node in train}).items():
            try:
                advert = sp.AdvertiseKeys.from_bytes(bytes(record["sap-advert"]))  # type: ignore[arg-type]
                advert.verify(tag)
                self.secure.registry.bind(node, advert.address)  # registered miner, one node per address
            except (KeyError, CryptoError, RegistryError, ValueError) as exc:
                log.warning("secaggplus advertise: node %d rejected: %s", node, exc)
                continue
            adverts[node] = advert
        roster, rejected = sp.build_roster(tag, adverts.values())
        for reason in rejected:
            log.warning("secaggplus advertise: %s", reason)
        index_of_address = {a.address: i for i, a in enumerate(roster)}
        node_of = {index_of_address[a.address]: node for node, a in adverts.items() if a.address in index_of_address}
        params = sp.params_for(len(roster), self.config)  # raises below 3 miners
        if len(roster) < params.min_survivors:
            raise RoundFailed(f"{len(roster)} miners advertised keys < {params.min_survivors}")
        self.attempt.roster, self.attempt.node_of = roster, node_of
        roster_bytes = sp.roster_to_bytes(roster)
        graph = sp.neighbours(params.n, params.degree, sp.graph_seed(tag, [a.address for a in roster]))
        all_shares: list[sp.EncryptedShare] = []
        shared: list[int] = []
        replies = self._exchange("share", {node: {"sap-roster": roster_bytes} for node in node_of.values()})
        for index, node in node_of.items():
            if node not in replies:
                continue
            try:
                shares = sp.shares_from_bytes(bytes(replies[node]["sap-shares"]))  # type: ignore[arg-type]
            except (KeyError, CryptoError) as exc:
                log.warning("secaggplus share: node %d rejected: %s", node, exc)
                continue
            if sorted((s.src, s.dst) for s in shares) != [(index, v) for v in graph[index]]:
                log.warning("secaggplus share: node %d sent shares for the wrong neighbours", node)
                continue
            all_shares += shares
            shared.append(index)
        u2 = tuple(sorted(shared))
        if len(u2) < params.min_survivors:
            raise RoundFailed(f"{len(u2)} miners shared keys < {params.min_survivors}")
        routed = sp.route_shares(all_shares, u2)
        withheld = self._dropouts(u2)
        self.attempt.u2 = u2
        out = []
        for index in u2:
            if index in withheld:
                continue
            node = node_of[index]
            original = train[node]
            content = RecordDict(
                {
                    **dict(original.content.items()),
                    RECORD: ConfigRecord(
                        {"sap-u2": sp.indices_to_bytes(u2), "sap-incoming": sp.shares_to_bytes(routed[index])}
                    ),
                }
            )
            out.append(Message(content=content, dst_node_id=node, message_type=original.metadata.message_type))
        return out

    def _dropouts(self, u2: Sequence[int]) -> set[int]:
        count = int(self.simulate_dropout * len(u2))
        if not count:
            return set()
        assert self.attempt is not None
        rng = random.Random(f"{self.seed}/{self.attempt.tag.attempt}")
        return set(rng.sample(list(u2), count))

    # -- stage 4 -------------------------------------------------------------------------------------------
    def aggregate(self, plan: RoundPlan, accepted: list[Accepted]) -> np.ndarray:
        """Mean update (dense float64, length d) over the accepted miners, through the unmask stage."""
        if self.attempt is None or not self.attempt.roster:
            raise RoundFailed("no secaggplus attempt is running")
        state = self.attempt
        params = sp.params_for(len(state.roster), self.config)
        index_of_address = {a.address: i for i, a in enumerate(state.roster)}
        assert plan.support is not None
        k = int(plan.support.size)
        inputs: dict[int, np.ndarray] = {}
        for a in accepted:
            index = index_of_address.get(a.submission.address)
            if index is None or index not in state.u2 or state.node_of[index] != a.node_id:
                raise RoundFailed(f"submission of {a.submission.address} is not from a miner of U2")
            try:
                inputs[index] = sp.masked_from_bytes(a.submission.ciphertext, k, params.word_bits)
            except CryptoError as exc:
                raise RoundFailed(f"masked input of {a.submission.address}: {exc}") from exc
        survivors = sorted(inputs)
        if len(survivors) < params.min_survivors:
            raise RoundFailed(f"{len(survivors)} survivors < {params.min_survivors} required")
        payload = {"sap-survivors": sp.indices_to_bytes(survivors)}
        replies = self._exchange("unmask", {state.node_of[i]: payload for i in survivors})
        node_index = {node: i for i, node in state.node_of.items()}
        parsed = []
        for node, record in replies.items():
            try:
                reply = sp.UnmaskReply.from_bytes(bytes(record["sap-unmask"]))  # type: ignore[arg-type]
            except (KeyError, CryptoError) as exc:
                log.warning("secaggplus unmask: node %d sent a bad reply: %s", node, exc)
                continue
            if reply.src != node_index.get(node):
                log.warning("secaggplus unmask: node %d answered as index %d", node, reply.src)
                continue
            parsed.append(reply)
        try:
            total = sp.unmask_sum(state.tag, self.config, state.roster, state.u2, inputs, parsed, plan.support)
        except (CryptoError, shamir.ShamirError) as exc:
            raise RoundFailed(f"secaggplus unmasking failed: {exc}") from exc
        s = self.secure.settings
        dense = np.zeros(self.secure.d, dtype=np.float64)
        dense[plan.support] = quantize.dequantize_sum(total, len(survivors), s.clip, s.bits, mean=True)
        self.secure.prev_aggregate = dense
        self.history.append(
            {
                "attempt": float(state.tag.attempt),
                "roster": float(len(state.roster)),
                "u2": float(len(state.u2)),
                "survivors": float(len(survivors)),
                "degree": float(params.degree),
                "threshold": float(params.threshold),
                "stage_bytes_per_miner": float(np.mean(list(state.stage_bytes.values()))) if state.stage_bytes else 0.0,
                **{f"{k}_seconds": v for k, v in state.stage_seconds.items()},
            }
        )
        return dense


def from_config(secagg_cfg: Any, secure: SecureRound, seed: int = 0, num_miners: int | None = None) -> SecAggPlusRound:
    """The driver for ``cfg.secagg`` (conf/secagg/secaggplus.yaml); raises ValueError on bad settings."""
    config = sp.SecAggPlusConfig(
        bits=int(secagg_cfg.bits),
        degree_factor=float(secagg_cfg.get("degree_factor", 8.0)),
        threshold_fraction=float(secagg_cfg.get("threshold_fraction", 0.5)),
        min_survivors_fraction=float(secagg_cfg.get("min_survivors_fraction", 0.5)),
        min_survivors=max(2, int(getattr(secure, "threshold", 2))),  # the task's t, when it has one
    )
    if num_miners is not None and num_miners < 3:
        raise ValueError(f"secagg=secaggplus needs at least 3 miners per round, got {num_miners}")
    return SecAggPlusRound(secure, config, simulate_dropout=float(secagg_cfg.get("simulate_dropout", 0.0)), seed=seed)
