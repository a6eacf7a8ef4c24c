"""The secure round's wire protocol: what the server asks (RoundPlan) and what a miner answers
(Submission payload), as plain dataclasses with (de)serialization to Flower ConfigRecord values.

Both sides import this module so the keys and byte formats cannot drift. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from eth_utils import keccak

from aggregator.dgc import DGCConfig
from aggregator.eip712 import Domain, Reveal, Submission, Vote
from aggregator.support import support_hash, validate_indices

PROTOCOL_VERSION = 1


class ProtocolError(ValueError):
    """A round plan or submission whose fields are missing, mistyped or inconsistent."""


def indices_to_bytes(indices: np.ndarray) -> bytes:
    """Support indices as uint32 little-endian bytes (the bytes ``support_hash`` hashes)."""
    return validate_indices(indices).astype("<u4").tobytes()


def indices_from_bytes(data: bytes, d: int) -> np.ndarray:
    if not isinstance(data, bytes | bytearray) or len(data) % 4:
        raise ProtocolError("support must be bytes holding uint32 indices")
    return validate_indices(np.frombuffer(bytes(data), dtype="<u4").astype(np.int64), d)


def task_key(domain: Domain, task_id: int, publisher_public: bytes) -> str:
    raw = domain.chain_id.to_bytes(32, "big") + bytes.fromhex(domain.verifying_contract[2:]) + task_id.to_bytes(32, "big")
    return keccak(raw + publisher_public).hex()[:16]


@dataclass(frozen=True)
class RoundPlan:
    """Everything a selected miner needs to produce its round-``round`` submission."""

    task_id: int
    round: int  # the task's round on chain (repeats when a rejected round is retried); signed
    d: int  # flattened model size
    backend: str  # none | masked | nddfe
    bits: int
    clip: float
    support: np.ndarray | None  # shared S_t (sorted int64); None in local-support mode
    density: float  # this round's DGC density (local mode uses it for top-k)
    dgc: DGCConfig
    publisher_public: bytes
    aggregator_public: bytes
    domain: Domain
    train_on_support: bool = True  # shared mode: miners train only the coordinates in S_t
    epoch: int = 0  # the attempt: the contract's per-task attempt counter (RoundState.epoch); keys the masks
    task_spec: str = ""  # canonical JSON of aggregator.task_spec.TaskSpec; miners pin every parameter to it

    @property
    def attempt(self) -> int:
        """The attempt (epoch) of this round: unique per task, increases with every (re)try."""
        return self.epoch

    @property
    def task_key(self) -> str:
        """Names this task's miner-side state: (chain, contract, task id, publisher key) are unique
        per published task, while a bare task id repeats across chains and deployments."""
        return task_key(self.domain, self.task_id, self.publisher_public)

    @property
    def crypto_round(self) -> int:
        """What masks and functional keys are bound to: the epoch (or the round when unset)."""
        return self.epoch or self.round

    @property
    def support_hash(self) -> bytes:
        return support_hash(self.support) if self.support is not None else keccak(b"local-support")

    def grad_mask(self) -> np.ndarray | None:
        """0/1 float32 vector over the flattened model for support-restricted training, or None."""
        if self.support is None or not self.train_on_support or self.support.size == self.d:
            return None
        mask = np.zeros(self.d, dtype=np.float32)
        mask[self.support] = 1.0
        return mask

    def to_config(self) -> dict[str, Any]:
        """Values for a Flower ConfigRecord (keys prefixed ``mm-``)."""
        cfg = self.dgc
        return {
            "mm-version": PROTOCOL_VERSION,
            "mm-task-id": self.task_id,
            "mm-round": self.round,
            "mm-d": self.d,
            "mm-backend": self.backend,
            "mm-bits": self.bits,
            "mm-clip": float(self.clip),
            "mm-support": indices_to_bytes(self.support) if self.support is not None else b"",
            "mm-support-mode": cfg.support,
            "mm-density": float(self.density),
            "mm-dgc-target-density": float(cfg.density),
            "mm-dgc-momentum": float(cfg.momentum),
            "mm-dgc-clip-norm": float(cfg.clip_norm or 0.0),
            "mm-dgc-momentum-masking": bool(cfg.momentum_masking),
            "mm-publisher-public": self.publisher_public,
            "mm-aggregator-public": self.aggregator_public,
            "mm-chain-id": self.domain.chain_id,
            "mm-verifying-contract": self.domain.verifying_contract,
            "mm-train-on-support": bool(self.train_on_support),
            "mm-epoch": self.epoch,
            "mm-task-spec": self.task_spec,
        }

    @classmethod
    def from_config(cls, config: Any) -> RoundPlan:
        """Parse a ConfigRecord (or dict); raises ProtocolError naming the bad field."""
        try:
            if int(config["mm-version"]) != PROTOCOL_VERSION:
                raise ProtocolError(f"protocol version {config['mm-version']} != {PROTOCOL_VERSION}")
            d = int(config["mm-d"])
            mode = str(config["mm-support-mode"])
            clip_norm = float(config["mm-dgc-clip-norm"])
            dgc = DGCConfig(
                density=float(config["mm-dgc-target-density"]),
                momentum=float(config["mm-dgc-momentum"]),
                clip_norm=clip_norm if clip_norm > 0 else None,
                momentum_masking=bool(config["mm-dgc-momentum-masking"]),
                support=mode,  # type: ignore[arg-type]
            )
            support = indices_from_bytes(config["mm-support"], d) if mode == "shared" else None
            return cls(
                task_id=int(config["mm-task-id"]),
                round=int(config["mm-round"]),
                d=d,
                backend=str(config["mm-backend"]),
                bits=int(config["mm-bits"]),
                clip=float(config["mm-clip"]),
                support=support,
                density=float(config["mm-density"]),
                dgc=dgc,
                publisher_public=bytes(config["mm-publisher-public"]),
                aggregator_public=bytes(config["mm-aggregator-public"]),
                domain=Domain(int(config["mm-chain-id"]), str(config["mm-verifying-contract"])),
                train_on_support=bool(config["mm-train-on-support"]),
                epoch=int(config["mm-epoch"]),
                task_spec=str(config["mm-task-spec"]) if "mm-task-spec" in config else "",
            )
        except KeyError as exc:
            raise ProtocolError(f"round plan lacks field {exc}") from exc
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ProtocolError):
                raise
            raise ProtocolError(f"malformed round plan: {exc}") from exc


@dataclass(frozen=True)
class SignedSubmission:
    """A miner's answer: encrypted quantized update, score commitment and EIP-712 signature.

    In ``local`` support mode (plaintext only) ``indices`` carries the miner's own top-k indices.
    """

    address: str
    task_id: int
    round: int
    ciphertext: bytes
    commitment: bytes
    signature: bytes
    indices: bytes = b""
    attempt: int = 1  # the chain's attempt (RoundPlan.attempt); signed and in the commitment

    def message(self, support_hash_: bytes) -> Submission:
        """The EIP-712 Submission this payload claims to be signed over."""
        return Submission(
            taskId=self.task_id,
            round=self.round,
            supportHash=support_hash_,
            ciphertextHash=keccak(self.ciphertext),
            commitment=self.commitment,
            attempt=self.attempt,
        )

    def to_config(self) -> dict[str, Any]:
        return {
            "mm-address": self.address,
            "mm-task-id": self.task_id,
            "mm-round": self.round,
            "mm-ciphertext": self.ciphertext,
            "mm-commitment": self.commitment,
            "mm-signature": self.signature,
            "mm-indices": self.indices,
            "mm-attempt": self.attempt,
        }

    @classmethod
    def from_config(cls, config: Any) -> SignedSubmission:
        try:
            sub = cls(
                address=str(config["mm-address"]),
                task_id=int(config["mm-task-id"]),
                round=int(config["mm-round"]),
                ciphertext=bytes(config["mm-ciphertext"]),
                commitment=bytes(config["mm-commitment"]),
                signature=bytes(config["mm-signature"]),
                indices=bytes(config.get("mm-indices", b"")) if hasattr(config, "get") else b"",
                attempt=int(config["mm-attempt"]) if "mm-attempt" in config else 1,
            )
        except KeyError as exc:
            raise ProtocolError(f"submission lacks field {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed submission: {exc}") from exc
        if len(sub.commitment) != 32:
            raise ProtocolError("commitment must be 32 bytes")
        if len(sub.signature) != 65:
            raise ProtocolError("signature must be 65 bytes")
        return sub

    @property
    def wire_bytes(self) -> int:
        """Bytes of the payload fields (ciphertext, indices, commitment, signature, address)."""
        return len(self.ciphertext) + len(self.indices) + 32 + 65 + 20


@dataclass(frozen=True)
class VoteRequest:
    """The server asks a round's participants to judge the candidate model (sent with its weights)."""

    task_id: int
    round: int
    model_hash: bytes
    domain: Domain
    tolerance: float  # accept when local accuracy >= last accepted local accuracy - tolerance
    task_key: str = ""  # RoundPlan.task_key: where the miner keeps this task's openings
    attempt: int = 1  # the chain's attempt of this round: signed in the vote and the reveal

    def to_config(self) -> dict[str, Any]:
        return {
            "mm-vote": PROTOCOL_VERSION,
            "mm-attempt": self.attempt,
            "mm-task-key": self.task_key,
            "mm-task-id": self.task_id,
            "mm-round": self.round,
            "mm-model-hash": self.model_hash,
            "mm-chain-id": self.domain.chain_id,
            "mm-verifying-contract": self.domain.verifying_contract,
            "mm-tolerance": float(self.tolerance),
        }

    @classmethod
    def from_config(cls, config: Any) -> VoteRequest:
        try:
            req = cls(
                task_id=int(config["mm-task-id"]),
                round=int(config["mm-round"]),
                model_hash=bytes(config["mm-model-hash"]),
                domain=Domain(int(config["mm-chain-id"]), str(config["mm-verifying-contract"])),
                tolerance=float(config["mm-tolerance"]),
                task_key=str(config["mm-task-key"]),
                attempt=int(config["mm-attempt"]) if "mm-attempt" in config else 1,
            )
        except KeyError as exc:
            raise ProtocolError(f"vote request lacks field {exc}") from exc
        if len(req.model_hash) != 32:
            raise ProtocolError("model hash must be 32 bytes")
        return req


@dataclass(frozen=True)
class SignedVote:
    """A participant's signed vote on the candidate and its signed reveal of the round's score."""

    address: str
    vote: Vote
    vote_signature: bytes
    reveal: Reveal | None
    reveal_signature: bytes = b""

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mm-address": self.address,
            "mm-task-id": self.vote.taskId,
            "mm-round": self.vote.round,
            "mm-attempt": self.vote.attempt,
            "mm-model-hash": self.vote.modelHash,
            "mm-accept": bool(self.vote.accept),
            "mm-accuracy-bps": int(self.vote.accuracyBps),
            "mm-vote-signature": self.vote_signature,
        }
        if self.reveal is not None:
            # scores can exceed int64 for huge supports: carried as 32 big-endian bytes
            out["mm-score"] = int(self.reveal.score).to_bytes(32, "big")
            out["mm-nonce"] = self.reveal.nonce
            out["mm-reveal-signature"] = self.reveal_signature
        return out

    @classmethod
    def from_config(cls, config: Any) -> SignedVote:
        try:
            task_id, round_ = int(config["mm-task-id"]), int(config["mm-round"])
            attempt = int(config["mm-attempt"]) if "mm-attempt" in config else 1
            vote = Vote(task_id, round_, bytes(config["mm-model-hash"]), bool(config["mm-accept"]),
                        int(config["mm-accuracy-bps"]), attempt)
            reveal, rsig = None, b""
            if "mm-score" in config:
                reveal = Reveal(task_id, round_, int.from_bytes(bytes(config["mm-score"]), "big"), bytes(config["mm-nonce"]),
                                attempt)
                rsig = bytes(config["mm-reveal-signature"])
            return cls(str(config["mm-address"]), vote, bytes(config["mm-vote-signature"]), reveal, rsig)
        except KeyError as exc:
            raise ProtocolError(f"vote lacks field {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed vote: {exc}") from exc
