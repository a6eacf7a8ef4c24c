"""Commitments: byte-identical to Solidity keccak256(abi.encode(score, nonce, taskId, round, attempt, miner))."""

from __future__ import annotations

import pytest
from eth_abi import encode
from eth_utils import keccak, to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.commitments import (
    CommitmentError,
    Opening,
    commitment,
    new_nonce,
    normalize_address,
    verify_opening,
)

# Computed once by a Solidity 0.8 contract (solc-js 0.8.37, evm cancun) executed on py-evm:
#   keccak256(abi.encode(score, nonce, taskId, round, attempt, miner))
SOLIDITY_VECTORS = [
    (123456789, bytes.fromhex("11" * 32), 42, 7, 3, "0x00000000000000000000000000000000DeaDBeef",
     "1db433f80f6e0133f1d75a57712bc926af884c46addef9d506a77a985c738e94"),
    (2**256 - 1, b"\xff" * 32, 2**256 - 1, 2**256 - 1, 2**256 - 1, "0xFFfFfFffFFfffFFfFFfFFFFFffFFFffffFfFFFfF",
     "f8e200b647f3ccec634a254a7e4aa1c35871abe36739357ce142735c6eeffa4b"),
    (0, bytes(32), 0, 1, 1, "0x0000000000000000000000000000000000000001",
     "f3401b514e6f3157ef81a3dc11bd601958599d0f45a9bfb54940f02bc4faadbb"),
]


@pytest.mark.parametrize(("score", "nonce", "task", "rnd", "attempt", "miner", "expected"), SOLIDITY_VECTORS)
def test_solidity_vectors(score: int, nonce: bytes, task: int, rnd: int, attempt: int, miner: str, expected: str) -> None:
    assert commitment(score, nonce, task, rnd, miner, attempt).hex() == expected


def test_attempt_is_bound() -> None:
    """An opening of one attempt does not open the same round's commitment in another attempt."""
    miner, nonce = "0x00000000000000000000000000000000DeaDBeef", new_nonce()
    c = commitment(10, nonce, 1, 2, miner, 5)
    assert verify_opening(c, Opening(10, nonce), 1, 2, miner, 5)
    assert not verify_opening(c, Opening(10, nonce), 1, 2, miner, 6)
    assert commitment(10, nonce, 1, 2, miner) == commitment(10, nonce, 1, 2, miner, 1)


def _manual_abi(score: int, nonce: bytes, task: int, rnd: int, miner: str) -> bytes:
    """abi.encode of static types by hand (attempt 1): every word 32 bytes, address left-padded."""
    addr = bytes.fromhex(miner[2:])
    return (
        score.to_bytes(32, "big") + nonce + task.to_bytes(32, "big") + rnd.to_bytes(32, "big")
        + (1).to_bytes(32, "big") + bytes(12) + addr
    )


uint256 = st.integers(min_value=0, max_value=2**256 - 1)
addresses = st.binary(min_size=20, max_size=20).map(lambda b: to_checksum_address(b))


@settings(max_examples=50, deadline=None)
@given(uint256, st.binary(min_size=32, max_size=32), uint256, uint256, addresses)
def test_matches_eth_abi_and_manual_encoding(score: int, nonce: bytes, task: int, rnd: int, miner: str) -> None:
    expected = keccak(encode(["uint256", "bytes32", "uint256", "uint256", "uint256", "address"],
                             [score, nonce, task, rnd, 1, miner]))
    assert commitment(score, nonce, task, rnd, miner) == expected
    assert keccak(_manual_abi(score, nonce, task, rnd, miner)) == expected
    # lower-case address gives the same commitment
    assert commitment(score, nonce, task, rnd, miner.lower()) == expected


def test_opening_round_trip_and_binding() -> None:
    miner = "0x00000000000000000000000000000000DeaDBeef"
    nonce = new_nonce()
    assert len(nonce) == 32 and nonce != new_nonce()
    c = commitment(10, nonce, 1, 2, miner)
    assert verify_opening(c, Opening(10, nonce), 1, 2, miner)
    assert not verify_opening(c, Opening(11, nonce), 1, 2, miner)
    assert not verify_opening(c, Opening(10, new_nonce()), 1, 2, miner)
    assert not verify_opening(c, Opening(10, nonce), 1, 3, miner)
    assert not verify_opening(c, Opening(10, nonce), 2, 2, miner)
    assert not verify_opening(c, Opening(10, nonce), 1, 2, "0x" + "00" * 19 + "01")


@pytest.mark.parametrize(
    ("score", "nonce", "task", "rnd", "miner"),
    [
        (-1, bytes(32), 0, 0, "0x" + "00" * 20),
        (2**256, bytes(32), 0, 0, "0x" + "00" * 20),
        (True, bytes(32), 0, 0, "0x" + "00" * 20),
        (1.0, bytes(32), 0, 0, "0x" + "00" * 20),
        (1, bytes(31), 0, 0, "0x" + "00" * 20),
        (1, "00" * 32, 0, 0, "0x" + "00" * 20),
        (1, bytes(32), -1, 0, "0x" + "00" * 20),
        (1, bytes(32), 0, 2**256, "0x" + "00" * 20),
        (1, bytes(32), 0, 0, "0x1234"),
        (1, bytes(32), 0, 0, b"\x00" * 20),
        (1, bytes(32), 0, 0, "0x00000000000000000000000000000000DEaDBeef"),  # bad EIP-55 checksum
    ],
)
def test_bad_inputs_raise(score: object, nonce: object, task: int, rnd: int, miner: object) -> None:
    with pytest.raises(CommitmentError):
        commitment(score, nonce, task, rnd, miner)  # type: ignore[arg-type]


def test_normalize_address() -> None:
    expected = "0x00000000000000000000000000000000DeaDBeef"
    assert normalize_address("0x00000000000000000000000000000000deadbeef") == expected
    assert normalize_address("0X00000000000000000000000000000000DEADBEEF") == expected
    # a correctly checksummed address without the 0x prefix is accepted (was wrongly rejected)
    assert normalize_address("00000000000000000000000000000000DeaDBeef") == expected
    with pytest.raises(CommitmentError, match="checksum"):
        normalize_address("00000000000000000000000000000000DEaDBeef")
