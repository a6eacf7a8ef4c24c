"""A miner's signed registration, relayed by the server: the server never holds a miner's key.

The server asks each node (a ``query.register`` message) to register; the miner answers with its
Ethereum address, its secure-aggregation public key and an EIP-191 signature over
:func:`registration_text` (chain id, contract, address, key). With a chain, a second query asks the
miner for a signed ``register(publicKey)`` transaction carrying its stake, which the server broadcasts
unchanged (:func:`check_register_tx` checks it first). Pure functions: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi import encode
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.typed_transactions import TypedTransaction
from eth_utils import function_signature_to_4byte_selector, to_checksum_address
from hexbytes import HexBytes

REGISTER_SELECTOR = function_signature_to_4byte_selector("register(bytes)")


class RegistrationError(ValueError):
    """A registration reply or transaction that does not prove what it claims."""


@dataclass(frozen=True)
class Registration:
    """What a miner publishes about itself, bound to one chain and contract (``contract`` may be "")."""

    address: str
    secagg_public: bytes
    chain_id: int
    contract: str
    signature: bytes

    def to_config(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "secagg-public": self.secagg_public.hex(),
            "chain-id": self.chain_id,
            "contract": self.contract,
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_config(cls, cfg: Any) -> Registration:
        try:
            return cls(
                address=to_checksum_address(str(cfg["address"])),
                secagg_public=bytes.fromhex(str(cfg["secagg-public"])),
                chain_id=int(cfg["chain-id"]),
                contract=str(cfg["contract"]),
                signature=bytes.fromhex(str(cfg["signature"])),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise RegistrationError(f"malformed registration: {exc}") from exc


def registration_text(address: str, secagg_public: bytes, chain_id: int, contract: str) -> str:
    return (
        "ModelMine miner registration\n"
        f"chain: {int(chain_id)}\ncontract: {contract.lower()}\n"
        f"miner: {to_checksum_address(address)}\nsecagg key: {secagg_public.hex()}"
    )


def sign_registration(eth_key: bytes, secagg_public: bytes, chain_id: int, contract: str) -> Registration:
    """The miner's side: sign its own registration with its own key."""
    address = Account.from_key(eth_key).address
    message = encode_defunct(text=registration_text(address, secagg_public, chain_id, contract))
    signature = bytes(Account.sign_message(message, eth_key).signature)
    return Registration(address, bytes(secagg_public), int(chain_id), contract, signature)


def verify_registration(reg: Registration, chain_id: int, contract: str) -> None:
    """The server's side: the signature must come from ``reg.address`` for this chain and contract."""
    if (reg.chain_id, reg.contract.lower()) != (int(chain_id), contract.lower()):
        raise RegistrationError(f"registration of {reg.address} is for another chain or contract")
    if len(reg.secagg_public) != 33:
        raise RegistrationError(f"registration of {reg.address}: secure-aggregation key must be 33 bytes")
    text = registration_text(reg.address, reg.secagg_public, reg.chain_id, reg.contract)
    try:
        signer = Account.recover_message(encode_defunct(text=text), signature=reg.signature)
    except Exception as exc:  # noqa: BLE001 - malformed signature bytes
        raise RegistrationError(f"registration of {reg.address}: unreadable signature ({exc})") from exc
    if signer != reg.address:
        raise RegistrationError(f"registration of {reg.address} is signed by {signer}")


def register_call_data(secagg_public: bytes) -> bytes:
    """ABI call data of ``register(bytes publicKey)``."""
    return REGISTER_SELECTOR + encode(["bytes"], [bytes(secagg_public)])


def sign_register_tx(
    eth_key: bytes, secagg_public: bytes, *, chain_id: int, contract: str, stake_wei: int, nonce: int,
    gas: int, max_fee_per_gas: int, max_priority_fee_per_gas: int,
) -> bytes:
    """The miner's side: a signed EIP-1559 ``register`` transaction paying ``stake_wei`` from its account."""
    tx = {
        "type": 2, "chainId": int(chain_id), "nonce": int(nonce), "to": to_checksum_address(contract),
        "value": int(stake_wei), "gas": int(gas), "maxFeePerGas": int(max_fee_per_gas),
        "maxPriorityFeePerGas": int(max_priority_fee_per_gas), "data": register_call_data(secagg_public),
    }
    return bytes(Account.sign_transaction(tx, eth_key).raw_transaction)


def check_register_tx(raw: bytes, reg: Registration, contract: str, stake_wei: int, chain_id: int) -> None:
    """The server's side before broadcasting: the transaction is the registered miner's own
    ``register`` call of ``reg``'s key on ``contract`` with the task's stake, and nothing else."""
    try:
        fields = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
        sender = Account.recover_transaction(raw)
    except Exception as exc:  # noqa: BLE001 - malformed bytes from the network
        raise RegistrationError(f"unreadable register transaction from {reg.address}: {exc}") from exc
    if sender != reg.address:
        raise RegistrationError(f"register transaction is signed by {sender}, not {reg.address}")
    to = fields.get("to")
    to_hex = ("0x" + bytes(to).hex()) if isinstance(to, bytes | bytearray) else str(to)
    if to_hex.lower() != contract.lower():
        raise RegistrationError(f"register transaction of {reg.address} is addressed to {to_hex}")
    if bytes(fields.get("data", b"")) != register_call_data(reg.secagg_public):
        raise RegistrationError(f"register transaction of {reg.address} is not register(its key)")
    if int(fields.get("value", 0)) != int(stake_wei):
        raise RegistrationError(f"register transaction of {reg.address} stakes {fields.get('value')} wei")
    if int(fields.get("chainId", -1)) != int(chain_id):
        raise RegistrationError(f"register transaction of {reg.address} is for chain {fields.get('chainId')}")
