"""The same client against a real JSON-RPC node (anvil from npm), started on a free port."""

from __future__ import annotations

import pytest
from eth_utils import keccak

from contracts.chain import AnvilProcess, Chain, ChainConfig, ChainUnavailableError, ContractRevertError
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
    r1 = w.run_round(task, 1)
    assert r1.reveals is not None and r1.reveals.event("RoundSettled")["minersPaid"] > 0
    w.run_round(task, 2, accept=False)
    r2 = w.run_round(task, 2)
    assert r2.votes.event("TaskCompleted")["finalizedRounds"] == 2
    assert c.task(task)["status"] == TaskStatus.COMPLETED
    assert c.round_state(task)["phase"] == Phase.COMMIT
    before = c.chain.balance(w.miners[0].address)
    amount = c.claim(w.miners[0], [task])
    assert amount > 0 and c.chain.balance(w.miners[0].address) > before


def test_reverts_decoded_on_anvil(anvil_client: ModelMineClient) -> None:
    c = anvil_client
    w = Scenario(c, 1)
    task = w.publish()
    subs, _ = w.submissions(task, 1, keccak(b"s"), {w.miners[0].address: 1})
    with pytest.raises(ContractRevertError) as info:
        c.propose(w.miners[0], task, 1, keccak(b"m"), keccak(b"s"), 10, subs)
    assert info.value.name == "NotAggregator" and info.value.args_decoded == (w.miners[0].address,)
    with pytest.raises(ContractRevertError) as info:
        c.claim(w.miners[0])
    assert info.value.name == "NothingToClaim"
    # the failed attempts did not break nonce tracking
    c.propose(w.aggregator, task, 1, keccak(b"m"), keccak(b"s"), 10, subs)
    assert c.wait_for_event("RoundProposed", timeout_s=5, taskId=task)["participants"] == 1


def test_time_travel_and_late_vote_on_anvil(anvil_client: ModelMineClient) -> None:
    c = anvil_client
    w = Scenario(c, 2)
    task = w.publish(round_window_s=50)
    subs, _ = w.submissions(task, 1, keccak(b"s"), {m.address: 3 for m in w.miners})
    c.propose(w.aggregator, task, 1, keccak(b"m"), keccak(b"s"), 10, subs)
    c.chain.advance_time(51)
    votes = w.votes(task, 1, keccak(b"m"), {m.address: True for m in w.miners}, {m.address: 1 for m in w.miners})
    with pytest.raises(ContractRevertError) as info:
        c.relay_votes(w.aggregator, task, 1, keccak(b"m"), votes)
    assert info.value.name == "WindowClosed"


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
