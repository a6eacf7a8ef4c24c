"""The task specification a miner trusts: every crypto and compression parameter of a task, as
canonical JSON whose keccak256 hash is published (on chain, or given to the miner out of band).

A miner never takes a security parameter from the server's round plan: it takes it from the
TaskSpec whose hash it trusts and refuses a plan that differs (:func:`check_plan`), naming the
field. Otherwise a malicious aggregator could put its own key in the place of the publisher's
(and decrypt one miner), downgrade to ``secagg=none`` or to ``support=local``.

Canonical JSON: UTF-8, keys sorted, no whitespace, ``ensure_ascii``, byte strings as lower-case
``0x``-hex, floats in Python's shortest round-trip ``repr``. ``spec_hash = keccak256(canonical)``.
Pure: no I/O.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

from eth_utils import keccak

from aggregator.dgc import k_for_density, warmup_density
from aggregator.protocol import ProtocolError

SPEC_VERSION = 1
MAX_SPEC_BYTES = 16_384
BACKENDS = ("none", "masked", "nddfe", "secaggplus")
SUPPORT_MODES = ("shared", "local")


class TaskSpecError(ProtocolError):
    """A task spec that is malformed, inconsistent or not the one the miner trusts."""


class PlanMismatch(TaskSpecError):
    """A round plan whose security parameter differs from the trusted task spec."""


@dataclass(frozen=True)
class TaskSpec:
    """Everything about a task that must not change between rounds (and that the server must not choose).

    ``threshold`` is t: the least number of submitters whose sum may ever be decrypted (>= 2 for
    every encrypted backend). ``d``, ``density`` and the warm-up schedule fix k of every round.
    """

    chain_id: int
    verifying_contract: str
    task_id: int
    publisher_public: bytes
    aggregator_public: bytes
    backend: str
    bits: int
    clip: float
    d: int
    support_mode: str
    density: float
    warmup_rounds: int
    warmup_start: float
    warmup_factor: float
    threshold: int
    model_hash: bytes = b""
    dataset: str = ""
    rounds: int = 0
    version: int = SPEC_VERSION
    # -- what the publisher posts (scripts/publish_task.py); defaults keep older specs parseable --
    architecture: str = ""  # aggregator.models architecture name
    model_kwargs: str = "{}"  # its constructor kwargs as canonical JSON (an object)
    min_samples: int = 0  # least training samples a miner must hold
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    explore_fraction: float = 0.5
    deadline: int = 0  # unix seconds (also on chain)
    round_window_s: int = 0
    reward_wei: int = 0  # escrowed at publish
    fee_bps: int = 0  # the contract's network fee when published
    aggregator_share_bps: int = 0
    quorum_bps: int = 0
    aggregator: str = ""  # the aggregator's Ethereum address
    target_commitment: bytes = b""  # keccak256(abi.encode(target_bps, nonce)); the target stays hidden
    seed: int = 0

    def __post_init__(self) -> None:
        if self.version != SPEC_VERSION:
            raise TaskSpecError(f"task spec version {self.version} != {SPEC_VERSION}")
        if self.backend not in BACKENDS:
            raise TaskSpecError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.support_mode not in SUPPORT_MODES:
            raise TaskSpecError(f"support_mode must be one of {SUPPORT_MODES}, got {self.support_mode!r}")
        if self.backend != "none" and self.support_mode != "shared":
            raise TaskSpecError("an encrypted task needs support_mode=shared (local support reveals coordinates)")
        if self.backend != "none" and self.threshold < 2:
            raise TaskSpecError(f"an encrypted task needs threshold >= 2, got {self.threshold}")
        if self.threshold < 1:
            raise TaskSpecError(f"threshold must be >= 1, got {self.threshold}")
        if not 2 <= self.bits <= 31:
            raise TaskSpecError(f"bits must be in [2, 31], got {self.bits}")
        for name in ("clip", "density", "warmup_start", "warmup_factor"):
            value = getattr(self, name)
            if not (isinstance(value, float) and math.isfinite(value) and value > 0):
                raise TaskSpecError(f"{name} must be a positive finite float, got {value!r}")
        if self.d < 1 or self.task_id < 0 or self.chain_id < 0 or self.warmup_rounds < 0 or self.rounds < 0:
            raise TaskSpecError("d must be >= 1 and task_id, chain_id, warmup_rounds, rounds >= 0")
        for name in ("publisher_public", "aggregator_public"):
            if len(getattr(self, name)) != 33:
                raise TaskSpecError(f"{name} must be a 33-byte compressed point")
        if not (self.verifying_contract.startswith("0x") and len(self.verifying_contract) == 42):
            raise TaskSpecError("verifying_contract must be a 0x-prefixed 20-byte address")
        self._check_publish_fields()

    def _check_publish_fields(self) -> None:
        """Range checks of the publisher's fields (each error names the field)."""
        try:
            kwargs = json.loads(self.model_kwargs)
        except ValueError as exc:
            raise TaskSpecError(f"model_kwargs must be a JSON object: {exc}") from exc
        if not isinstance(kwargs, dict):
            raise TaskSpecError("model_kwargs must be a JSON object")
        if self.min_samples < 0 or self.epochs < 1 or self.batch_size < 1:
            raise TaskSpecError("min_samples must be >= 0, epochs and batch_size >= 1")
        for name in ("lr", "momentum", "weight_decay", "explore_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, float) and math.isfinite(value) and value >= 0):
                raise TaskSpecError(f"{name} must be a finite float >= 0, got {value!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise TaskSpecError(f"optimizer must be sgd or adam, got {self.optimizer!r}")
        for name in ("fee_bps", "aggregator_share_bps", "quorum_bps"):
            if not 0 <= getattr(self, name) <= 10_000:
                raise TaskSpecError(f"{name} must be in [0, 10000], got {getattr(self, name)}")
        if self.deadline < 0 or self.round_window_s < 0 or self.reward_wei < 0 or self.seed < 0:
            raise TaskSpecError("deadline, round_window_s, reward_wei and seed must be >= 0")
        if self.aggregator and not (self.aggregator.startswith("0x") and len(self.aggregator) == 42):
            raise TaskSpecError("aggregator must be a 0x-prefixed 20-byte address")
        if len(self.target_commitment) not in (0, 32) or len(self.model_hash) not in (0, 32):
            raise TaskSpecError("target_commitment and model_hash must be 32 bytes (or empty)")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            out[key] = "0x" + value.hex() if isinstance(value, bytes) else value
        return out

    def to_canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)

    def spec_hash(self) -> bytes:
        """keccak256 of the canonical JSON: what the chain (or the miner's operator) publishes."""
        return keccak(self.to_canonical_json().encode())

    @classmethod
    def from_json(cls, text: str | bytes) -> TaskSpec:
        """Parse and validate; unknown or missing fields and wrong types raise TaskSpecError."""
        raw = text.encode() if isinstance(text, str) else bytes(text)
        if len(raw) > MAX_SPEC_BYTES:
            raise TaskSpecError(f"task spec of {len(raw)} bytes exceeds {MAX_SPEC_BYTES}")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise TaskSpecError(f"task spec is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise TaskSpecError("task spec must be a JSON object")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise TaskSpecError(f"task spec has unknown fields {unknown}")
        kwargs: dict[str, Any] = {}
        for name, f in known.items():
            if name not in data:
                if f.default is not MISSING:
                    continue
                raise TaskSpecError(f"task spec lacks field {name!r}")
            value = data[name]
            kind = f.type if isinstance(f.type, str) else f.type.__name__
            if kind == "bytes":
                if not (isinstance(value, str) and value.startswith("0x")):
                    raise TaskSpecError(f"task spec field {name!r} must be 0x-hex")
                try:
                    value = bytes.fromhex(value[2:])
                except ValueError as exc:
                    raise TaskSpecError(f"task spec field {name!r} is not hex") from exc
            elif kind == "int":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TaskSpecError(f"task spec field {name!r} must be an integer")
            elif kind == "float":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise TaskSpecError(f"task spec field {name!r} must be a number")
                value = float(value)
            elif kind == "str" and not isinstance(value, str):
                raise TaskSpecError(f"task spec field {name!r} must be a string")
            kwargs[name] = value
        return cls(**kwargs)

    def density_at(self, round_: int) -> float:
        """The DGC density of task round ``round_`` (the warm-up schedule applied to ``density``)."""
        return warmup_density(round_, self.density, self.warmup_rounds, self.warmup_start, self.warmup_factor)

    def k_at(self, round_: int) -> int:
        """The support size of task round ``round_``."""
        return k_for_density(self.d, self.density_at(round_))


def load_trusted(text: str | bytes, trusted_hashes: set[bytes] | frozenset[bytes]) -> TaskSpec:
    """Parse ``text`` and accept it only when its keccak256 is one of ``trusted_hashes`` (32 bytes each)."""
    spec = TaskSpec.from_json(text)
    digest = spec.spec_hash()
    raw = text.encode() if isinstance(text, str) else bytes(text)
    if keccak(raw) != digest:
        raise TaskSpecError("task spec is not in canonical form")
    if digest not in trusted_hashes:
        raise TaskSpecError(f"task spec hash 0x{digest.hex()} is not a trusted task (on chain / node config)")
    return spec


def check_plan(spec: TaskSpec, plan: Any) -> None:
    """Refuse a round plan whose security parameters are not the task's; raises PlanMismatch naming
    the first differing field. Checked: task id, chain and contract, both public keys, backend, bits,
    clip, d, support mode, density (schedule) and the support size k of the plan's round."""
    expected: list[tuple[str, Any, Any]] = [
        ("task_id", plan.task_id, spec.task_id),
        ("chain_id", plan.domain.chain_id, spec.chain_id),
        ("verifying_contract", plan.domain.verifying_contract.lower(), spec.verifying_contract.lower()),
        ("publisher_public", bytes(plan.publisher_public), spec.publisher_public),
        ("aggregator_public", bytes(plan.aggregator_public), spec.aggregator_public),
        ("backend", plan.backend, spec.backend),
        ("bits", plan.bits, spec.bits),
        ("clip", float(plan.clip), spec.clip),
        ("d", plan.d, spec.d),
        ("support_mode", plan.dgc.support, spec.support_mode),
        ("density", float(plan.dgc.density), spec.density),
    ]
    for name, got, want in expected:
        if got != want:
            shown = (lambda v: "0x" + v.hex()) if isinstance(want, bytes) else repr
            raise PlanMismatch(f"plan field {name!r} differs from the task: plan {shown(got)}, task {shown(want)}")
    k = spec.k_at(plan.round)
    if plan.support is not None and int(plan.support.size) != k:
        raise PlanMismatch(f"plan field 'k' differs from the task: plan {int(plan.support.size)}, task {k}")
    if abs(float(plan.density) - float(spec.density_at(plan.round))) > 1e-12:
        raise PlanMismatch(
            f"plan field 'density' differs from the task: plan {plan.density!r}, task {spec.density_at(plan.round)!r}"
        )

