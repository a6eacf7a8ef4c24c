"""EIP-712 typed messages that miners sign and the server relays to the contracts.

The contract that verifies them is the ``verifyingContract`` of the domain, so a signature made for
one deployment or chain is useless on another; (taskId, round, attempt) inside every round message
stop replays across tasks, rounds and retries of a round (the attempt counts up per task), and the
contract accepts one message of a kind per (task, round, attempt, miner).

Types (keep byte-identical with contracts/src/*.sol):
    Submission(uint256 taskId,uint256 round,uint256 attempt,bytes32 supportHash,bytes32 ciphertextHash,bytes32 commitment)
    Vote(uint256 taskId,uint256 round,uint256 attempt,bytes32 modelHash,bool accept,uint256 accuracyBps)
    Reveal(uint256 taskId,uint256 round,uint256 attempt,uint256 score,bytes32 nonce)
    Registration(address miner,bytes secaggKey,uint256 nonce,uint256 deadline)

The dataclasses keep ``attempt`` as their LAST field (default 1) so that positional construction
stays compatible; the typed-data field order (what is signed) is the one above.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address

DOMAIN_NAME = "ModelMine"
DOMAIN_VERSION = "1"

_DOMAIN_FIELDS = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]

MESSAGE_TYPES: dict[str, list[dict[str, str]]] = {
    "Submission": [
        {"name": "taskId", "type": "uint256"},
        {"name": "round", "type": "uint256"},
        {"name": "attempt", "type": "uint256"},
        {"name": "supportHash", "type": "bytes32"},
        {"name": "ciphertextHash", "type": "bytes32"},
        {"name": "commitment", "type": "bytes32"},
    ],
    "Vote": [
        {"name": "taskId", "type": "uint256"},
        {"name": "round", "type": "uint256"},
        {"name": "attempt", "type": "uint256"},
        {"name": "modelHash", "type": "bytes32"},
        {"name": "accept", "type": "bool"},
        {"name": "accuracyBps", "type": "uint256"},
    ],
    "Reveal": [
        {"name": "taskId", "type": "uint256"},
        {"name": "round", "type": "uint256"},
        {"name": "attempt", "type": "uint256"},
        {"name": "score", "type": "uint256"},
        {"name": "nonce", "type": "bytes32"},
    ],
    "Registration": [
        {"name": "miner", "type": "address"},
        {"name": "secaggKey", "type": "bytes"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ],
}


_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_SECP256K1_HALF_N = _SECP256K1_N // 2


class SignatureError(ValueError):
    """A signature is malformed or was not made by the expected signer."""


@dataclass(frozen=True)
class Domain:
    chain_id: int
    verifying_contract: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": self.chain_id,
            "verifyingContract": to_checksum_address(self.verifying_contract),
        }


@dataclass(frozen=True)
class Submission:
    """A miner's commitment to its encrypted update for (task, round, attempt) on the support."""

    taskId: int
    round: int
    supportHash: bytes
    ciphertextHash: bytes
    commitment: bytes
    attempt: int = 1


@dataclass(frozen=True)
class Vote:
    """A participant's vote on the candidate of (task, round, attempt)."""

    taskId: int
    round: int
    modelHash: bytes
    accept: bool
    accuracyBps: int
    attempt: int = 1


@dataclass(frozen=True)
class Reveal:
    """A participant's opening of its score commitment of (task, round, attempt)."""

    taskId: int
    round: int
    score: int
    nonce: bytes
    attempt: int = 1


@dataclass(frozen=True)
class Registration:
    """A miner's consent to be registered (stake paid by a relayer) with its secure-aggregation key;
    ``nonce`` is the contract's ``registrationNonce(miner)``."""

    miner: str
    secaggKey: bytes
    nonce: int
    deadline: int


Message = Submission | Vote | Reveal | Registration


def typed_data(domain: Domain, message: Message) -> dict[str, Any]:
    """The full EIP-712 JSON structure for ``message``."""
    primary = type(message).__name__
    return {
        "types": {"EIP712Domain": _DOMAIN_FIELDS, primary: MESSAGE_TYPES[primary]},
        "primaryType": primary,
        "domain": domain.as_dict(),
        "message": asdict(message),
    }


def digest(domain: Domain, message: Message) -> bytes:
    """The 32-byte EIP-712 digest the contract recomputes (``_hashTypedDataV4``)."""
    signable = encode_typed_data(full_message=typed_data(domain, message))
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def sign(domain: Domain, message: Message, private_key: bytes | str) -> bytes:
    """65-byte (r, s, v) signature over ``message`` with the miner's Ethereum key."""
    signed = Account.sign_typed_data(private_key, full_message=typed_data(domain, message))
    return bytes(signed.signature)


def recover(domain: Domain, message: Message, signature: bytes) -> str:
    """The checksummed address that signed ``message``; raises SignatureError on a malformed signature."""
    if not isinstance(signature, bytes | bytearray) or len(signature) != 65:
        raise SignatureError("signature must be 65 bytes (r, s, v)")
    # Match OpenZeppelin ECDSA.recover, which the contracts use: v in {27, 28}, 0 < r, 0 < s <= n/2.
    # eth_account alone also accepts v in {0, 1} and malleable high-s signatures the chain would reject.
    r_value = int.from_bytes(signature[:32], "big")
    s_value = int.from_bytes(signature[32:64], "big")
    if signature[64] not in (27, 28):
        raise SignatureError(f"signature v must be 27 or 28, got {signature[64]}")
    if not 0 < r_value < _SECP256K1_N or not 0 < s_value <= _SECP256K1_HALF_N:
        raise SignatureError("signature r/s out of range (high-s signatures are malleable and rejected)")
    try:
        signable = encode_typed_data(full_message=typed_data(domain, message))
        return Account.recover_message(signable, signature=bytes(signature))
    except Exception as exc:  # eth_keys raises several types for junk signatures
        raise SignatureError(f"cannot recover signer: {exc}") from exc


def verify(domain: Domain, message: Message, signature: bytes, expected_signer: str) -> None:
    """Raise SignatureError unless ``expected_signer`` signed ``message`` under ``domain``."""
    signer = recover(domain, message, signature)
    if signer != to_checksum_address(expected_signer):
        raise SignatureError(f"signed by {signer}, expected {to_checksum_address(expected_signer)}")
