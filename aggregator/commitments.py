"""Score commitments, byte-identical to Solidity's
``keccak256(abi.encode(uint256 score, bytes32 nonce, uint256 taskId, uint256 round, uint256 attempt,
address miner))``. The attempt (task-wide retry counter) makes a rejected attempt's opening useless in
the retry.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from eth_abi import encode
from eth_utils import keccak, to_checksum_address

UINT256_MAX = 2**256 - 1


class CommitmentError(ValueError):
    """A commitment input is malformed (negative score, wrong nonce length, bad address...)."""


@dataclass(frozen=True)
class Opening:
    """What a miner reveals after aggregation: the score and the nonce that hid it."""

    score: int
    nonce: bytes


def new_nonce() -> bytes:
    """A fresh 32-byte nonce from the OS CSPRNG."""
    return secrets.token_bytes(32)


def _check_uint(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CommitmentError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value <= UINT256_MAX:
        raise CommitmentError(f"{name}={value} is outside uint256")


def normalize_address(miner: str) -> str:
    """Checksum an address; reject anything that is not 20 bytes of hex."""
    if not isinstance(miner, str):
        raise CommitmentError(f"miner address must be a str, got {type(miner).__name__}")
    try:
        address = to_checksum_address(miner)
    except ValueError as exc:
        raise CommitmentError(f"not an Ethereum address: {miner!r}") from exc
    body = miner[2:] if miner[:2] in ("0x", "0X") else miner
    if body != body.lower() and body != body.upper() and address[2:] != body:
        raise CommitmentError(f"address {miner!r} has a wrong EIP-55 checksum")
    return address


def commitment(score: int, nonce: bytes, task_id: int, round_: int, miner: str, attempt: int = 1) -> bytes:
    """Return the 32-byte commitment to ``score`` for (task, round, attempt, miner)."""
    _check_uint("score", score)
    _check_uint("task_id", task_id)
    _check_uint("round", round_)
    _check_uint("attempt", attempt)
    if not isinstance(nonce, bytes | bytearray) or len(nonce) != 32:
        raise CommitmentError("nonce must be exactly 32 bytes")
    address = normalize_address(miner)
    return keccak(
        encode(
            ["uint256", "bytes32", "uint256", "uint256", "uint256", "address"],
            [score, bytes(nonce), task_id, round_, attempt, address],
        )
    )


def verify_opening(commit: bytes, opening: Opening, task_id: int, round_: int, miner: str, attempt: int = 1) -> bool:
    """True when ``opening`` opens ``commit`` for (task, round, attempt, miner)."""
    return commitment(opening.score, opening.nonce, task_id, round_, miner, attempt) == bytes(commit)
