"""Shared fixtures for the aggregator tests: fixed key pairs so cached BSGS tables are reused."""

from __future__ import annotations

import pytest

from aggregator.nddfe import KeyPair

_PUBLISHER = KeyPair.from_secret((0xA11CE).to_bytes(32, "big"))
_AGGREGATOR = KeyPair.from_secret((0xB0B).to_bytes(32, "big"))
_MINERS = [KeyPair.from_secret((1000 + i).to_bytes(32, "big")) for i in range(8)]


@pytest.fixture(scope="session")
def publisher() -> KeyPair:
    return _PUBLISHER


@pytest.fixture(scope="session")
def aggregator_keys() -> KeyPair:
    return _AGGREGATOR


@pytest.fixture(scope="session")
def miners() -> list[KeyPair]:
    return _MINERS
