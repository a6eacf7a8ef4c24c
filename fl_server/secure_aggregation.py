"""The server's half of a secure round: plan the round, verify submissions, decrypt only the sum.

``SecureRound`` never sees one miner's plaintext update in ``masked`` and ``nddfe`` modes: it checks
signatures and sizes of opaque ciphertexts, asks the publisher's key service for the key of the set
I that submitted valid, in-time payloads, and decrypts the sum over I. (``none`` is the plaintext
baseline: there the sum is computed in the clear.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np
from eth_utils import keccak
from flwr.app import Message, RecordDict

from aggregator import eip712, nddfe, quantize, secagg
from aggregator.dgc import DGCConfig, k_for_density
from aggregator.eip712 import Domain, SignatureError
from aggregator.node_binding import BindingError, check_binding
from aggregator.protocol import ProtocolError, RoundPlan, SignedSubmission, indices_from_bytes
from aggregator.support import select_support, select_support_layered
from aggregator.task_spec import TaskSpec, TaskSpecError, check_plan
from fl_server.data_prep import PartitionConfig, miner_dir
from fl_server.key_service import KeyServiceError, KeyServiceUnavailable
from fl_server.registry import MinerRegistry, RegistryError

log = logging.getLogger("modelmine.secure")


class ReplyRejected(ValueError):
    """A miner's reply that cannot be used; the message says why."""


class RoundFailed(RuntimeError):
    """The round produced no usable aggregate (too few submissions, key refused, decryption miss)."""


class KeyService(Protocol):
    """``fl_server.key_service.RemoteKeyService`` (deployment) or ``PublisherKeyService`` (simulation).
    Raises KeyServiceError when refused, KeyServiceUnavailable when it may work on a retry."""

    def functional_key(
        self, credential: bytes, task_id: int, round_: int, attempt: int, addresses: Sequence[str], indices: np.ndarray
    ) -> bytes: ...


@dataclass(frozen=True)
class SecureSettings:
    backend: str  # none | masked | nddfe
    bits: int
    clip: float
    dgc: DGCConfig
    explore_fraction: float
    task_id: int
    domain: Domain
    train_on_support: bool = True
    layer_sizes: tuple[int, ...] | None = None  # set: S_t is budgeted per layer (sqrt of its size)
    threshold: int = 2  # t: no sum over fewer than t miners is ever decrypted (1 allowed for none)
    key_deadline_s: float = 60.0  # retries of an unavailable key service stop after this
    key_backoff_s: float = 0.5  # first retry delay (doubles, capped at 8 s)


@dataclass(frozen=True)
class Accepted:
    node_id: int
    submission: SignedSubmission
    metrics: dict[str, float]
    indices: np.ndarray  # support the values are on (S_t, or the miner's own in local mode)


@dataclass
class SecureRound:
    settings: SecureSettings
    d: int
    registry: MinerRegistry
    key_service: KeyService
    credential: bytes = field(repr=False)
    publisher_public: bytes
    aggregator_public: bytes
    prev_aggregate: np.ndarray | None = None
    published_spec: TaskSpec | None = None  # deployment: the publisher's spec whose hash is on chain
    _seen: set[tuple[str, int, int]] = field(default_factory=set)  # (miner, task, epoch)

    def __post_init__(self) -> None:
        s = self.settings
        if s.backend not in secagg.ALL_BACKENDS:
            raise ValueError(f"secagg backend must be one of {secagg.ALL_BACKENDS}, got {s.backend!r}")
        if s.dgc.support == "local" and s.backend != "none":
            raise ValueError("dgc.support=local reveals each miner's coordinates: use it only with secagg=none")
        if s.threshold < (1 if s.backend == "none" else 2):
            raise ValueError(f"secagg threshold t must be >= 2 for an encrypted backend, got {s.threshold}")

    @property
    def threshold(self) -> int:
        """t: the least number of submitters whose sum is ever decrypted (1 for the plaintext baseline)."""
        return 1 if self.settings.backend == "none" else self.settings.threshold

    @cached_property
    def task_spec(self) -> TaskSpec:
        """The task's pinned parameters; miners trust its hash (on chain, or from their operator).
        ``published_spec`` when given (the publisher's, with its extra fields), else built from the
        settings (simulation)."""
        if self.published_spec is not None:
            return self.published_spec
        s = self.settings
        return TaskSpec(
            chain_id=s.domain.chain_id,
            verifying_contract=s.domain.verifying_contract,
            task_id=s.task_id,
            publisher_public=bytes(self.publisher_public),
            aggregator_public=bytes(self.aggregator_public),
            backend=s.backend,
            bits=s.bits,
            clip=float(s.clip),
            d=self.d,
            support_mode=s.dgc.support,
            density=float(s.dgc.density),
            warmup_rounds=int(s.dgc.warmup_rounds),
            warmup_start=float(s.dgc.warmup_start),
            warmup_factor=float(s.dgc.warmup_factor),
            threshold=self.threshold,
        )

    def plan(
        self, server_round: int, public_seed: bytes, task_round: int | None = None, attempt: int | None = None
    ) -> RoundPlan:
        """The plan of the task's round ``task_round`` (defaults to ``server_round``) in epoch
        ``attempt`` (the chain's per-task attempt counter; defaults to ``server_round``). Masks and
        keys are bound to the epoch: miners refuse one not above the last they encrypted for. The
        shared support comes from the last aggregate and ``public_seed``."""
        s = self.settings
        task_round = server_round if task_round is None else task_round
        density = s.dgc.density_at(task_round)
        support = None
        if s.dgc.support == "shared":
            k = k_for_density(self.d, density)
            if s.layer_sizes:
                support = select_support_layered(self.prev_aggregate, k, public_seed, s.layer_sizes, s.explore_fraction)
            else:
                support = select_support(self.prev_aggregate, k, public_seed, self.d, s.explore_fraction)
        plan = RoundPlan(
            task_id=s.task_id,
            round=task_round,
            d=self.d,
            backend=s.backend,
            bits=s.bits,
            clip=s.clip,
            support=support,
            density=density,
            dgc=s.dgc,
            publisher_public=self.publisher_public,
            aggregator_public=self.aggregator_public,
            domain=s.domain,
            train_on_support=s.train_on_support,
            epoch=server_round if attempt is None else attempt,
            task_spec=self.task_spec.to_canonical_json(),
        )
        try:  # the server's own settings must be the task's, or every miner would refuse the plan
            check_plan(self.task_spec, plan)
        except TaskSpecError as exc:
            raise ValueError(f"server settings differ from the published task spec: {exc}") from exc
        return plan

    def verify_reply(self, plan: RoundPlan, reply: Message, selected: set[int]) -> Accepted:
        """:meth:`verify` on a Flower reply (an error reply is rejected with its reason)."""
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise ReplyRejected(f"node {node} replied with an error: {reply.error.reason}")
        return self.verify(plan, node, reply.content, selected)

    def verify(self, plan: RoundPlan, node: int, content: RecordDict, selected: set[int]) -> Accepted:
        """Check one reply: from a selected node, signed by its registered miner, for this task and
        round, never seen before, with a ciphertext of exactly the expected size."""
        if node not in selected:
            raise ReplyRejected(f"node {node} was not selected for round {plan.round}")
        if "submission" not in content.config_records:
            raise ReplyRejected(f"node {node} sent no submission (plaintext weights are not accepted here)")
        try:
            sub = SignedSubmission.from_config(content["submission"])
        except ProtocolError as exc:
            raise ReplyRejected(f"node {node}: {exc}") from exc
        if sub.task_id != plan.task_id or sub.round != plan.round:
            raise ReplyRejected(
                f"node {node} submitted for task {sub.task_id} round {sub.round}, expected {plan.task_id}/{plan.round}"
            )
        key = (sub.address, sub.task_id, plan.crypto_round)
        if key in self._seen:
            raise ReplyRejected(f"replay: {sub.address} already submitted for round {plan.round}")
        if plan.support is not None:
            indices = plan.support
        else:
            try:
                indices = indices_from_bytes(sub.indices, plan.d)
            except (ProtocolError, ValueError) as exc:
                raise ReplyRejected(f"node {node}: bad indices: {exc}") from exc
            if indices.size > k_for_density(plan.d, plan.density):
                raise ReplyRejected(f"node {node} sent {indices.size} coordinates, more than the round's density allows")
        expected = secagg.ciphertext_size(plan.backend, int(indices.size), plan.bits)  # type: ignore[arg-type]
        if len(sub.ciphertext) != expected:
            raise ReplyRejected(f"node {node} ciphertext is {len(sub.ciphertext)} bytes, expected {expected}")
        if plan.backend == "nddfe":  # every point on the curve, or this miner alone is dropped
            try:
                nddfe.NddfeCiphertext.from_bytes(sub.ciphertext, int(indices.size)).parse()
            except secagg.SecAggError as exc:
                raise ReplyRejected(f"node {node} ({sub.address}): malformed ciphertext: {exc}") from exc
        try:
            eip712.verify(plan.domain, sub.message(plan.support_hash), sub.signature, sub.address)
            self._check_binding(plan, node, sub.address, content)
            self.registry.bind(node, sub.address)
        except (SignatureError, RegistryError, BindingError) as exc:
            raise ReplyRejected(f"node {node}: {exc}") from exc
        self._seen.add(key)
        metrics = {k: float(v) for k, v in content["metrics"].items()} if "metrics" in content.metric_records else {}
        return Accepted(node, sub, metrics, indices)

    def _check_binding(self, plan: RoundPlan, node: int, address: str, content: RecordDict) -> None:
        """The miner itself must sign that it answers from ``node`` (a relay cannot claim it)."""
        if "binding" not in content.config_records:
            raise BindingError(f"reply carries no node binding signed by {address}")
        record = content["binding"]
        if str(record.get("mm-address", "")).lower() != address.lower():
            raise BindingError(f"node binding is for {record.get('mm-address')}, the submission for {address}")
        check_binding(plan.domain, int(node), address, bytes(record.get("mm-binding-signature", b"")))

    def _functional_key(self, plan: RoundPlan, addresses: list[str]) -> bytes:
        """The key for ``addresses``, retrying an unavailable key service with backoff until
        ``settings.key_deadline_s``; raises RoundFailed when refused or still unavailable."""
        s = self.settings
        deadline = time.monotonic() + s.key_deadline_s
        delay, attempts = s.key_backoff_s, 0
        assert plan.support is not None
        while True:
            attempts += 1
            try:
                return self.key_service.functional_key(
                    self.credential, plan.task_id, plan.round, plan.crypto_round, addresses, plan.support
                )
            except (KeyServiceError, PermissionError) as exc:
                raise RoundFailed(f"key service refused: {exc}") from exc
            except (KeyServiceUnavailable, ConnectionError, TimeoutError, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    raise RoundFailed(f"key service unavailable after {attempts} attempts: {exc}") from exc
                log.warning("key service unavailable (attempt %d), retrying in %.1f s: %s", attempts, delay, exc)
                time.sleep(delay)
                delay = min(2 * delay, 8.0)

    def aggregate(self, plan: RoundPlan, accepted: list[Accepted]) -> np.ndarray:
        """Mean update (dense float64, length d) of the accepted set I, from the sum only."""
        if not accepted:
            raise RoundFailed("no valid submission")
        s = self.settings
        threshold = self.threshold
        if len(accepted) < threshold:
            raise RoundFailed(f"{len(accepted)} valid submissions < the task's threshold t={threshold}")
        n = len(accepted)
        total = np.zeros(self.d, dtype=np.float64)
        if plan.support is not None:
            ordered = sorted(accepted, key=lambda a: a.submission.address)
            addresses = [a.submission.address for a in ordered]
            key = self._functional_key(plan, addresses)
            try:
                summed = secagg.decrypt_sum(
                    plan.backend,  # type: ignore[arg-type]
                    [a.submission.ciphertext for a in ordered],
                    key,
                    n,
                    s.bits,
                    publisher_public=self.publisher_public,
                    aggregator_public=self.aggregator_public,
                )
            except (secagg.SecAggError, PermissionError) as exc:
                raise RoundFailed(f"secure aggregation failed: {exc}") from exc
            total[plan.support] = quantize.dequantize_sum(summed, n, s.clip, s.bits, mean=True)
        else:  # local support, plaintext only
            for a in accepted:
                plain_key = secagg.functional_key("none", None, [], plan.task_id, plan.crypto_round, a.indices)
                values = secagg.decrypt_sum("none", [a.submission.ciphertext], plain_key, 1, s.bits)
                total[a.indices] += quantize.dequantize(values, s.clip, s.bits)
            total /= n
        self.prev_aggregate = total
        return total


def public_seed(task_id: int, server_round: int, model_hash: bytes) -> bytes:
    """Seed of the exploration slice: public, and fixed once the previous model is fixed."""
    return keccak(b"modelmine/seed" + task_id.to_bytes(32, "big") + server_round.to_bytes(8, "big") + model_hash)



TRUSTED_TASKS_FILE = "trusted_tasks.txt"  # read by fl_client.secure_update.trusted_task_hashes


def trust_task_in_simulation(root: Path, part: PartitionConfig, spec: TaskSpec) -> None:
    """Simulation only (one program plays every operator): put the task spec's hash where each
    simulated miner's operator would, ``<miner folder>/trusted_tasks.txt``, as the miner's daemon does
    from the chain's task metadata hash in deployment. The miners then refuse any plan not pinned to it."""
    line = spec.spec_hash().hex()
    for index in range(part.num_miners):
        path = Path(miner_dir(root, part, index)) / TRUSTED_TASKS_FILE
        known = path.read_text().split() if path.exists() else []
        if line not in known:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as fh:
                fh.write(line + "\n")
