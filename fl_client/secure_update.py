"""The miner's half of a secure round: DGC -> quantize -> score -> commitment -> encrypt -> sign.

Input: the flattened update ``delta = w_local - w_global`` and the server's RoundPlan. Output: the
SignedSubmission to send and the Opening (score, nonce) to keep for the reveal. The quantization
error of the sent values is fed back into the DGC residual, so clipping and rounding lose nothing
over rounds. Persisted per task in the miner's folder: DGC state (safetensors) and openings (0600).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aggregator import eip712, quantize, secagg
from aggregator.commitments import Opening, commitment, new_nonce
from aggregator.dgc import DGCError, DGCState
from aggregator.eip712 import Reveal, Vote
from aggregator.protocol import (
    ProtocolError,
    RoundPlan,
    SignedSubmission,
    SignedVote,
    VoteRequest,
    indices_to_bytes,
)
from fl_client.identity import MinerIdentity


@dataclass(frozen=True)
class SubmissionResult:
    submission: SignedSubmission
    opening: Opening
    k: int
    dense_bytes: int  # what a float32 dense update would have cost


def build_submission(
    delta: np.ndarray, plan: RoundPlan, identity: MinerIdentity, state: DGCState, rng: np.random.Generator
) -> SubmissionResult:
    """Compress, quantize, commit, encrypt and sign ``delta`` according to ``plan``; updates ``state``."""
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
    commit = commitment(score, nonce, plan.task_id, plan.round, identity.address)
    ciphertext = secagg.encrypt(
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
    )
    support_hash = plan.support_hash
    signature = eip712.sign(plan.domain, unsigned.message(support_hash), identity.eth_key)
    signed = SignedSubmission(**{**unsigned.__dict__, "signature": signature})
    return SubmissionResult(signed, Opening(score, nonce), sparse.k, 4 * plan.d)


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
    vote = Vote(request.task_id, request.round, request.model_hash, accept, int(round(accuracy * 10_000)))
    vote_sig = eip712.sign(request.domain, vote, identity.eth_key)
    opening = store.openings().get(request.round)
    reveal, reveal_sig = None, b""
    if opening is not None:
        reveal = Reveal(request.task_id, request.round, opening.score, opening.nonce)
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
