"""A miner's registration proves itself: the server relays only what the miner signed, for the right
chain, contract, key and stake; forged or altered registrations and transactions are refused."""

from __future__ import annotations

import pytest
from eth_account import Account

from aggregator.registration import (
    Registration,
    RegistrationError,
    check_register_tx,
    sign_register_tx,
    sign_registration,
    verify_registration,
)

CONTRACT = "0x" + "ab" * 20
KEY = b"\x02" + b"\x11" * 32


def _tx(eth_key: bytes, **over) -> bytes:
    args = {"chain_id": 31337, "contract": CONTRACT, "stake_wei": 10**16, "nonce": 0, "gas": 500_000,
            "max_fee_per_gas": 3 * 10**9, "max_priority_fee_per_gas": 10**9} | over
    return sign_register_tx(eth_key, KEY, **args)


def test_a_signed_registration_round_trips_and_verifies():
    key = bytes(Account.create().key)
    reg = Registration.from_config(sign_registration(key, KEY, 31337, CONTRACT).to_config())
    verify_registration(reg, 31337, CONTRACT)
    assert reg.address == Account.from_key(key).address


def test_a_registration_claiming_another_address_is_refused():
    reg = sign_registration(bytes(Account.create().key), KEY, 31337, CONTRACT)
    forged = Registration(Account.create().address, reg.secagg_public, reg.chain_id, reg.contract, reg.signature)
    with pytest.raises(RegistrationError, match="is signed by"):
        verify_registration(forged, 31337, CONTRACT)


def test_a_swapped_secagg_key_or_another_chain_is_refused():
    reg = sign_registration(bytes(Account.create().key), KEY, 31337, CONTRACT)
    swapped = Registration(reg.address, b"\x03" + b"\x22" * 32, reg.chain_id, reg.contract, reg.signature)
    with pytest.raises(RegistrationError):
        verify_registration(swapped, 31337, CONTRACT)
    with pytest.raises(RegistrationError, match="another chain"):
        verify_registration(reg, 1, CONTRACT)


def test_the_relayed_transaction_must_be_the_miners_own_register_call():
    key = bytes(Account.create().key)
    reg = sign_registration(key, KEY, 31337, "")
    check_register_tx(_tx(key), reg, CONTRACT, 10**16, 31337)
    with pytest.raises(RegistrationError, match="signed by"):
        check_register_tx(_tx(bytes(Account.create().key)), reg, CONTRACT, 10**16, 31337)
    with pytest.raises(RegistrationError, match="addressed to"):
        check_register_tx(_tx(key, contract="0x" + "cd" * 20), reg, CONTRACT, 10**16, 31337)
    with pytest.raises(RegistrationError, match="stakes"):
        check_register_tx(_tx(key, stake_wei=1), reg, CONTRACT, 10**16, 31337)
    with pytest.raises(RegistrationError, match="for chain"):
        check_register_tx(_tx(key, chain_id=5), reg, CONTRACT, 10**16, 31337)
    with pytest.raises(RegistrationError, match="not register"):
        check_register_tx(sign_register_tx(key, b"\x03" + b"\x22" * 32, chain_id=31337, contract=CONTRACT,
                                           stake_wei=10**16, nonce=0, gas=500_000, max_fee_per_gas=3 * 10**9,
                                           max_priority_fee_per_gas=10**9), reg, CONTRACT, 10**16, 31337)
    with pytest.raises(RegistrationError, match="unreadable"):
        check_register_tx(b"\x02garbage", reg, CONTRACT, 10**16, 31337)
