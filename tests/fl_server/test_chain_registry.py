"""The server's miner registry read from the chain: only the enrolled miners' registrations."""

from __future__ import annotations

from eth_utils import to_checksum_address

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


def test_round_outcome_names_the_miners_of_reveal_and_slash_events() -> None:
    from fl_server.chain_round import _miners_of

    a, b = "0x" + "ab" * 20, "0x" + "cd" * 20
    logs = [("Revealed", {"miner": a, "score": 3}), ("RevealInvalid", {"miner": b, "score": 9}),
            ("Slashed", {"miner": b, "amount": 1}), ("RoundSettled", {"minersPaid": 5}), ("Revealed", {"miner": b})]
    assert _miners_of(logs, "Revealed") == (to_checksum_address(a), to_checksum_address(b))
    assert _miners_of(logs, "Slashed") == (to_checksum_address(b),)
    assert _miners_of(logs, "Voted") == ()
