"""Node-to-miner binding: a miner proves "I, address A, answer from Flower node N" with its own key.

Without it the server bound an address to whichever node first relayed one of its (public, signed)
submissions, so a node could relay a never-seen miner's submission and claim that miner. Now every
secure reply carries ``sign(keccak("modelmine/node-binding/v1" || chainId || contract || N))``
(EIP-191 personal message over the 32-byte digest) by the miner's Ethereum key, and the server binds
A to N only when that signature recovers A for the node id the reply actually came from.

Pure: no I/O.
"""

from __future__ import annotations

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak, to_checksum_address

from aggregator.eip712 import Domain

LABEL = b"modelmine/node-binding/v1"


class BindingError(ValueError):
    """A binding signature that is malformed or not by the claimed miner for this node."""


def binding_digest(domain: Domain, node_id: int) -> bytes:
    """The 32-byte challenge a miner signs for Flower node ``node_id`` under ``domain``."""
    if isinstance(node_id, bool) or not isinstance(node_id, int) or not 0 <= node_id < 2**64:
        raise BindingError(f"node id must be a uint64, got {node_id!r}")
    contract = bytes.fromhex(domain.verifying_contract.removeprefix("0x"))
    return keccak(LABEL + domain.chain_id.to_bytes(32, "big") + contract + node_id.to_bytes(8, "big"))


def sign_binding(eth_key: bytes, domain: Domain, node_id: int) -> bytes:
    """65-byte signature of the binding challenge by the miner's Ethereum key."""
    return bytes(Account.sign_message(encode_defunct(primitive=binding_digest(domain, node_id)), eth_key).signature)


def check_binding(domain: Domain, node_id: int, address: str, signature: bytes) -> None:
    """Raise BindingError unless ``signature`` binds ``address`` to ``node_id``."""
    if not isinstance(signature, bytes | bytearray) or len(signature) != 65:
        raise BindingError("node binding signature must be 65 bytes")
    try:
        signer = Account.recover_message(encode_defunct(primitive=binding_digest(domain, node_id)), signature=bytes(signature))
    except Exception as exc:  # eth_keys raises several types for garbage signatures
        raise BindingError(f"unreadable node binding signature: {exc}") from exc
    if to_checksum_address(signer) != to_checksum_address(address):
        raise BindingError(f"node {node_id} binding is signed by {signer}, not by {to_checksum_address(address)}")
