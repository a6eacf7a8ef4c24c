"""Checkpoint and resume of the server (MISSION C19).

After every finalized round the server writes ONE file, ``<run>/checkpoint/checkpoint.safetensors``,
atomically (temporary file, fsync, rename, fsync of the folder): the global model, the server
optimizer's momentum, the DGC support state (the previous aggregate that seeds the next shared
support), and as metadata the round number, the chain position (contract, task, the task's round,
epoch/attempt and finalized count) and the rounds table so far. A crash at any point leaves either the
previous checkpoint or the new one, never a torn file. Models are safetensors: nothing is unpickled.

A restarted server (``resume=true``, or ``checkpoint=<folder>``) continues with the round after the
checkpoint's. It never applies an update twice (it starts from the checkpoint's model and momentum)
and never pays a round twice: the contract's round pointer and finalized count are checked against
the checkpoint; a chain that finalized more rounds than the checkpoint knows (a crash between
finalization and the write) stops the resume with an error instead of guessing.

The server's own secrets for the run (the secure-aggregation keys of publisher and aggregator, the key
service credential, the publisher/aggregator accounts and the hidden target's nonce) live beside it in
``<run>/server_keys/secrets.json`` (mode 0600) so that a resumed run acts as the same parties. They are
the operator's secrets, never a miner's.
"""

from __future__ import annotations

import json
import logging
import os
import secrets as pysecrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from eth_account import Account
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from aggregator.models import model_hash, state_to_bytes
from aggregator.secagg import AggregatorKeys, PublisherKeys
from fl_server.fileio import atomic_write
from fl_server.results import RoundRecord

if TYPE_CHECKING:
    from fl_server.chain_round import ChainSession
    from fl_server.secure_aggregation import SecureRound
    from fl_server.strategy import ModelMineStrategy

log = logging.getLogger("modelmine.checkpoint")
FILE = "checkpoint.safetensors"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used to resume (corrupt, or behind the chain)."""


@dataclass
class Checkpoint:
    """The server's state after one finalized round."""

    round: int
    model: dict[str, torch.Tensor]
    velocity: np.ndarray | None = None
    prev_aggregate: np.ndarray | None = None
    chain: dict[str, Any] | None = None  # contract, task_id, task_round, epoch, finalized_rounds, from_block
    records: list[RoundRecord] = field(default_factory=list)
    initial_accuracy: float = 0.0
    rejected: int = 0

    @property
    def model_hash(self) -> bytes:
        return model_hash(state_to_bytes(self.model))

    @classmethod
    def capture(
        cls, strategy: ModelMineStrategy, secure: SecureRound | None, server_round: int,
        records: list[RoundRecord], initial_accuracy: float, session: ChainSession | None,
    ) -> Checkpoint:
        assert strategy._global is not None
        velocity = strategy.server_optimizer._velocity
        chain = None
        if session is not None:
            task = session.client.task(session.task_id)
            state = session.client.round_state(session.task_id)
            chain = {
                "contract": session.client.address,
                "task_id": session.task_id,
                "task_round": int(session.round),
                "attempt": int(state.get("attempt", state.get("epoch", 0))),
                "finalized_rounds": int(task["finalizedRounds"]),
                "from_block": int(getattr(session.client, "from_block", 0)),
            }
        return cls(
            round=server_round,
            model={k: v.detach().clone() for k, v in strategy._global.items()},
            velocity=None if velocity is None else np.asarray(velocity, dtype=np.float64),
            prev_aggregate=None if secure is None or secure.prev_aggregate is None else np.asarray(secure.prev_aggregate),
            chain=chain,
            records=list(records),
            initial_accuracy=initial_accuracy,
            rejected=len(strategy.rejections),
        )

    def restore(self, strategy: ModelMineStrategy, secure: SecureRound | None) -> None:
        """Put the optimizer momentum and the DGC support state back (the model goes in via start())."""
        strategy.server_optimizer._velocity = None if self.velocity is None else self.velocity.copy()
        if secure is not None:
            secure.prev_aggregate = None if self.prev_aggregate is None else self.prev_aggregate.copy()

    # -- bytes ---------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        tensors = {f"model/{k}": v.contiguous() for k, v in self.model.items()}
        if self.velocity is not None:
            tensors["optim/velocity"] = torch.from_numpy(np.ascontiguousarray(self.velocity))
        if self.prev_aggregate is not None:
            tensors["dgc/prev_aggregate"] = torch.from_numpy(np.ascontiguousarray(self.prev_aggregate))
        meta = {
            "version": VERSION,
            "round": self.round,
            "chain": self.chain,
            "records": [r.__dict__ | {"extra": r.extra} for r in self.records],
            "initial_accuracy": self.initial_accuracy,
            "rejected": self.rejected,
            "model_hash": "0x" + self.model_hash.hex(),
        }
        return st_save(tensors, metadata={"modelmine": json.dumps(meta)})

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        try:
            from safetensors import safe_open  # noqa: F401 - parse through safetensors only

            tensors = st_load(data)
            header_len = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + header_len])
            meta = json.loads(header["__metadata__"]["modelmine"])
        except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt checkpoint
            raise CheckpointError(f"unreadable checkpoint: {exc}") from exc
        if meta.get("version") != VERSION:
            raise CheckpointError(f"checkpoint version {meta.get('version')} is not {VERSION}")
        model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        ckpt = cls(
            round=int(meta["round"]),
            model=model,
            velocity=tensors["optim/velocity"].numpy() if "optim/velocity" in tensors else None,
            prev_aggregate=tensors["dgc/prev_aggregate"].numpy() if "dgc/prev_aggregate" in tensors else None,
            chain=meta.get("chain"),
            records=[RoundRecord(**r) for r in meta.get("records", [])],
            initial_accuracy=float(meta.get("initial_accuracy", 0.0)),
            rejected=int(meta.get("rejected", 0)),
        )
        if "0x" + ckpt.model_hash.hex() != meta.get("model_hash"):
            raise CheckpointError("checkpoint model does not match its recorded hash")
        return ckpt


@dataclass
class CheckpointStore:
    """One folder holding the latest checkpoint."""

    folder: Path

    @property
    def path(self) -> Path:
        return self.folder / FILE

    def save(self, ckpt: Checkpoint) -> None:
        atomic_write(self.path, ckpt.to_bytes())
        log.info("checkpoint: round %d saved (model %s)", ckpt.round, ckpt.model_hash.hex()[:12])

    def load(self) -> Checkpoint | None:
        if not self.path.exists():
            return None
        return Checkpoint.from_bytes(self.path.read_bytes())


def _write_secret_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(payload).encode(), mode=0o600)
    os.chmod(path, 0o600)


@dataclass
class ServerSecrets:
    """The operator's secrets for one run (publisher and aggregator roles of the simulated network)."""

    path: Path
    publisher: PublisherKeys
    aggregator_keys: AggregatorKeys
    credential: bytes = field(repr=False)
    chain: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load_or_create(cls, folder: Path, resume: bool) -> ServerSecrets:
        path = folder / "secrets.json"
        if resume and path.exists():
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise CheckpointError(f"{path} is readable by others (mode {oct(mode)}); run chmod 600 {path}")
            raw = json.loads(path.read_text())
            return cls(
                path,
                PublisherKeys.from_secret(bytes.fromhex(raw["publisher_secagg"])),
                AggregatorKeys.from_secret(bytes.fromhex(raw["aggregator_secagg"])),
                bytes.fromhex(raw["credential"]),
                raw.get("chain", {}),
            )
        made = cls(path, PublisherKeys.generate(), AggregatorKeys.generate(), pysecrets.token_bytes(32))
        made.save()
        return made

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        _write_secret_json(self.path, {
            "publisher_secagg": self.publisher.secret.hex(),
            "aggregator_secagg": self.aggregator_keys.secret.hex(),
            "credential": self.credential.hex(),
            "chain": self.chain,
        })

    def remember_session(self, session: ChainSession) -> None:
        self.chain = {
            "publisher": bytes(session.publisher.key).hex(),
            "aggregator": bytes(session.aggregator.key).hex(),
            "target_bps": session.target_bps,
            "target_nonce": session.target_nonce.hex(),
        }
        self.save()

    def reattach(self, chain_cfg: Any, position: dict[str, Any], tolerance: float) -> ChainSession:
        """The checkpoint's task on its contract, driven by the same accounts; refuses a chain that is
        ahead of the checkpoint (it would otherwise redo, or pay again, a finalized round)."""
        from contracts.chain import Chain, ChainConfig
        from contracts.client import ModelMineClient
        from fl_server.chain_round import ChainSession

        if not self.chain:
            raise CheckpointError(f"{self.path} holds no chain accounts; cannot resume the on-chain task")
        conf = ChainConfig.from_mapping(chain_cfg)
        client = ModelMineClient(Chain(conf), position["contract"], from_block=int(position.get("from_block", 0)))
        task_id = int(position["task_id"])
        finalized = int(client.task(task_id)["finalizedRounds"])
        if finalized != int(position["finalized_rounds"]):
            raise CheckpointError(
                f"task {task_id} has {finalized} finalized rounds on chain, the checkpoint {position['finalized_rounds']}: "
                "the chain moved past the checkpoint; refusing to redo or pay a round twice"
            )
        session = ChainSession(
            client, task_id, Account.from_key(bytes.fromhex(self.chain["publisher"])),
            Account.from_key(bytes.fromhex(self.chain["aggregator"])), int(self.chain["target_bps"]),
            bytes.fromhex(self.chain["target_nonce"]), tolerance,
        )
        state = client.round_state(task_id)
        session.round = int(state["round"])
        session.attempt = int(state.get("attempt", state.get("epoch", 0)))
        log.info("resume: task %d on %s at task round %d (%d finalized)", task_id, client.address, session.round, finalized)
        return session
