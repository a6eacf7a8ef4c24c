"""ModelMineStrategy: Flower message-API FedAvg with ModelMine's round loop.

Per round: select miners, send the global weights and the training config, validate every reply
(shape, finiteness, example count) and drop bad ones with a logged reason, average the valid
updates weighted by examples, apply them with a server learning rate and momentum, evaluate the
new global model on the server's test set, and hand a :class:`RoundRecord` to ``on_round``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from aggregator.models import flatten_state, model_hash, state_to_bytes, unflatten_like
from aggregator.protocol import ProtocolError, RoundPlan, SignedVote
from fl_server.chain_round import ChainSession
from fl_server.events import announce_chain_round, announce_finish, announce_round, announce_task, emit
from fl_server.results import RoundRecord
from fl_server.secaggplus_round import SecAggPlusRound
from fl_server.secure_aggregation import Accepted, ReplyRejected, RoundFailed, SecureRound, public_seed
from fl_server.selection import RandomSelector, SelectionController, reply_facts

log = logging.getLogger("modelmine.strategy")

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


@dataclass
class ServerOptimizer:
    """Applies the averaged update: w <- w + lr * (v <- momentum * v + (avg - w))."""

    lr: float = 1.0
    momentum: float = 0.0
    _velocity: np.ndarray | None = None

    def step(self, current: np.ndarray, average: np.ndarray) -> np.ndarray:
        delta = average - current
        if self.momentum:
            self._velocity = delta if self._velocity is None else self.momentum * self._velocity + delta
            delta = self._velocity
        return current + self.lr * delta


@dataclass(frozen=True)
class ValidUpdate:
    node_id: int
    weights: np.ndarray
    num_examples: int
    metrics: dict[str, float]
    upload_bytes: int


def reply_bytes(content: RecordDict) -> int:
    """Bytes of array payload in a reply (what crossed the wire for the model update)."""
    return sum(len(a.data) for rec in content.array_records.values() for a in rec.values())


def validate_reply(reply: Message, expected_size: int, arrayrecord_key: str = "arrays") -> ValidUpdate:
    """Turn a reply into a ValidUpdate or raise ReplyRejected with a specific reason."""
    node = reply.metadata.src_node_id
    if reply.has_error():
        raise ReplyRejected(f"miner {node} replied with an error: {reply.error.reason}")
    content = reply.content
    if arrayrecord_key not in content.array_records or "metrics" not in content.metric_records:
        raise ReplyRejected(f"miner {node} reply lacks '{arrayrecord_key}' or 'metrics'")
    metrics = {k: float(v) for k, v in content["metrics"].items() if isinstance(v, int | float)}
    n = int(metrics.get("num-examples", 0))
    if n <= 0:
        raise ReplyRejected(f"miner {node} reported num-examples={n}")
    try:
        weights = flatten_state(content[arrayrecord_key].to_torch_state_dict())
    except Exception as exc:  # malformed arrays from the network
        raise ReplyRejected(f"miner {node} sent unreadable arrays: {exc}") from exc
    if weights.shape != (expected_size,):
        raise ReplyRejected(f"miner {node} sent {weights.size} weights, model has {expected_size}")
    if not np.isfinite(weights).all():
        raise ReplyRejected(f"miner {node} sent NaN/Inf weights")
    return ValidUpdate(node, weights, n, metrics, reply_bytes(content))


class ModelMineStrategy(FedAvg):
    """FedAvg with adaptive-ready selection, reply validation, server optimizer and per-round records."""

    def __init__(
        self,
        selector: RandomSelector | SelectionController,
        server_optimizer: ServerOptimizer | None = None,
        on_round: Callable[[RoundRecord], None] | None = None,
        min_replies: int = 1,
        secure: SecureRound | None = None,
        chain: ChainSession | None = None,
        secaggplus: SecAggPlusRound | None = None,
    ) -> None:
        super().__init__(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
        self.selector = selector
        # selection, simulated network deadline, local work caps and per-miner feedback (fl_server/selection.py)
        self.selection = selector if isinstance(selector, SelectionController) else SelectionController(selector)
        self._counted: list[int] = []  # nodes whose update entered this round's aggregate
        self.server_optimizer = server_optimizer or ServerOptimizer()
        self.on_round = on_round
        # a secure round never decrypts a sum over fewer than the task's threshold t (defaults to t)
        self.min_replies = max(min_replies, secure.threshold) if secure is not None else min_replies
        self.records: list[RoundRecord] = []
        self.accepted: dict[int, list] = {}  # round -> accepted SignedSubmissions (commitments for the chain)
        self.rejections: list[tuple[int, str]] = []
        self.secure = secure
        self.chain = chain
        # Called with each candidate's safetensors bytes before it is proposed on chain (deployment:
        # upload to the model store so voters and auditors fetch exactly what is on chain).
        self.candidate_sink: Callable[[bytes], None] | None = None
        self.secaggplus = secaggplus  # secagg=secaggplus: extra key/share/unmask stages (fl_server/secaggplus_round.py)
        if chain is not None and secure is None:
            raise ValueError("on-chain rounds need commitments: enable DGC or a secagg backend (secure round)")
        self._accepted: list[Accepted] = []
        self._finalized: dict[str, torch.Tensor] | None = None
        self._global: dict[str, torch.Tensor] | None = None
        self._round_info: dict[str, float] = {}
        self._plan: RoundPlan | None = None
        self._selected: set[int] = set()

    # -- Flower hooks ------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        node_ids = self.selection.select(list(grid.get_node_ids()), server_round)
        config = ConfigRecord(dict(config))
        config["server-round"] = server_round
        if self.secure is not None:
            assert self._global is not None
            seed = public_seed(self.secure.settings.task_id, server_round, model_hash(state_to_bytes(self._global)))
            task_round = self.chain.round if self.chain is not None else None
            attempt = self.chain.next_attempt() if self.chain is not None else None
            self._plan = self.secure.plan(server_round, seed, task_round, attempt)
            if self.chain is not None:  # rules v2: the round is opened on chain with the selected miners
                addresses = [a for a in map(self.secure.registry.address_of, node_ids) if a is not None]
                self.chain.open_round(self._plan, addresses)
            for key, value in self._plan.to_config().items():
                config[key] = value
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        self._selected = set(node_ids)
        emit("selection", **self.selection.selection_event())
        self._round_info["selected"] = len(node_ids)
        return self._train_messages(record, node_ids)

    def _train_messages(self, record: RecordDict, node_ids: list[int]) -> list[Message]:
        """One train message per node; a node with a local work cap gets its own config with ``max-steps``."""
        caps = {n: c for n, c in self.selection.work_caps().items() if n in set(node_ids)}
        messages = list(self._construct_messages(record, [n for n in node_ids if n not in caps], "train"))
        for node, steps in sorted(caps.items()):
            config = ConfigRecord({**dict(record[self.configrecord_key]), "max-steps": int(steps)})
            capped = RecordDict({self.arrayrecord_key: record[self.arrayrecord_key], self.configrecord_key: config})
            messages += self._construct_messages(capped, [node], "train")
        return messages

    def _on_time(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """The replies that arrived by the round deadline on the simulated network (all without one);
        the others count as timeouts for the selector."""
        replies = list(replies)
        keep = self.selection.arrive(server_round, [reply_facts(r) for r in replies])
        return [r for r in replies if r.metadata.src_node_id in keep]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        assert self._global is not None, "start() sets the global model before the first round"
        current = flatten_state(self._global)
        replies = self._on_time(server_round, replies)
        if self.secure is not None:
            return self._aggregate_secure(server_round, replies, current)
        valid: list[ValidUpdate] = []
        for reply in replies:
            try:
                valid.append(validate_reply(reply, current.size, self.arrayrecord_key))
                emit("submission", round=server_round, node_id=valid[-1].node_id, accepted=True,
                     bytes=valid[-1].upload_bytes, train_seconds=valid[-1].metrics.get("train-seconds"))
            except ReplyRejected as exc:
                log.warning("round %d: rejected reply: %s", server_round, exc)
                emit("submission", round=server_round, node_id=reply.metadata.src_node_id, accepted=False,
                     reason=str(exc), bytes=reply_bytes(reply.content) if not reply.has_error() else 0)
                self.rejections.append((server_round, str(exc)))
        self._round_info["received"] = len(valid)
        self._counted = [u.node_id for u in valid]
        if len(valid) < self.min_replies:
            log.warning("round %d: %d valid replies < %d; global model unchanged", server_round, len(valid), self.min_replies)
            self._round_info.update(upload_bytes=0.0, train_loss=float("nan"), train_seconds=float("nan"))
            return None, None
        total = sum(u.num_examples for u in valid)
        average = sum(u.weights * (u.num_examples / total) for u in valid)
        new = self.server_optimizer.step(current, average)
        self._global = unflatten_like(new.astype(np.float32), self._global)
        self._round_info["upload_bytes"] = float(np.mean([u.upload_bytes for u in valid]))
        self._round_info["train_loss"] = sum(u.metrics.get("train-loss", 0.0) * u.num_examples for u in valid) / total
        self._round_info["train_seconds"] = float(np.mean([u.metrics.get("train-seconds", 0.0) for u in valid]))
        metrics = MetricRecord({"train-loss": self._round_info["train_loss"], "num-examples": total})
        return ArrayRecord(self._global), metrics

    def _aggregate_secure(
        self, server_round: int, replies: Iterable[Message], current: np.ndarray
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Verify signed, encrypted submissions and apply the decrypted mean of the valid set only."""
        assert self.secure is not None and self._plan is not None and self._global is not None
        accepted: list[Accepted] = []
        for reply in replies:
            try:
                accepted.append(self.secure.verify_reply(self._plan, reply, self._selected))
                emit("submission", round=server_round, node_id=accepted[-1].node_id, accepted=True,
                     address=accepted[-1].submission.address, bytes=accepted[-1].submission.wire_bytes,
                     train_seconds=accepted[-1].metrics.get("train-seconds"))
            except ReplyRejected as exc:
                log.warning("round %d: rejected reply: %s", server_round, exc)
                emit("submission", round=server_round, node_id=reply.metadata.src_node_id, accepted=False,
                     reason=str(exc), bytes=reply_bytes(reply.content) if not reply.has_error() else 0)
                self.rejections.append((server_round, str(exc)))
        info = self._round_info
        info["received"] = len(accepted)
        self._counted = [a.node_id for a in accepted]
        info["k"] = float(self._plan.support.size) if self._plan.support is not None else float("nan")
        info["upload_bytes"] = float(np.mean([a.submission.wire_bytes for a in accepted])) if accepted else 0.0
        info["train_loss"] = float(np.mean([a.metrics.get("train-loss", np.nan) for a in accepted])) if accepted else np.nan
        info["train_seconds"] = float(np.mean([a.metrics.get("train-seconds", np.nan) for a in accepted])) if accepted else np.nan
        info["protect_seconds"] = float(np.mean([a.metrics.get("protect-seconds", np.nan) for a in accepted])) if accepted else np.nan
        if self.chain is not None and accepted:  # commitments on chain before decryption: the key service reads I
            self.chain.commit(self._plan, accepted)
        if len(accepted) < self.min_replies:
            log.warning("round %d: %d valid submissions < %d; global model unchanged", server_round, len(accepted), self.min_replies)
            return None, None
        try:
            mean_update = (self.secaggplus or self.secure).aggregate(self._plan, accepted)
            if self.secaggplus is not None:  # the key, share and unmask replies are uploads too
                info["upload_bytes"] += self.secaggplus.history[-1]["stage_bytes_per_miner"]
        except RoundFailed as exc:
            log.error("round %d failed, global model unchanged: %s", server_round, exc)
            self.rejections.append((server_round, f"round failed: {exc}"))
            info["failed"] = 1.0
            return None, None
        self.accepted[server_round] = [a.submission for a in accepted]
        self._accepted = accepted
        new = self.server_optimizer.step(current, current + mean_update)
        self._global = unflatten_like(new.astype(np.float32), self._global)
        metrics = MetricRecord({"train-loss": info["train_loss"], "num-submissions": len(accepted)})
        return ArrayRecord(self._global), metrics

    def _vote(self, server_round: int, grid: Grid, arrays: ArrayRecord, config: ConfigRecord, timeout: float) -> dict:
        """Candidate block on chain, then the round's participants evaluate it, vote and reveal (signed);
        the votes and reveals are relayed in one batch. Returns the chain columns of the round."""
        assert self.chain is not None and self._plan is not None and self._global is not None
        candidate_bytes = state_to_bytes(self._global)
        candidate_hash = model_hash(candidate_bytes)
        if self.candidate_sink is not None:
            self.candidate_sink(candidate_bytes)
        proposal = self.chain.propose(self._plan, self._accepted, candidate_hash)
        request = self.chain.vote_request(candidate_hash, self._plan.task_key)
        voters = {a.node_id: a.submission.address for a in self._accepted}
        vote_config = ConfigRecord({**dict(config), **request.to_config()})
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: vote_config})
        replies = grid.send_and_receive(self._construct_messages(record, sorted(voters), "evaluate"), timeout=timeout)
        votes: list[SignedVote] = []
        for reply in replies:
            node = reply.metadata.src_node_id
            try:
                if reply.has_error() or "vote" not in reply.content.config_records:
                    raise ReplyRejected(f"node {node} sent no vote")
                signed = SignedVote.from_config(reply.content["vote"])
                if node not in voters:
                    raise ReplyRejected(f"node {node} is not a participant of round {self.chain.round}")
                self.chain.check_vote(signed, voters[node], candidate_hash)
                votes.append(signed)
            except (ReplyRejected, ProtocolError) as exc:
                log.warning("round %d: rejected vote: %s", server_round, exc)
                self.rejections.append((server_round, str(exc)))
        order = {a.submission.address: i for i, a in enumerate(self._accepted)}
        votes.sort(key=lambda v: order[v.address])
        participants = [(a.submission.address, a.submission.commitment) for a in self._accepted]
        outcome = self.chain.relay(candidate_hash, votes, participants, proposal.gas_used)
        announce_chain_round(self.chain, server_round, self._plan.round, candidate_hash,
                             [a for a, _ in participants], votes, outcome, proposal.gas_used)
        node_of = {address: n for n, address in voters.items()}

        def nodes(addresses: tuple[str, ...]) -> list[int]:
            return [node_of[a] for a in addresses if a in node_of]

        self.selection.chain_outcome(outcome.status == "finalized", list(voters), nodes(outcome.valid_reveals),
                                     invalid=nodes(outcome.invalid_reveals), slashed=nodes(outcome.slashed))
        if outcome.status == "finalized":
            self._finalized = self._global
        else:  # FLock-style: the round is retried from the last finalized model
            log.warning("round %d rejected on chain (%d/%d accept); reverting", server_round, outcome.accepts, outcome.votes)
            assert self._finalized is not None
            self._global = self._finalized
        return outcome.as_extra()

    # -- round loop ----------------------------------------------------------------------------
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
        first_round: int = 1,
    ) -> Result:
        """Run ``num_rounds`` rounds; ``evaluate_fn`` (server test set) is called after each one."""
        train_config = train_config or ConfigRecord()
        result = Result()
        arrays = initial_arrays
        self._global = initial_arrays.to_torch_state_dict()
        self._finalized = self._global
        if evaluate_fn:
            first = evaluate_fn(0, arrays)
            if first is not None:
                result.evaluate_metrics_serverapp[0] = first
        announce_task(self.chain, num_rounds, sorted(self.secure.registry.secagg_keys) if self.secure else ())
        known_nodes: set[int] = set()
        for server_round in range(first_round, num_rounds + 1):  # > 1 when resuming from a checkpoint
            self._round_info = {}
            known_nodes = announce_round(grid, server_round, known_nodes)
            t0 = time.perf_counter()
            messages = self.configure_train(server_round, arrays, train_config, grid)
            if self.secaggplus is not None and self._plan is not None:
                messages = self.secaggplus.prepare(grid, self._plan, messages, timeout)
            replies = grid.send_and_receive(messages=messages, timeout=timeout)
            t_agg = time.perf_counter()
            self._counted = []
            new_arrays, train_metrics = self.aggregate_train(server_round, replies)
            aggregate_seconds = time.perf_counter() - t_agg
            self.selection.feedback(server_round, self._counted)
            chain_extra: dict = {}
            if new_arrays is not None and self.chain is not None:
                chain_extra = self._vote(server_round, grid, new_arrays, train_config, timeout)
                new_arrays = ArrayRecord(self._global)
            if new_arrays is not None:
                arrays = result.arrays = new_arrays
            if train_metrics is not None:
                result.train_metrics_clientapp[server_round] = train_metrics
            round_seconds = time.perf_counter() - t0
            evaluation = evaluate_fn(server_round, arrays) if evaluate_fn else None
            if evaluation is not None:
                result.evaluate_metrics_serverapp[server_round] = evaluation
            info = self._round_info
            record = RoundRecord(
                round=server_round,
                accuracy=float(evaluation["accuracy"]) if evaluation else float("nan"),
                loss=float(evaluation["loss"]) if evaluation else float("nan"),
                round_seconds=round_seconds,
                upload_bytes_per_miner=info.get("upload_bytes", 0.0),
                selected=int(info.get("selected", 0)),
                received=int(info.get("received", 0)),
                aggregate_seconds=aggregate_seconds,
                train_loss=info.get("train_loss", float("nan")),
                train_seconds_mean=info.get("train_seconds", float("nan")),
                extra={**{k: info[k] for k in ("k", "protect_seconds", "failed") if k in info}, **chain_extra,
                       **self.selection.round_extra()},
            )
            self.records.append(record)
            emit("round_finished", round=server_round, record=record.row())
            if self.on_round:
                self.on_round(record)
        announce_finish(self.chain, self.records)
        result.arrays = arrays
        return result
