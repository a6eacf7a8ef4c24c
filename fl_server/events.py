"""A tiny typed event bus: the server announces what happens, sinks (the run database) record it.

Contract:
- ``emit(kind, **payload)`` publishes on the process-wide default bus; it never raises (a failing
  subscriber is logged and skipped) and costs a function call when nobody listens.
- Payloads are JSON-able: numbers, strings, booleans, None, lists and dicts of them (hex-encode bytes).
- Kinds and payload keys the run database understands are listed in ``KINDS`` (extra keys are kept).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("modelmine.events")

KINDS: dict[str, tuple[str, ...]] = {
    "run_started": ("run_id", "config", "out_dir", "rounds", "num_miners", "dataset", "model"),
    "run_finished": ("status", "final_accuracy", "error"),
    "task_published": ("task_id", "contract", "rounds", "dataset", "reward_pool_wei", "model_hash"),
    "task_status": ("task_id", "status"),
    "round_started": ("round", "available"),
    "round_finished": ("round", "record"),
    "selection": ("round", "policy", "available", "selected", "scores", "reasons"),
    "node_joined": ("node_id", "round"),
    "node_dropped": ("node_id", "round"),
    "node_stats": ("node_id", "address", "latency_s", "reliability", "reputation", "status"),
    "submission": ("round", "node_id", "address", "accepted", "reason", "bytes", "train_seconds"),
    "candidate_block": ("round", "task_id", "task_round", "model_hash", "participants", "gas"),
    "vote": ("round", "task_id", "task_round", "address", "accept", "accuracy_bps"),
    "reveal": ("round", "task_id", "task_round", "address", "ok"),
    "block_finalized": ("round", "task_id", "task_round", "model_hash", "accepts", "votes", "gas"),
    "block_rejected": ("round", "task_id", "task_round", "model_hash", "accepts", "votes", "gas"),
    "reward": ("task_id", "round", "address", "amount_wei", "kind"),
    "stake": ("address", "amount_wei", "action"),
    "transaction": ("round", "function", "gas", "tx_hash", "status"),
}


def jsonable(value: Any) -> Any:
    """``value`` made JSON-safe: bytes to 0x-hex, NaN/Inf to None, tuples/sets to lists, numpy scalars to
    Python numbers, anything else unknown to ``str``."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            return jsonable(item())
        except (TypeError, ValueError):
            pass
    return str(value)


@dataclass(frozen=True)
class Event:
    """One thing that happened: ``kind`` (see ``KINDS``), a JSON-able ``payload`` and a UNIX time ``ts``."""

    kind: str
    payload: dict[str, Any]
    ts: float = field(default_factory=time.time)


Subscriber = Callable[[Event], None]


class EventBus:
    """Synchronous publish/subscribe; subscribers run in the publisher's thread, in subscription order."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add ``subscriber``; returns a function that removes it again."""
        with self._lock:
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

        return unsubscribe

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscribers)

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to every subscriber; a subscriber's exception is logged, never raised."""
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            try:
                subscriber(event)
            except Exception:  # a broken sink must not break a training round
                log.exception("event subscriber %r failed on %s", subscriber, event.kind)

    def emit(self, kind: str, /, **payload: Any) -> Event | None:
        """Build an :class:`Event` from ``kind`` and ``payload`` and publish it; None when nobody listens."""
        if not self._subscribers:
            return None
        try:
            event = Event(kind, jsonable(payload))
        except Exception:  # never let a bad payload reach the caller
            log.exception("cannot encode event %s", kind)
            return None
        self.publish(event)
        return event


default_bus = EventBus()


def emit(kind: str, /, **payload: Any) -> Event | None:
    """Publish on the process-wide default bus (what the strategy and chain code call)."""
    return default_bus.emit(kind, **payload)


# -- emission helpers for the strategy (duck-typed, cheap when nobody listens, never raise) -------------
def announce_round(grid: Any, server_round: int, known: set[int]) -> set[int]:
    """Emit ``round_started`` and ``node_joined``/``node_dropped`` against ``known``; returns the nodes now
    connected (``known`` unchanged when nobody listens or the grid cannot list nodes)."""
    if not default_bus.has_subscribers:
        return known
    try:
        current = {int(n) for n in grid.get_node_ids()}
    except Exception:
        log.debug("grid cannot list nodes", exc_info=True)
        return known
    emit("round_started", round=server_round, available=sorted(current))
    for node in sorted(current - known):
        emit("node_joined", node_id=node, round=server_round)
    for node in sorted(known - current):
        emit("node_dropped", node_id=node, round=server_round)
    return current


def announce_task(chain: Any, num_rounds: int, miners: Iterable[str] = ()) -> None:
    """Emit ``task_published`` (and the stakes of ``miners``, the run's enrolled miners) for a
    strategy's chain session. The miners are passed in, not read from the chain's logs: a scan of
    every registration would cost time that grows with all miners ever registered."""
    if chain is None or not default_bus.has_subscribers:
        return
    try:
        task = chain.client.task(chain.task_id)
        emit("task_published", task_id=chain.task_id, contract=chain.client.address, rounds=num_rounds,
             dataset=bytes(task.get("datasetType", b"")).rstrip(b"\0").decode(errors="replace"),
             reward_pool_wei=int(task.get("pool", 0)), model_hash=task.get("modelHash"),
             publisher=task.get("publisher"), deadline=task.get("deadline"))
        emit("task_status", task_id=chain.task_id, status="running")
        for address in miners:
            emit("stake", address=address, amount_wei=int(chain.client.miner(address).get("stake", 0)),
                 action="staked")
    except Exception:
        log.warning("cannot describe task %s for the run database", getattr(chain, "task_id", "?"), exc_info=True)


def announce_chain_round(chain: Any, server_round: int, task_round: int, model_hash: bytes,
                         participants: list[str], votes: list[Any], outcome: Any, propose_gas: int) -> None:
    """Emit the candidate block, each vote and reveal, the block's fate, the gas spent and every
    participant's reward of this round (read back from the contract's pending rewards)."""
    if chain is None or not default_bus.has_subscribers:
        return
    try:
        common = {"round": server_round, "task_id": chain.task_id, "task_round": task_round}
        emit("candidate_block", **common, model_hash=model_hash, participants=participants, gas=propose_gas)
        for v in votes:
            emit("vote", **common, address=v.address, accept=bool(v.vote.accept), accuracy_bps=int(v.vote.accuracyBps))
            if v.reveal is not None and outcome.status == "finalized":
                emit("reveal", **common, address=v.address, ok=True)
        kind = "block_finalized" if outcome.status == "finalized" else "block_rejected"
        emit(kind, **common, model_hash=model_hash, accepts=outcome.accepts, votes=outcome.votes, gas=outcome.gas_used)
        emit("transaction", round=server_round, function="propose", gas=propose_gas, status="ok")
        emit("transaction", round=server_round, function="votes+reveals+settle",
             gas=outcome.gas_used - propose_gas, status=outcome.status)
        if outcome.status == "finalized" and outcome.miners_paid_wei:
            seen: dict[str, int] = getattr(chain, "_mm_reward_seen", {})
            for address in participants:
                pending = chain.client.pending_rewards(chain.task_id, address)
                earned = pending - seen.get(address, 0)
                seen[address] = pending
                if earned > 0:
                    emit("reward", task_id=chain.task_id, round=server_round, address=address,
                         amount_wei=earned, kind="earned")
            chain._mm_reward_seen = seen
    except Exception:
        log.warning("cannot describe round %d's chain outcome for the run database", server_round, exc_info=True)


def announce_finish(chain: Any, records: list[Any]) -> None:
    """Emit ``run_finished`` (and the task's completion when on chain) after the last round."""
    if not default_bus.has_subscribers:
        return
    final = records[-1].accuracy if records else None
    if chain is not None:
        emit("task_status", task_id=chain.task_id, status="completed")
    emit("run_finished", status="finished", final_accuracy=final, rounds=len(records))
