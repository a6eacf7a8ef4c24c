"""EIP-712 messages: Solidity-computed digests, sign/recover round trip, rejection of bad signatures."""

from __future__ import annotations

import dataclasses

import pytest
from eth_account import Account

from aggregator import eip712 as E

VC = "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB"
DOMAIN = E.Domain(chain_id=31337, verifying_contract=VC)

SUBMISSION = E.Submission(42, 7, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, attempt=3)
VOTE = E.Vote(42, 7, b"\x04" * 32, True, 9712, attempt=3)
REVEAL = E.Reveal(42, 7, 123456789, b"\x11" * 32, attempt=3)
REGISTRATION = E.Registration("0x00000000000000000000000000000000DeaDBeef", b"\x02" + b"\x07" * 32, 1, 1_800_000_000)

# Computed once by a Solidity 0.8 contract (solc-js 0.8.37, evm cancun, run on py-evm) that builds the
# domain separator and struct hashes from the type strings by hand: keccak256("\x19\x01" || ds || s)
# (bytes fields hashed with keccak256, as EIP-712 specifies).
SOLIDITY_DIGESTS = {
    "Submission": "7bdb84a46e4fbc4ae0db8c131f10a35de2af70d2f3329ae615b3b531358c31f9",
    "Vote": "e6928cc94f945d060b17a793ee59b3cdda01fa4e03b92939a9748e0f5474e1c4",
    "Reveal": "50e2776c4773f9cb979f19645acdaca1f4059549585a8c8fdb173154eced8d19",
    "Registration": "5acf69717c0d7de1fe58edf454c5007bb29547da429b006b1ff5b3b690db299a",
}
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
MESSAGES = [SUBMISSION, VOTE, REVEAL, REGISTRATION]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_digest_matches_solidity(message: E.Message) -> None:
    assert E.digest(DOMAIN, message).hex() == SOLIDITY_DIGESTS[type(message).__name__]


def test_type_strings_unchanged() -> None:
    def type_string(name: str) -> str:
        fields = ",".join(f"{f['type']} {f['name']}" for f in E.MESSAGE_TYPES[name])
        return f"{name}({fields})"

    assert type_string("Submission") == (
        "Submission(uint256 taskId,uint256 round,uint256 attempt,bytes32 supportHash,bytes32 ciphertextHash,"
        "bytes32 commitment)"
    )
    assert type_string("Vote") == (
        "Vote(uint256 taskId,uint256 round,uint256 attempt,bytes32 modelHash,bool accept,uint256 accuracyBps)"
    )
    assert type_string("Reveal") == "Reveal(uint256 taskId,uint256 round,uint256 attempt,uint256 score,bytes32 nonce)"
    assert type_string("Registration") == (
        "Registration(address miner,bytes secaggKey,uint256 nonce,uint256 deadline)"
    )


@pytest.mark.parametrize("message", [SUBMISSION, VOTE, REVEAL], ids=lambda m: type(m).__name__)
def test_signature_of_one_attempt_is_useless_for_another(message: E.Message) -> None:
    """Replay across retries: the attempt is part of what is signed."""
    acct = Account.create()
    sig = E.sign(DOMAIN, message, acct.key)
    with pytest.raises(E.SignatureError):
        E.verify(DOMAIN, dataclasses.replace(message, attempt=message.attempt + 1), sig, acct.address)


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_sign_recover_round_trip(message: E.Message) -> None:
    acct = Account.create()
    sig = E.sign(DOMAIN, message, acct.key)
    assert len(sig) == 65
    assert E.recover(DOMAIN, message, sig) == acct.address
    E.verify(DOMAIN, message, sig, acct.address)
    E.verify(DOMAIN, message, sig, acct.address.lower())


def test_wrong_signer_rejected() -> None:
    a, b = Account.create(), Account.create()
    sig = E.sign(DOMAIN, SUBMISSION, a.key)
    with pytest.raises(E.SignatureError, match="expected"):
        E.verify(DOMAIN, SUBMISSION, sig, b.address)


@pytest.mark.parametrize(
    ("field", "value"),
    [("taskId", 43), ("round", 8), ("attempt", 4), ("supportHash", b"\x09" * 32), ("ciphertextHash", b"\x00" * 32),
     ("commitment", b"\x05" * 32)],
)
def test_tampered_field_rejected(field: str, value: object) -> None:
    acct = Account.create()
    sig = E.sign(DOMAIN, SUBMISSION, acct.key)
    tampered = dataclasses.replace(SUBMISSION, **{field: value})
    with pytest.raises(E.SignatureError):
        E.verify(DOMAIN, tampered, sig, acct.address)


def test_other_domain_rejected() -> None:
    acct = Account.create()
    sig = E.sign(DOMAIN, VOTE, acct.key)
    for other in (E.Domain(1, VC), E.Domain(31337, "0x" + "cd" * 20)):
        with pytest.raises(E.SignatureError):
            E.verify(other, VOTE, sig, acct.address)


def test_vote_accept_flag_bound() -> None:
    acct = Account.create()
    sig = E.sign(DOMAIN, VOTE, acct.key)
    with pytest.raises(E.SignatureError):
        E.verify(DOMAIN, dataclasses.replace(VOTE, accept=False), sig, acct.address)


@pytest.mark.parametrize("bad", [b"", b"\x00" * 64, b"\x00" * 66, "00" * 65, b"\x00" * 65])
def test_malformed_signature(bad: object) -> None:
    with pytest.raises(E.SignatureError):
        E.recover(DOMAIN, REVEAL, bad)  # type: ignore[arg-type]


def test_malleable_and_v01_signatures_rejected_like_openzeppelin() -> None:
    acct = Account.create()
    sig = E.sign(DOMAIN, REVEAL, acct.key)
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    high_s = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])
    with pytest.raises(E.SignatureError, match="high-s"):
        E.recover(DOMAIN, REVEAL, high_s)
    with pytest.raises(E.SignatureError, match="27 or 28"):
        E.recover(DOMAIN, REVEAL, sig[:64] + bytes([v - 27]))
