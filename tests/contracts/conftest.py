"""Fixtures for the contract tests: a shared embedded chain, a fresh contract per test, a session anvil."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from contracts.chain import AnvilProcess, Chain, ChainConfig, ContractRevertError
from contracts.client import ModelMineClient
from contracts.testing import Scenario


@pytest.fixture(scope="session")
def embedded_chain() -> Chain:
    return Chain(ChainConfig(backend="embedded", retries=0))


@pytest.fixture
def client(embedded_chain: Chain) -> ModelMineClient:
    """A freshly deployed ModelMine (fee 2%, min stake 1e15, slash 10%, unbonding 1h)."""
    return ModelMineClient.deploy(embedded_chain, embedded_chain.funded_account(), treasury=embedded_chain.funded_account().address)


@pytest.fixture
def world(client: ModelMineClient) -> Scenario:
    """Publisher, aggregator and 3 registered miners on a fresh contract."""
    return Scenario(client, 3)


@pytest.fixture(scope="session")
def anvil() -> Iterator[AnvilProcess]:
    if not AnvilProcess.available():
        pytest.skip("anvil binary missing (npm @foundry-rs/anvil)")
    with AnvilProcess() as proc:
        yield proc


@pytest.fixture(scope="session")
def anvil_chain(anvil: AnvilProcess) -> Chain:
    return Chain(ChainConfig(backend="rpc", rpc_url=anvil.url, retries=1, dev_chain=True))


@pytest.fixture
def fast_client(request: pytest.FixtureRequest) -> ModelMineClient:
    """A fresh ModelMine on anvil (much faster for hundreds of transactions), or on the embedded chain
    when the anvil binary is missing."""
    if AnvilProcess.available():
        chain = request.getfixturevalue("anvil_chain")
    else:
        chain = request.getfixturevalue("embedded_chain")
    return ModelMineClient.deploy(chain, chain.funded_account(), treasury=chain.funded_account().address)


@contextlib.contextmanager
def reverts(name: str) -> Iterator[None]:
    """Assert the block raises ContractRevertError with custom error ``name``."""
    with pytest.raises(ContractRevertError) as info:
        yield
    assert info.value.name == name, f"expected {name}, got {info.value.name}{info.value.args_decoded}"
