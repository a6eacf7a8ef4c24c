"""End to end on Flower's deployment engine over loopback: anvil, the model store, the key service, a
SuperLink, three miner daemons and a published two-round task (scripts/local_network.py).

Asserts that the finalized model hash on chain equals the server's and is in the model store, and
that each miner's balance rose by exactly its claimed reward (minus the claim's own gas). The
second test kills one daemon mid-task and restarts it, and freezes anvil (SIGSTOP) for 30 s: the
server and the daemons retry with backoff and the task still completes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
ANVIL = REPO / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
pytestmark = [pytest.mark.slow, pytest.mark.anvil,
              pytest.mark.skipif(not ANVIL.exists(), reason="anvil binary missing (run scripts/setup.sh)")]


def local_network() -> Any:
    spec = importlib.util.spec_from_file_location("local_network", REPO / "scripts" / "local_network.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["local_network"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def args_for(ln: Any, run_dir: Path, miners: int, rounds: int) -> Any:
    return ln.build_parser().parse_args(
        ["up", "--miners", str(miners), "--rounds", str(rounds), "--run-dir", str(run_dir), "--timeout", "420",
         "--round-timeout-s", "120", "--round-window-s", "600"])


def claim_deltas(client: Any, address: str) -> list[tuple[int, int]]:
    """(claimed amount, balance change over the claim's block + the miner's gas in it) per Claimed event."""
    w3 = client.chain.w3
    out = []
    for row in client.events("Claimed", account=address):
        block = int(row["blockNumber"])
        receipts = [w3.eth.get_transaction_receipt(h) for h in w3.eth.get_block(block)["transactions"]]
        gas = sum(int(r["gasUsed"]) * int(r["effectiveGasPrice"]) for r in receipts if r["from"] == address)
        delta = w3.eth.get_balance(address, block) - w3.eth.get_balance(address, block - 1)
        out.append((int(row["amount"]), delta + gas))
    return out


def check_outcome(ln: Any, started: Any, result: dict[str, Any], rounds: int) -> None:
    client = started.client
    assert result["rounds_finalized"] == rounds
    assert result["model_hash_onchain"] == result["model_hash_server"]
    assert result["model_hash_store_ok"]
    settled = sum(int(r["minersPaid"]) + int(r["votersPaid"]) for r in client.events("RoundSettled",
                                                                                  taskId=started.task_id))
    claimed_total = 0
    for miner in started.miners:
        deltas = claim_deltas(client, miner["address"])
        claimed = sum(amount for amount, _ in deltas)
        assert claimed == result["rewards_wei"][miner["address"]]
        for amount, rise in deltas:
            assert rise == amount  # the balance rose by exactly the reward (gas of the claim added back)
        assert client.pending_rewards(started.task_id, miner["address"]) == 0
        claimed_total += claimed
    assert claimed_total == settled > 0


@pytest.fixture()
def net_dir() -> Iterator[Path]:
    """A folder outside pytest's rotating basetemp: concurrent pytest sessions of the same user
    delete old basetemps, which would pull the network's files from under its processes."""
    folder = Path(tempfile.mkdtemp(prefix="mm-e2e-"))
    yield folder / "net"
    shutil.rmtree(folder, ignore_errors=True)


def test_three_daemons_two_rounds(net_dir: Path) -> None:
    ln = local_network()
    args = args_for(ln, net_dir, miners=3, rounds=2)
    started = ln.start(args)
    try:
        result = ln.follow(started.net, started.client, started.task_id, started.miners, args, started.t_start)
        check_outcome(ln, started, result, rounds=2)
    finally:
        ln.down_network(started.net)


def test_daemon_restart_and_chain_outage(net_dir: Path) -> None:
    ln = local_network()
    args = args_for(ln, net_dir, miners=3, rounds=2)
    started = ln.start(args)
    net, client = started.net, started.client
    try:
        deadline = time.monotonic() + 300
        while not client.events("RoundFinalized", taskId=started.task_id):
            assert time.monotonic() < deadline, "round 1 never finalized"
            time.sleep(1)
        victim = "miner1"
        os.killpg(net.pids[victim], signal.SIGKILL)  # the daemon only: its SuperNode is in its own group
        time.sleep(2)
        net.restart(victim)
        os.kill(net.pids["anvil"], signal.SIGSTOP)
        time.sleep(30)
        os.kill(net.pids["anvil"], signal.SIGCONT)
        result = ln.follow(net, client, started.task_id, started.miners, args, started.t_start)
        check_outcome(ln, started, result, rounds=2)
        log = (Path(started.miners[1]["dir"]) / "daemon" / "state.json").read_text()
        assert '"status": "finished"' in log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(net.pids["anvil"], signal.SIGCONT)
        ln.down_network(net)
