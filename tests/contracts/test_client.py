"""Chain client plumbing: config files, key loading, errors for a dead node, revert decoding."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from contracts.chain import (
    Chain,
    ChainConfig,
    ChainError,
    ChainUnavailableError,
    free_port,
    load_account,
    new_account,
)
from contracts.client import ModelMineClient, compact_signature, participants_hash
from contracts.testing import Scenario

CONF = Path(__file__).resolve().parents[2] / "conf" / "chain"


@pytest.mark.parametrize("name,backend", [("none", "none"), ("embedded", "embedded"), ("anvil", "rpc")])
def test_config_files_load(name: str, backend: str) -> None:
    data = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    cfg = ChainConfig.from_mapping(data)
    assert cfg.backend == backend
    if name != "none":
        assert set(data) <= set(ChainConfig.__dataclass_fields__), "unknown keys in the yaml"
        assert cfg.quorum_bps == 5000 and cfg.reward_pool_wei == 10**18


def test_backend_none_gives_no_client() -> None:
    assert ModelMineClient.from_config({"backend": "none"}) is None


def test_from_config_embedded_deploys() -> None:
    client = ModelMineClient.from_config(yaml.safe_load((CONF / "embedded.yaml").read_text()))
    assert client is not None and client.task_count() == 0
    again = ModelMineClient.from_config({"backend": "embedded", "contract_address": client.address})
    assert again is not None and again.address == client.address


def test_unknown_backend() -> None:
    with pytest.raises(ChainError, match="unknown chain backend"):
        Chain(ChainConfig(backend="nope"))


def test_dead_node_raises_chain_unavailable_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ChainUnavailableError) as info:
        Chain(ChainConfig(backend="rpc", rpc_url=url, retries=2, backoff_s=0.01))
    assert info.value.url == url and url in str(info.value)
    assert time.monotonic() - start < 10


def test_load_account_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    acct = new_account()
    key_file = tmp_path / "key"
    key_file.write_text(acct.key.hex() + "\n")
    assert load_account(key_file=str(key_file)).address == acct.address
    monkeypatch.setenv("MM_TEST_KEY", acct.key.hex())
    assert load_account(key_env="MM_TEST_KEY").address == acct.address
    assert load_account() is None
    bad = tmp_path / "bad"
    bad.write_text("not-a-key")
    with pytest.raises(ChainError) as info:
        load_account(key_file=str(bad))
    assert "not-a-key" not in str(info.value) and str(bad) in str(info.value)
    with pytest.raises(ChainError):
        load_account(key_env="MM_TEST_KEY_UNSET_" + os.urandom(4).hex())


def test_short_or_long_keys_are_refused_naming_the_file(tmp_path: Path) -> None:
    """A 63-hex-digit key (a dropped leading digit) is refused, never zero-padded into another account."""
    acct = new_account()
    body = bytes(acct.key).hex()
    for text in (body[1:], "0x" + body[1:], body + "0", "0x" + "00" * 32):
        path = tmp_path / f"key{len(text)}"
        path.write_text(text)
        with pytest.raises(ChainError) as info:
            load_account(key_file=str(path))
        assert str(path) in str(info.value) and body[1:] not in str(info.value)
    path = tmp_path / "ok"
    path.write_text("0x" + body)
    assert load_account(key_file=str(path)).address == acct.address


def test_role_keys_from_config_and_dev_only_generation(tmp_path: Path) -> None:
    acct = new_account()
    (tmp_path / "agg").write_text(bytes(acct.key).hex())
    conf = ChainConfig.from_mapping({"backend": "embedded", "aggregator_key_file": str(tmp_path / "agg")})
    assert conf.role_account("aggregator").address == acct.address
    assert conf.role_account("publisher") is None and conf.is_dev
    assert not ChainConfig.from_mapping({"backend": "rpc", "rpc_url": "http://127.0.0.1:1"}).is_dev
    assert ChainConfig.from_mapping({"backend": "rpc", "start_anvil": True}).is_dev
    assert ChainConfig.from_mapping({"backend": "rpc", "rpc_url": "http://x", "dev_chain": "true"}).is_dev


def test_compact_signature_roundtrip() -> None:
    from eth_keys import keys

    acct = new_account()
    msg_hash = b"\x11" * 32
    sig = keys.PrivateKey(bytes(acct.key)).sign_msg_hash(msg_hash)
    full = sig.to_bytes()[:64] + bytes([sig.v + 27])
    r, vs = compact_signature(full)
    v = 27 + (vs[0] >> 7)
    s = int.from_bytes(vs, "big") & ((1 << 255) - 1)
    assert r == full[:32] and s.to_bytes(32, "big") == full[32:64] and v == full[64]


def test_revert_decoding_names_custom_error_with_args(client: ModelMineClient) -> None:
    from contracts.chain import ContractRevertError

    acct = client.chain.funded_account()
    with pytest.raises(ContractRevertError) as info:
        client.claim(acct)
    assert info.value.name == "NothingToClaim" and info.value.function == "claim"
    with pytest.raises(ContractRevertError) as info:
        client.task(42)
    assert info.value.name == "TaskNotFound" and info.value.args_decoded == (42,)


def test_participants_hash_matches_contract(world) -> None:  # noqa: ANN001
    from eth_utils import keccak

    c = world.client
    task = world.publish()
    round_, attempt, support = world.open(task)
    assert c.committed_miners(task, round_, attempt) is None  # window open, nobody committed yet
    subs, _ = world.submissions(task, round_, support, {m.address: 1 for m in world.miners}, attempt=attempt)
    c.relay_submissions(world.aggregator, task, round_, attempt, subs)
    rs = c.round_state(task)
    assert participants_hash(rs["attempt"], c.participants(task)) == rs["participantsHash"]
    assert rs["participants"] == 3 and rs["epoch"] == rs["attempt"] == attempt
    assert c.committed_miners(task, round_, attempt) == [m.address for m in world.miners]
    assert c.commit_deadline(task, round_, attempt) == rs["commitDeadline"]
    assert keccak(b"unused") != support


def test_wait_for_event(world) -> None:  # noqa: ANN001
    c = world.client
    task = world.publish()
    ev = c.wait_for_event("TaskPublished", timeout_s=2, taskId=task)
    assert ev["taskId"] == task
    with pytest.raises(TimeoutError):
        c.wait_for_event("TaskCancelled", timeout_s=0.3, taskId=task)


def test_participants_are_read_incrementally_and_match_a_fresh_read(world: Scenario) -> None:
    """Each read of the committed list scans only blocks after the previous read (a round's cost does
    not grow with the chain's history), and always equals a full read by a fresh client."""
    c = world.client
    task = world.publish()
    round_, attempt, support = world.open(task)
    first, rest = world.miners[:2], world.miners[2:]
    subs, _ = world.submissions(task, round_, support, {m.address: 5 for m in world.miners}, attempt=attempt)
    c.relay_submissions(world.aggregator, task, round_, attempt, subs[:2])
    assert [m for m, _ in c.participants(task)] == [m.address for m in first]
    scanned: list[int] = []
    original = c.events

    def spy(name: str, from_block: int | None = None, **filters: object) -> list:
        scanned.append(c.from_block if from_block is None else from_block)
        return original(name, from_block=from_block, **filters)

    c.events = spy  # type: ignore[method-assign]
    head = c.chain.w3.eth.block_number
    c.relay_submissions(world.aggregator, task, round_, attempt, subs[2:])
    everyone = c.participants(task)
    assert scanned == [head + 1]  # only the new blocks
    fresh = ModelMineClient(c.chain, c.address, c.from_block)
    assert everyone == fresh.participants(task) and [m for m, _ in everyone] == [m.address for m in first + rest]
    assert c.committed_miners(task, round_, attempt) == [m.address for m in first + rest]


def test_embedded_event_reads_equal_eth_testers_get_logs(world: Scenario) -> None:
    """The embedded chain's direct receipt reader (linear in blocks) returns exactly what eth-tester's
    get_logs (quadratic) does, filters included."""
    c = world.client
    assert c.chain.cfg.backend == "embedded"
    task = world.publish()
    round_, attempt, support = world.open(task)
    subs, _ = world.submissions(task, round_, support, {m.address: 7 for m in world.miners}, attempt=attempt)
    c.relay_submissions(world.aggregator, task, round_, attempt, subs)
    for name, filters in [("MinerRegistered", {}), ("Committed", {"taskId": task}),
                          ("MinerRegistered", {"miner": [world.miners[1].address.lower(), world.miners[2].address]}),
                          ("Committed", {"taskId": task + 1})]:
        ours = [{k: v for k, v in r.items() if k not in ("blockNumber", "transactionIndex", "logIndex")}
                for r in c.events(name, **filters)]
        theirs = c.contract.events[name]().get_logs(from_block=c.from_block, to_block="latest",
                                                   argument_filters=filters or None)
        assert ours == [dict(lg["args"]) for lg in theirs], (name, filters)
    assert len(c.events("Committed", taskId=task)) == len(world.miners)
