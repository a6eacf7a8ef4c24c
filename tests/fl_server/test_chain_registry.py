"""The server's miner registry read from the chain: only the enrolled miners' registrations."""

from __future__ import annotations

from contracts.chain import Chain, ChainConfig
from contracts.client import ModelMineClient
from contracts.testing import Scenario, compressed_pubkey
from fl_server.chain_round import ChainSession


def _session(client: ModelMineClient) -> ChainSession:
    account = client.chain.funded_account()
    return ChainSession(client, 1, None, account, 9000, b"\0" * 32, 0.0)


def test_registry_of_given_addresses_holds_exactly_their_onchain_keys() -> None:
    chain = Chain(ChainConfig(backend="embedded", retries=0))
    client = ModelMineClient.deploy(chain, chain.funded_account(), treasury=chain.funded_account().address)
    world = Scenario(client, 4)
    session = _session(client)
    wanted = [world.miners[1].address, world.miners[3].address.lower()]  # any address spelling
    registry = session.registry(wanted)
    assert set(registry.secagg_keys) == {world.miners[1].address, world.miners[3].address}
    assert registry.key_of(world.miners[3].address) == compressed_pubkey(world.miners[3])
    assert session.registry([]).secagg_keys == {}
    assert set(session.registry().secagg_keys) == {m.address for m in world.miners}  # no filter: all of them
