"""The miner's half of a secure round: DGC -> quantize -> score -> commitment -> encrypt -> sign.

Input: the flattened update ``delta = w_local - w_global`` and the server's RoundPlan. Output: the
SignedSubmission to send and the Opening (score, nonce) to keep for the reveal. The quantization
error of the sent values is fed back into the DGC residual, so clipping and rounding lose nothing
over rounds. Persisted per task in the miner's folder: DGC state (safetensors) and openings (0600).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aggregator import eip712, quantize, secagg
from aggregator.commitments import Opening, commitment, new_nonce
from aggregator.dgc import DGCError, DGCState
from aggregator.eip712 import Reveal, Vote
from aggregator.node_binding import sign_binding
from aggregator.protocol import (
    ProtocolError,
    RoundPlan,
    SignedSubmission,
    SignedVote,
    VoteRequest,
    indices_to_bytes,
)
from aggregator.task_spec import TaskSpec, TaskSpecError, check_plan, load_trusted
from fl_client.identity import MinerIdentity

TRUSTED_TASKS_FILE = "trusted_tasks.txt"
TRUSTED_HASH_KEY = "task-spec-hash"


def trusted_task_hashes(folder: Path | None, node_config: Mapping[str, object] | None = None) -> frozenset[bytes]:
    """The task-spec hashes this miner trusts: the node config's ``task-spec-hash`` (hex, several
    separated by commas) and the lines of ``<folder>/trusted_tasks.txt``, both set by the miner's
    operator (from the chain's task metadata hash). Never the run config or the message: the
    aggregator writes those."""
    raw: list[str] = []
    if node_config is not None and TRUSTED_HASH_KEY in node_config:
        raw += str(node_config[TRUSTED_HASH_KEY]).replace(",", " ").split()
    if folder is not None and (Path(folder) / TRUSTED_TASKS_FILE).exists():
        raw += (Path(folder) / TRUSTED_TASKS_FILE).read_text().split()
    out = set()
    for item in raw:
        try:
            digest = bytes.fromhex(item.removeprefix("0x"))
        except ValueError as exc:
            raise ProtocolError(f"trusted task hash {item!r} is not hex") from exc
        if len(digest) != 32:
            raise ProtocolError(f"trusted task hash {item!r} is not 32 bytes")
        out.add(digest)
    return frozenset(out)


def trust_task(folder: Path, spec_hash: bytes) -> None:
    """Operator set-up: add ``spec_hash`` to the miner's trusted tasks (idempotent)."""
    path = Path(folder) / TRUSTED_TASKS_FILE
    known = path.read_text().split() if path.exists() else []
    if spec_hash.hex() not in known:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(spec_hash.hex() + "\n")


def pinned_plan(plan: RoundPlan, trusted: frozenset[bytes]) -> TaskSpec:
    """Accept ``plan`` only when it carries a task spec whose hash the miner trusts and every security
    parameter of the plan equals the spec's; returns the spec. Raises ProtocolError naming the field
    (``plan field 'publisher_public' differs from the task: ...``)."""
    if not plan.task_spec:
        raise ProtocolError("round plan carries no task spec: refusing to take crypto parameters from the plan")
    if not trusted:
        raise ProtocolError("this miner trusts no task spec hash (node config task-spec-hash or trusted_tasks.txt)")
    try:
        spec = load_trusted(plan.task_spec, trusted)
        check_plan(spec, plan)
    except TaskSpecError as exc:
        raise ProtocolError(str(exc)) from exc
    return spec


@dataclass(frozen=True)
class SubmissionResult:
    submission: SignedSubmission
    opening: Opening
    k: int
    dense_bytes: int  # what a float32 dense update would have cost


def build_submission(
    delta: np.ndarray, plan: RoundPlan, identity: MinerIdentity, state: DGCState, rng: np.random.Generator,
    *, encrypt: Callable[[np.ndarray, np.ndarray], bytes] | None = None,
) -> SubmissionResult:
    """Compress, quantize, commit, encrypt and sign ``delta`` according to ``plan``; updates ``state``.

    ``plan`` must already be pinned to the trusted task (:func:`pinned_plan`) and its epoch claimed
    (:meth:`MinerState.claim_epoch`): this function trusts the parameters it is given."""
    if delta.shape != (plan.d,):
        raise ProtocolError(f"update has {delta.size} values, the plan says d={plan.d}")
    if plan.support is None and plan.backend != "none":
        raise ProtocolError("local (per-miner) support reveals which coordinates a miner changed: plaintext only")
    sparse = state.step(delta, plan.round, plan.support)
    q = quantize.quantize(sparse.values, plan.clip, plan.bits, rng)
    # Error feedback for clipping and rounding: what was not transmitted stays in the residual.
    state.velocity[sparse.indices] += (sparse.values - quantize.dequantize(q, plan.clip, plan.bits)).astype(np.float32)
    score = quantize.score(q)
    nonce = new_nonce()
    commit = commitment(score, nonce, plan.task_id, plan.round, identity.address, plan.attempt)
    ciphertext = encrypt(q, sparse.indices) if encrypt is not None else secagg.encrypt(  # encrypt: secaggplus's masker
        plan.backend,  # type: ignore[arg-type]
        q,
        sparse.indices,
        plan.task_id,
        plan.crypto_round,
        identity.secagg.secret,
        plan.publisher_public,
        plan.aggregator_public,
        bits=plan.bits,
    )
    unsigned = SignedSubmission(
        address=identity.address,
        task_id=plan.task_id,
        round=plan.round,
        ciphertext=ciphertext,
        commitment=commit,
        signature=b"\0" * 65,
        indices=indices_to_bytes(sparse.indices) if plan.support is None else b"",
        attempt=plan.attempt,
    )
    support_hash = plan.support_hash
    signature = eip712.sign(plan.domain, unsigned.message(support_hash), identity.eth_key)
    signed = SignedSubmission(**{**unsigned.__dict__, "signature": signature})
    return SubmissionResult(signed, Opening(score, nonce), sparse.k, 4 * plan.d)


def node_binding(identity: MinerIdentity, plan: RoundPlan, node_id: int) -> dict[str, object]:
    """The ``binding`` ConfigRecord values: this miner's signature binding its address to ``node_id``."""
    return {
        "mm-address": identity.address,
        "mm-binding-signature": sign_binding(identity.eth_key, plan.domain, int(node_id)),
    }


def cast_vote(
    request: VoteRequest, weights_hash: bytes, accuracy: float, identity: MinerIdentity, store: MinerState
) -> SignedVote:
    """Vote on the candidate and reveal this round's score, both signed with the miner's key.

    The vote accepts when the received weights are the announced candidate and the local validation
    accuracy did not drop by more than ``request.tolerance`` since the last model this miner accepted.
    The reveal is attached only when the miner holds an opening for (task, round), i.e. it submitted.
    """
    last = store.last_accepted_accuracy()
    accept = weights_hash == request.model_hash and (last is None or accuracy >= last - request.tolerance)
    vote = Vote(request.task_id, request.round, request.model_hash, accept, int(round(accuracy * 10_000)), request.attempt)
    vote_sig = eip712.sign(request.domain, vote, identity.eth_key)
    opening = store.openings().get(request.round)
    reveal, reveal_sig = None, b""
    if opening is not None:
        reveal = Reveal(request.task_id, request.round, opening.score, opening.nonce, request.attempt)
        reveal_sig = eip712.sign(request.domain, reveal, identity.eth_key)
    if accept:
        store.save_accepted_accuracy(accuracy)
    return SignedVote(identity.address, vote, vote_sig, reveal, reveal_sig)


class MinerState:
    """DGC state, commitment openings and votes of one miner for one task, kept in ``folder/state``
    under the task's key (``RoundPlan.task_key``), so state never leaks between tasks or chains."""

    def __init__(self, folder: Path, task_key: str) -> None:
        if not task_key or not task_key.isalnum():
            raise ProtocolError(f"bad task key {task_key!r}")
        self.dir = Path(folder) / "state"
        self.task_key = task_key
        self.dgc_path = self.dir / f"dgc-{task_key}.safetensors"
        self.openings_path = self.dir / f"openings-{task_key}.json"

    @property
    def epoch_path(self) -> Path:
        return self.dir / f"epoch-{self.task_key}.json"

    def highest_epoch(self) -> tuple[int, int] | None:
        """(round, attempt) of the last plan this miner encrypted for, or None."""
        if not self.epoch_path.exists():
            return None
        raw = json.loads(self.epoch_path.read_text())
        return int(raw["round"]), int(raw["attempt"])

    def check_epoch(self, plan: RoundPlan) -> None:
        """Refuse a plan whose (round, attempt) is not above the highest this miner encrypted for:
        masks are a function of the epoch, so a repeated epoch would reuse them."""
        last = self.highest_epoch()
        now = (plan.round, plan.crypto_round)
        if last is not None and now <= last:
            raise ProtocolError(
                f"epoch (round {now[0]}, attempt {now[1]}) is not above the last one this miner encrypted for "
                f"(round {last[0]}, attempt {last[1]}): refusing to reuse masks"
            )

    def claim_epoch(self, plan: RoundPlan) -> None:
        """:meth:`check_epoch`, then record the plan's epoch durably (atomic, fsync'd) before encrypting."""
        self.check_epoch(plan)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.epoch_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"round": plan.round, "attempt": plan.crypto_round}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.epoch_path)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def load_dgc(self, plan: RoundPlan) -> DGCState:
        if self.dgc_path.exists():
            try:
                state = DGCState.from_bytes(self.dgc_path.read_bytes(), plan.dgc)
                if state.d == plan.d:
                    return state
            except DGCError:
                pass  # a corrupt state only costs the residual: start afresh
        return DGCState(plan.d, plan.dgc)

    def save_dgc(self, state: DGCState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dgc_path.with_suffix(".tmp")
        tmp.write_bytes(state.to_bytes())
        tmp.replace(self.dgc_path)

    def last_accepted_accuracy(self) -> float | None:
        path = self.dir / f"votes-{self.task_key}.json"
        return json.loads(path.read_text())["accuracy"] if path.exists() else None

    def save_accepted_accuracy(self, accuracy: float) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / f"votes-{self.task_key}.json").write_text(json.dumps({"accuracy": accuracy}))

    def openings(self) -> dict[int, Opening]:
        if not self.openings_path.exists():
            return {}
        raw = json.loads(self.openings_path.read_text())
        return {int(r): Opening(int(v["score"]), bytes.fromhex(v["nonce"])) for r, v in raw.items()}

    def save_opening(self, round_: int, opening: Opening) -> None:
        """Keep (score, nonce) for the reveal; the file is private to the miner (0600)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        data = {str(r): {"score": o.score, "nonce": o.nonce.hex()} for r, o in self.openings().items()}
        data[str(round_)] = {"score": opening.score, "nonce": opening.nonce.hex()}
        tmp = self.openings_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        tmp.replace(self.openings_path)
