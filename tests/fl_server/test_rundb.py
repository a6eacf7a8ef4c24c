"""Run database: events land in the typed tables; the bus never lets a broken sink break a round."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fl_server.api import DashboardConfigError, DashboardSettings, attach_dashboard, load_token
from fl_server.events import Event, EventBus, default_bus, jsonable
from fl_server.rundb import RunDB

ADDR_A = "0x" + "a1" * 20
ADDR_B = "0x" + "b2" * 20


def feed(db: RunDB, run_id: str = "r1") -> None:
    """A two-miner chain round: everything the strategy and chain emit."""
    bus = EventBus()
    db.attach(bus, run_id)
    bus.emit("run_started", run_id=run_id, config={"rounds": 2}, rounds=2, num_miners=2, dataset="digits", model="mlp")
    bus.emit("task_published", task_id=7, contract="0xC0", rounds=2, dataset="digits", reward_pool_wei=3 * 10**18,
             model_hash=b"\x01" * 32)
    bus.emit("stake", address=ADDR_A, amount_wei=10**16, action="staked")
    bus.emit("round_started", round=1, available=[11, 22])
    bus.emit("node_joined", node_id=11, round=1)
    bus.emit("node_joined", node_id=22, round=1)
    bus.emit("selection", round=1, policy="random", available=[11, 22], selected=[11, 22], scores={"11": 0.5})
    bus.emit("submission", round=1, node_id=11, address=ADDR_A, accepted=True, bytes=1000, train_seconds=0.5)
    bus.emit("submission", round=1, node_id=22, address=ADDR_B, accepted=False, reason="bad signature " * 200, bytes=40)
    bus.emit("candidate_block", round=1, task_id=7, task_round=1, model_hash="0xabc", participants=[ADDR_A], gas=100)
    bus.emit("vote", round=1, task_id=7, task_round=1, address=ADDR_A, accept=True, accuracy_bps=9100)
    bus.emit("vote", round=1, task_id=7, task_round=1, address=ADDR_B, accept=True, accuracy_bps=9000)
    bus.emit("reveal", round=1, task_id=7, task_round=1, address=ADDR_A, ok=True)
    bus.emit("block_finalized", round=1, task_id=7, task_round=1, model_hash="0xabc", accepts=2, votes=2, gas=900)
    bus.emit("reward", task_id=7, round=1, address=ADDR_A, amount_wei=2 * 10**18, kind="earned")
    bus.emit("reward", task_id=7, round=None, address=ADDR_A, amount_wei=5 * 10**17, kind="claimed")
    bus.emit("transaction", round=1, function="propose", gas=100, status="ok")
    bus.emit("round_finished", round=1, record={"round": 1, "accuracy": 0.9, "loss": 0.3, "round_seconds": 1.5,
                                                 "upload_bytes_per_miner": 1000.0, "selected": 2, "received": 1,
                                                 "train_loss": float("nan")})
    bus.emit("node_dropped", node_id=22, round=2)
    bus.emit("run_finished", status="finished", final_accuracy=0.9)


@pytest.fixture
def db(tmp_path: Path) -> RunDB:
    return RunDB.open(tmp_path / "run.db")


def test_events_fill_the_typed_tables(db: RunDB) -> None:
    feed(db)
    run = db.get_run("r1")
    assert run is not None and run["status"] == "finished" and run["final_accuracy"] == 0.9
    [r1] = db.list_rounds("r1")
    assert (r1["status"], r1["accuracy"], r1["received"], r1["train_loss"]) == ("finished", 0.9, 1, None)
    assert {m["name"] for m in db.list_metrics("r1")} >= {"accuracy", "loss", "round_seconds"}
    nodes = {n["node_id"]: n for n in db.list_nodes("r1")}
    assert nodes["11"]["accepted"] == 1 and nodes["11"]["bytes_total"] == 1000 and nodes["11"]["reliability"] == 1.0
    assert nodes["22"]["status"] == "dropped" and nodes["22"]["rejected"] == 1 and nodes["22"]["reliability"] == 0.0
    assert nodes["11"]["address"] == ADDR_A and nodes["11"]["latency_s"] == 0.5
    [block] = db.list_table("blocks", "r1")
    assert (block["status"], block["accepts"], block["gas"]) == ("finalized", 2, 900)
    assert len(db.list_table("votes", "r1")) == 2 and len(db.list_table("reveals", "r1")) == 1
    [task] = db.list_tasks()
    assert (task["task_id"], task["reward_pool_wei"], task["model_hash"]) == (7, str(3 * 10**18), "0x" + "01" * 32)


def test_rejection_reasons_are_truncated_and_no_update_is_stored(db: RunDB) -> None:
    feed(db)
    rejected = [s for s in db.list_table("submissions", "r1") if not s["accepted"]]
    assert len(rejected) == 1 and len(rejected[0]["reason"]) == 1000
    assert "weights" not in {c for c in db.columns("submissions")}  # sizes and verdicts only


def test_balances_and_miner_view(db: RunDB) -> None:
    feed(db)
    [a] = db.balances(ADDR_A)
    assert a["earned_wei"] == str(2 * 10**18) and a["claimed_wei"] == str(5 * 10**17)
    assert a["claimable_wei"] == str(15 * 10**17) and a["stake_wei"] == str(10**16)
    view = db.miner_view(ADDR_B.upper().replace("0X", "0x"))
    assert view is not None and view["accepted"] == 0 and view["submissions"] == 1
    assert [v["round"] for v in view["pending_reveals"]] == [1]  # voted, never revealed
    assert db.miner_view("0x" + "99" * 20) is None


def test_events_resume_by_id_and_timeline(db: RunDB) -> None:
    feed(db)
    everything = db.events_after(0)
    assert [e["id"] for e in everything] == sorted(e["id"] for e in everything)
    later = db.events_after(everything[4]["id"])
    assert later[0]["id"] == everything[5]["id"] and len(later) == len(everything) - 5
    [task] = db.list_tasks()
    kinds = [e["kind"] for e in db.task_timeline(task)]
    assert kinds[0] == "task_published" and "block_finalized" in kinds and "reward" in kinds


def test_two_runs_in_one_database_stay_apart(db: RunDB) -> None:
    feed(db, "r1")
    feed(db, "r2")
    assert {r["id"] for r in db.list_runs()} == {"r1", "r2"}
    assert len(db.list_nodes("r1")) == 2 and len(db.list_rounds("r2")) == 1


def test_finish_run_only_closes_a_running_run(db: RunDB) -> None:
    feed(db)
    db.finish_run("r1", "failed", "crash")
    assert db.get_run("r1")["status"] == "finished"  # type: ignore[index]
    db.start_run("r3", rounds=1)
    db.finish_run("r3", "failed", "exit code 1")
    assert db.get_run("r3")["error"] == "exit code 1"  # type: ignore[index]


def test_bus_survives_a_broken_subscriber_and_encodes_payloads() -> None:
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe(lambda ev: 1 / 0)
    unsubscribe = bus.subscribe(seen.append)
    bus.emit("vote", accept=True, model_hash=b"\xff", acc=float("nan"), ids={3, 1})
    assert seen[0].payload["model_hash"] == "0xff" and seen[0].payload["acc"] is None
    unsubscribe()
    assert bus.emit("vote") is not None and len(seen) == 1
    assert jsonable({"x": (1, math.inf)}) == {"x": [1, None]}
    assert EventBus().emit("vote") is None  # nobody listens: nothing built


def test_attach_dashboard_records_without_serving(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"rounds": 2, "num_miners": 2, "dataset": {"name": "digits"}, "model": {"name": "mlp"},
                            "dashboard": {"enabled": False, "record": True, "run_id": "t1"}})
    handle = attach_dashboard(cfg, tmp_path)
    try:
        assert handle is not None and handle.server is None
        default_bus.emit("round_finished", round=1, record={"round": 1, "accuracy": 0.5})
        assert handle.db.get_run("t1")["dataset"] == "digits"  # type: ignore[index]
        assert handle.db.list_rounds("t1")[0]["accuracy"] == 0.5
        handle.close()
        assert handle.db.get_run("t1")["status"] == "failed"  # type: ignore[index]  # never finished
    finally:
        default_bus._subscribers.clear()


def test_bad_dashboard_settings_fail_before_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DashboardConfigError, match="unknown setting dashboard.prot"):
        DashboardSettings.from_config({"prot": 1})
    with pytest.raises(DashboardConfigError, match="not a TCP port"):
        DashboardSettings.from_config({"port": 70000})
    assert DashboardSettings.from_config(True).enabled
    monkeypatch.setenv("MM_TEST_TOKEN", "short")
    with pytest.raises(DashboardConfigError, match="at least 16"):
        load_token(DashboardSettings(token_env="MM_TEST_TOKEN"))
    monkeypatch.delenv("MM_TEST_TOKEN")
    with pytest.raises(DashboardConfigError, match="does not exist"):
        load_token(DashboardSettings(token_env="MM_TEST_TOKEN", token_file=str(tmp_path / "missing")))
    (tmp_path / "tok").write_text("t" * 20 + "\n")
    assert load_token(DashboardSettings(token_env="MM_TEST_TOKEN", token_file=str(tmp_path / "tok"))) == "t" * 20


def test_status_cache_sees_writes_of_other_processes(tmp_path: Path) -> None:
    reader, writer = RunDB.open(tmp_path / "run.db"), RunDB.open(tmp_path / "run.db")  # two connections, like two processes
    assert reader.status()["run"] is None
    writer.start_run("w1", rounds=3)
    writer.record("w1", Event("round_finished", {"round": 1, "record": {"accuracy": 0.4}}))
    first = reader.status()
    assert first["run"]["id"] == "w1" and first["finished_rounds"] == 1 and first["accuracy"] == 0.4
    writer.record("w1", Event("round_finished", {"round": 2, "record": {"accuracy": 0.6}}))
    assert reader.status()["accuracy"] == 0.6
    writer.finish_run("w1", "failed", "killed")  # no bus event, but stored as one for other processes
    assert reader.status()["run"]["status"] == "failed"
    assert reader.events_after(0, kinds=["run_finished"])[-1]["payload"]["error"] == "killed"


def test_strategy_helpers_describe_a_chain_round(tmp_path: Path) -> None:
    """announce_* read what the strategy hands them (unit test: the chain and votes are stand-ins)."""
    from types import SimpleNamespace as NS

    from fl_server.events import announce_chain_round, announce_finish, announce_round

    pending = {ADDR_A: 0}
    chain = NS(task_id=5, client=NS(pending_rewards=lambda task, addr: pending[addr]))
    vote = NS(address=ADDR_A, vote=NS(accept=True, accuracyBps=8000), reveal=object())
    db = RunDB.open(tmp_path / "run.db")
    unsubscribe = db.attach(default_bus, "c1")
    try:
        known = announce_round(NS(get_node_ids=lambda: [1, 2]), 1, set())
        assert announce_round(NS(get_node_ids=lambda: [2]), 2, known) == {2}
        for server_round, paid in ((1, 3 * 10**17), (2, 5 * 10**17)):
            pending[ADDR_A] = paid
            outcome = NS(status="finalized", accepts=1, votes=1, gas_used=1000, miners_paid_wei=paid)
            announce_chain_round(chain, server_round, server_round, b"\x0a" * 32, [ADDR_A], [vote], outcome, 400)
        announce_finish(chain, [NS(accuracy=0.7)])
    finally:
        unsubscribe()
    assert [n["status"] for n in db.list_nodes("c1")] == ["dropped", "online"]
    assert [r["amount_wei"] for r in db.list_table("rewards", "c1")] == [str(3 * 10**17), str(2 * 10**17)]
    assert [b["status"] for b in db.list_table("blocks", "c1")] == ["finalized", "finalized"]
    assert db.list_table("blocks", "c1")[0]["model_hash"] == "0x" + "0a" * 32
    assert [t["gas"] for t in db.list_table("transactions", "c1")] == [400, 600, 400, 600]
    assert len(db.list_table("reveals", "c1")) == 2 and db.get_run("c1") is None  # no run_started: no run row
