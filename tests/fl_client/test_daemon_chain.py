"""The miner daemon against a real chain node (anvil) and a real model store: it skips a task it
cannot serve (and says why), refuses a task whose spec in the store is not the one on chain, joins a
good one with its own stake transaction, and resumes after a restart without staking twice.
SuperNode processes are replaced by a recorder (they are exercised by tests/test_local_network.py)."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from aggregator.secagg import AggregatorKeys, PublisherKeys
from contracts.chain import ANVIL_BIN, AnvilProcess, Chain, ChainConfig
from contracts.client import ModelMineClient
from fl_client import daemon as daemon_mod
from fl_client.daemon import DaemonConfig, MinerDaemon
from fl_client.identity import create_identity
from fl_client.supervisor import SuperNodeSettings
from fl_client.validator import MinerPolicy
from fl_server.model_store import serve

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.anvil, pytest.mark.skipif(not ANVIL_BIN.exists(), reason="anvil missing")]


class FakeProcesses:
    started: list[int] = []

    def __init__(self, task_id: int, *args: Any, **kwargs: Any) -> None:
        self.task_id = task_id
        self.restarts = 0

    def start(self) -> None:
        FakeProcesses.started.append(self.task_id)

    def poll(self) -> None:
        pass

    def pids(self) -> list[int]:
        return []

    def stop(self) -> None:
        pass


@pytest.fixture(scope="module")
def network() -> Iterator[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="mm-daemon-chain-"))  # outside pytest's rotating basetemp
    anvil = AnvilProcess().start()
    server = serve(tmp / "blobs", "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        chain = Chain(ChainConfig.from_mapping({"backend": "rpc", "rpc_url": anvil.url, "dev_chain": True}))
        deployer = Account.create()
        chain.fund(deployer.address, 10**20)
        client = ModelMineClient.deploy(chain, deployer)
        publisher = Account.create()
        chain.fund(publisher.address, 10**20)
        yield {"tmp": tmp, "url": anvil.url, "chain": chain, "client": client, "publisher": publisher,
               "store": f"http://127.0.0.1:{server.server_address[1]}"}
    finally:
        server.shutdown()
        server.server_close()
        anvil.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def publish(net: dict[str, Any], dataset: str, min_samples: int = 1) -> int:
    sys.path.insert(0, str(REPO / "scripts"))
    import publish_task

    out = net["tmp"] / f"task-{dataset}-{min_samples}.json"
    key = net["tmp"] / "publisher.key"
    key.write_text(net["publisher"].key.hex())
    key.chmod(0o600)
    rc = publish_task.main([
        "publish", "--rpc-url", net["url"], "--contract", net["client"].address, "--publisher-key-file", str(key),
        "--store-url", net["store"], "--aggregator", Account.create().address,
        "--aggregator-secagg-public", AggregatorKeys.generate().public.hex(),
        "--publisher-secagg-public", PublisherKeys.generate().public.hex(), "--dataset", dataset, "--model", "mlp",
        "--rounds", "2", "--min-samples", str(min_samples), "--density", "0.1", "--json", str(out)])
    assert rc == 0
    return int(json.loads(out.read_text())["task_id"])


def make_miner(net: dict[str, Any], name: str, dataset: str, samples: int) -> DaemonConfig:
    folder = net["tmp"] / name
    identity = create_identity(folder)
    net["chain"].fund(identity.address, 10**18)
    (folder / "manifest.json").write_text(json.dumps({"dataset": dataset, "train_samples": samples}))
    return DaemonConfig(
        miner_dir=folder, data_dir=folder, rpc_url=net["url"], contract_address=net["client"].address,
        store_url=net["store"], supernode=SuperNodeSettings("127.0.0.1:9", 9999, insecure=True),
        allowed_fab_hashes=["ab" * 32], policy=MinerPolicy(), stake_wei=10**16,
        from_block=net["client"].from_block, poll_interval_s=0.2,
    )


def test_daemon_skips_refuses_joins_and_resumes(network: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(daemon_mod, "TaskProcesses", FakeProcesses)
    caplog.set_level("INFO", logger="modelmine.miner")
    mnist_task = publish(network, "mnist")
    big_task = publish(network, "digits", min_samples=10_000)
    good_task = publish(network, "digits", min_samples=100)
    # a fourth task whose spec blob in the store is swapped for another valid spec under the same name
    bad_task = publish(network, "digits")
    client: ModelMineClient = network["client"]
    bad_hash = bytes(client.events("TaskPublished", taskId=bad_task)[0]["metadataHash"]).hex()
    other_hash = bytes(client.events("TaskPublished", taskId=good_task)[0]["metadataHash"]).hex()
    blobs = network["tmp"] / "blobs" / "specs"
    shutil.copy(blobs / f"{other_hash}.json", blobs / f"{bad_hash}.json")  # a store that lies

    cfg = make_miner(network, "m0", "digits", samples=500)
    miner = MinerDaemon(cfg)
    miner.tick()
    tasks = miner.state.tasks
    assert tasks[mnist_task].status == "skipped" and "needs data set 'mnist'" in tasks[mnist_task].reason
    assert tasks[big_task].status == "skipped" and "at least 10000 training samples" in tasks[big_task].reason
    assert tasks[bad_task].status == "skipped" and "the chain says" in tasks[bad_task].reason
    assert tasks[good_task].status == "running"
    registered = [e["miner"] for e in client.events("MinerRegistered")]
    assert registered.count(miner.account.address) == 1  # its own transaction, once
    assert FakeProcesses.started == [good_task]
    assert "skip: task needs data set 'mnist'" in caplog.text
    miner.shutdown()

    again = MinerDaemon(cfg)  # a restart: resumes the joined task, stakes nothing again
    again.resume()
    again.tick()
    assert FakeProcesses.started == [good_task, good_task]
    assert [e["miner"] for e in client.events("MinerRegistered")].count(miner.account.address) == 1
    assert again.state.tasks[good_task].status == "running"
    again.shutdown()

    import publish_task  # scripts/ is on sys.path (publish above)

    base = ["--rpc-url", network["url"], "--contract", client.address]
    assert publish_task.main(["status", *base, "--task-id", str(good_task)]) == 0
    assert publish_task.main(["status", *base, "--task-id", "999"]) == 2  # no such task: one-line error
    key = network["tmp"] / "publisher.key"
    assert publish_task.main(["cancel", *base, "--task-id", str(good_task), "--publisher-key-file", str(key)]) == 0
    assert int(client.task(good_task)["status"]) == 3
    # the task ended: its processes stop, there is nothing to claim
    again = MinerDaemon(cfg)
    again.resume()
    assert again.state.tasks[good_task].status == "finished"
    again.shutdown()
