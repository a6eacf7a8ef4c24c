"""The same client against a real JSON-RPC node (anvil from npm), started on a free port."""

from __future__ import annotations

import pytest
from eth_utils import keccak

from contracts.chain import (
    AnvilProcess,
    Chain,
    ChainConfig,
    ChainError,
    ChainUnavailableError,
    ContractRevertError,
)
from contracts.client import ModelMineClient, Phase, TaskStatus
from contracts.testing import Scenario

pytestmark = pytest.mark.anvil


@pytest.fixture
def anvil_client(anvil_chain: Chain) -> ModelMineClient:
    return ModelMineClient.deploy(anvil_chain, anvil_chain.funded_account())


def test_full_task_on_anvil(anvil_client: ModelMineClient) -> None:
    c = anvil_client
    w = Scenario(c, 3)
    task = w.publish(reward_wei=2 * 10**18, rounds=2)
    r1 = w.run_round(task)
    assert r1.reveals is not None and r1.reveals.event("RoundSettled")["minersPaid"] > 0
    w.run_round(task, accept=False)
    r2 = w.run_round(task)
    assert r2.votes.event("TaskCompleted")["finalizedRounds"] == 2
    assert c.task(task)["status"] == TaskStatus.COMPLETED
    assert c.round_state(task)["phase"] == Phase.IDLE and c.round_state(task)["attempt"] == 3
    before = c.chain.balance(w.miners[0].address)
    amount = c.claim(w.miners[0], [task])
    assert amount > 0 and c.chain.balance(w.miners[0].address) > before


def test_reverts_decoded_on_anvil(anvil_client: ModelMineClient) -> None:
    c = anvil_client
    w = Scenario(c, 2)
    task = w.publish()
    with pytest.raises(ContractRevertError) as info:
        c.open_round(w.miners[0], task, 1, 1, keccak(b"s"), [m.address for m in w.miners])
    assert info.value.name == "NotAggregator" and info.value.args_decoded == (w.miners[0].address,)
    with pytest.raises(ContractRevertError) as info:
        c.claim(w.miners[0])
    assert info.value.name == "NothingToClaim"
    # the failed attempts did not break nonce tracking
    c.open_round(w.aggregator, task, 1, 1, keccak(b"s"), [m.address for m in w.miners])
    assert c.wait_for_event("RoundOpened", timeout_s=5, taskId=task)["attempt"] == 1


def test_time_travel_and_late_vote_on_anvil(anvil_client: ModelMineClient) -> None:
    c = anvil_client
    w = Scenario(c, 2)
    task = w.publish(round_window_s=60, commit_window_s=60)
    round_, attempt, support = w.open(task)
    subs, _ = w.submissions(task, round_, support, {m.address: 3 for m in w.miners}, attempt=attempt)
    c.relay_submissions(w.aggregator, task, round_, attempt, subs)
    c.propose(w.aggregator, task, round_, attempt, keccak(b"m"))
    c.chain.advance_time(61)
    votes = w.votes(task, round_, keccak(b"m"), {m.address: True for m in w.miners}, {m.address: 1 for m in w.miners},
                    attempt=attempt)
    with pytest.raises(ContractRevertError) as info:
        c.relay_votes(w.aggregator, task, round_, keccak(b"m"), votes, attempt=attempt)
    assert info.value.name == "WindowClosed"


def test_no_time_travel_or_funding_on_a_non_dev_node(anvil: AnvilProcess) -> None:
    """Against a node not marked dev (a real network), nothing moves time or takes accounts[0]."""
    chain = Chain(ChainConfig(backend="rpc", rpc_url=anvil.url, retries=0))
    assert not chain.cfg.is_dev
    with pytest.raises(ChainError, match="not a dev chain"):
        chain.advance_time(10)
    with pytest.raises(ChainError, match="not a dev chain"):
        chain.funded_account()
    with pytest.raises(ChainError, match="deployer|key"):
        ModelMineClient.from_config({"backend": "rpc", "rpc_url": anvil.url})


def test_node_going_down_raises_chain_unavailable() -> None:
    if not AnvilProcess.available():
        pytest.skip("anvil binary missing")
    proc = AnvilProcess().start()
    chain = Chain(ChainConfig(backend="rpc", rpc_url=proc.url, retries=1, backoff_s=0.01))
    assert chain.block_number() >= 0
    proc.stop()
    with pytest.raises(ChainUnavailableError) as info:
        chain.block_number()
    assert proc.url in str(info.value)


def test_start_anvil_from_config() -> None:
    if not AnvilProcess.available():
        pytest.skip("anvil binary missing")
    client = ModelMineClient.from_config({"backend": "rpc", "start_anvil": True})
    try:
        assert client is not None and client.chain.chain_id == 31337 and client.task_count() == 0
    finally:
        assert client is not None
        client.chain.close()
