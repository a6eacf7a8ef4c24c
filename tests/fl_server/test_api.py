"""REST API: every endpoint, its bad input, auth, run control through real subprocesses, and the SSE stream."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fl_server.api.app import create_app, load_publisher_profile
from fl_server.api.runs import RunRequest
from fl_server.rundb import RunDB
from tests.fl_server.test_rundb import ADDR_A, ADDR_B, feed

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOCAL = ("127.0.0.1", 50000)


@pytest.fixture
def db(tmp_path: Path) -> RunDB:
    db = RunDB.open(tmp_path / "run.db")
    feed(db)
    return db


def client_for(db: RunDB, tmp_path: Path, token: str | None = TOKEN, peer: tuple[str, int] = LOCAL,
               publisher: Path | None = None) -> TestClient:
    app = create_app(db, token=token, runs_dir=tmp_path / "runs", publisher_script=publisher or tmp_path / "none.py")
    return TestClient(app, client=peer)


@pytest.fixture
def client(db: RunDB, tmp_path: Path) -> TestClient:
    return client_for(db, tmp_path)


def error_of(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and isinstance(body["error"], str) and body["error"]
    return body["error"]


# -- reads ------------------------------------------------------------------------------------------
def test_health_and_status(client: TestClient) -> None:
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/api/health").json()["writes_enabled"] is True
    status = client.get("/api/status").json()
    assert status["run"]["id"] == "r1" and status["finished_rounds"] == 1 and status["accuracy"] == 0.9
    assert status["nodes"]["total"] == 2 and status["nodes"]["online"] == 1 and status["task"]["task_id"] == 7
    assert "no run 'nope'" in error_of(client.get("/api/status?run_id=nope"), 404)
    assert client.get("/api/status").headers["server-timing"].startswith("app;dur=")


def test_status_of_an_empty_database(tmp_path: Path) -> None:
    client = client_for(RunDB.open(tmp_path / "empty.db"), tmp_path)
    assert client.get("/api/status").json()["run"] is None
    assert client.get("/api/nodes").json() == [] and client.get("/api/rounds").json() == []
    assert client.get("/api/blocks").json() == [] and client.get("/api/blockchain/contributions").json() == []
    assert "no runs recorded" in error_of(client.get("/api/nodes/11"), 404)


def test_runs_rounds_metrics(client: TestClient) -> None:
    assert [r["id"] for r in client.get("/api/runs").json()] == ["r1"]
    assert client.get("/api/runs/r1").json()["config"] == {"rounds": 2}
    assert "no run 'zz'" in error_of(client.get("/api/runs/zz"), 404)
    assert client.get("/api/runs/r1/rounds").json()[0]["accuracy"] == 0.9
    assert client.get("/api/rounds").json()[0]["round"] == 1
    acc = client.get("/api/runs/r1/metrics?name=accuracy").json()
    assert acc == [{"round": 1, "name": "accuracy", "value": 0.9}]
    assert len(client.get("/api/metrics").json()) > 3
    tm = client.get("/api/training/metrics").json()
    assert tm["round"] == [1] and tm["accuracy"] == [0.9] and tm["loss"] == [0.3]
    assert "no run" in error_of(client.get("/api/runs/zz/rounds"), 404)
    error_of(client.get("/api/runs?limit=0"), 422)


def test_nodes_and_selections(client: TestClient) -> None:
    nodes = client.get("/api/nodes").json()
    assert {n["node_id"] for n in nodes} == {"11", "22"}
    node = client.get("/api/nodes/11").json()
    assert node["selection_history"][0]["selected"] is True and node["submissions"][0]["bytes"] == 1000
    assert "no node '99'" in error_of(client.get("/api/nodes/99"), 404)
    assert len(client.get("/api/selections").json()) == 2


@pytest.mark.parametrize("table,count", [("blocks", 1), ("votes", 2), ("reveals", 1), ("rewards", 2), ("stakes", 1),
                                         ("transactions", 1), ("submissions", 2)])
def test_chain_tables(client: TestClient, table: str, count: int) -> None:
    assert len(client.get(f"/api/{table}").json()) == count
    assert len(client.get(f"/api/{table}?all_runs=true").json()) == count
    assert client.get(f"/api/{table}?run_id=r1&task_id=999").json() == ([] if table in
                                                                        ("blocks", "votes", "reveals", "rewards") else
                                                                        client.get(f"/api/{table}").json())
    error_of(client.get(f"/api/{table}?task_id=abc"), 422)


def test_rewards_balances_claims_contributions(client: TestClient) -> None:
    [a] = client.get(f"/api/balances?address={ADDR_A}").json()
    assert a["claimable_wei"] == str(15 * 10**17)
    assert client.get(f"/api/blockchain/rewards/{ADDR_A}").json()["earned_wei"] == str(2 * 10**18)
    assert "no rewards" in error_of(client.get("/api/blockchain/rewards/0xdead"), 404)
    assert len(client.get("/api/claims").json()) == 1
    contributions = {c["miner"]: c for c in client.get("/api/blockchain/contributions").json()}
    assert contributions[ADDR_A]["submissions"] == 1 and contributions[ADDR_A]["earned_wei"] == str(2 * 10**18)
    assert ADDR_B not in contributions  # its only submission was rejected


def test_claim_is_refused_honestly(client: TestClient) -> None:
    error_of(client.post(f"/api/blockchain/claim/{ADDR_A}"), 401)
    body = client.post(f"/api/blockchain/claim/{ADDR_A}", headers=AUTH)
    assert "miner's own key" in error_of(body, 501) and body.json()["claimable_wei"] == str(15 * 10**17)


def test_miners(client: TestClient) -> None:
    assert {m["address"] for m in client.get("/api/miners").json()} == {ADDR_A, ADDR_B}
    view = client.get(f"/api/miners/{ADDR_A}").json()
    assert view["tasks_joined"][0]["task_id"] == 7 and view["stake_wei"] == str(10**16) and view["pending_reveals"] == []
    assert "no recorded" in error_of(client.get("/api/miners/0x00"), 404)


# -- tasks ------------------------------------------------------------------------------------------
def task_body(**over: Any) -> dict[str, Any]:
    return {"dataset": "digits", "model": "mlp", "rounds": 3, "reward_eth": 2.5} | over


def test_tasks_list_filter_sort_and_timeline(client: TestClient) -> None:
    client.post("/api/tasks", json=task_body(reward_eth=100.0), headers=AUTH)
    tasks = client.get("/api/tasks?sort=reward&order=desc").json()
    assert [t["source"] for t in tasks] == ["request", "chain"]
    assert [t["source"] for t in client.get("/api/tasks?sort=reward&order=asc").json()] == ["chain", "request"]
    assert [t["status"] for t in client.get("/api/tasks?status=completed").json()] == []
    assert len(client.get("/api/tasks?status=published").json()) == 1
    assert "invalid request" in error_of(client.get("/api/tasks?sort=price"), 422)
    chain_task = next(t for t in tasks if t["source"] == "chain")
    timeline = client.get(f"/api/tasks/{chain_task['id']}").json()["timeline"]
    assert timeline[0]["kind"] == "task_published" and any(e["kind"] == "block_finalized" for e in timeline)
    assert "no task 999" in error_of(client.get("/api/tasks/999"), 404)
    error_of(client.get("/api/tasks/abc"), 422)


def test_publish_task_without_publisher_records_and_answers_501(client: TestClient) -> None:
    response = client.post("/api/tasks", json=task_body(), headers=AUTH)
    assert "not published" in error_of(response, 501)
    row = client.get(f"/api/tasks/{response.json()['task']}").json()
    assert row["status"] == "unpublished" and row["reward_pool_wei"] == str(25 * 10**17)
    assert row["timeline"][0]["kind"] == "task_requested"


@pytest.mark.parametrize("body,fragment", [
    (task_body(rounds=0), "rounds"), (task_body(reward_eth=-1), "reward_eth"),
    (task_body(dataset="cifar"), "dataset 'cifar'"), (task_body(model="resnet"), "model 'resnet'"),
    (task_body(extra=1), "extra"), ({"rounds": 2}, "dataset"),
])
def test_publish_task_bad_input(client: TestClient, body: dict[str, Any], fragment: str) -> None:
    assert fragment in error_of(client.post("/api/tasks", json=body, headers=AUTH), 422)
    assert all(t["source"] == "chain" for t in client.get("/api/tasks").json())  # nothing recorded


PUBLISHER = """
import json, sys
args = sys.argv[1:]
flag = lambda name: args[args.index(name) + 1]
assert args[0] == "publish" and flag("--contract") == "0xC0" and flag("--publisher-key-file").endswith("eth.key")
if flag("--dataset") == "mnist":
    print("error: chain is down", file=sys.stderr)
    sys.exit(2)
json.dump({"task_id": 9, "model_hash": "0x77", "reward_wei": flag("--reward-wei")}, open(flag("--json"), "w"))
"""


def profile(tmp_path: Path) -> dict[str, str]:
    key = tmp_path / "eth.key"
    key.write_text("00" * 32)
    return {"rpc_url": "http://127.0.0.1:1", "contract": "0xC0", "store_url": "http://127.0.0.1:2",
            "aggregator": "0xA0", "aggregator_secagg_public": "02" + "11" * 32,
            "publisher_secagg_public": "03" + "22" * 32, "publisher_key_file": str(key)}


def test_publish_task_with_the_publisher_script(db: RunDB, tmp_path: Path) -> None:
    script = tmp_path / "publish_task.py"
    script.write_text(PUBLISHER)
    client = client_for(db, tmp_path, publisher=script)
    assert "no publisher profile" in error_of(client.post("/api/tasks", json=task_body(), headers=AUTH), 501)
    app = create_app(db, token=TOKEN, runs_dir=tmp_path / "runs", publisher_script=script,
                     publisher_profile=profile(tmp_path))
    client = TestClient(app, client=LOCAL)
    response = client.post("/api/tasks", json=task_body(), headers=AUTH)
    assert response.status_code == 202, response.text
    assert response.json()["task_id"] == 9
    row = client.get(f"/api/tasks/{response.json()['task']}").json()
    assert (row["status"], row["task_id"], row["contract"]) == ("published", 9, "0xC0")
    assert row["details"]["published"]["reward_wei"] == str(25 * 10**17)
    assert "chain is down" in error_of(client.post("/api/tasks", json=task_body(dataset="mnist"), headers=AUTH), 502)
    statuses = sorted(t["status"] for t in client.get("/api/tasks").json() if t["source"] == "request")
    assert statuses == ["failed", "published", "unpublished"]


def test_publisher_profile_validation(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile(tmp_path)))
    assert load_publisher_profile(path)["contract"] == "0xC0"
    path.write_text(json.dumps({**profile(tmp_path), "contract": ""}))
    with pytest.raises(ValueError, match="lacks contract"):
        load_publisher_profile(path)
    path.write_text(json.dumps({**profile(tmp_path), "publisher_key_file": str(tmp_path / "nope")}))
    with pytest.raises(ValueError, match="does not exist"):
        load_publisher_profile(path)
    path.write_text("[1]")
    with pytest.raises(ValueError, match="JSON object"):
        load_publisher_profile(path)


# -- auth -------------------------------------------------------------------------------------------
def test_writes_need_the_token(client: TestClient, db: RunDB, tmp_path: Path) -> None:
    for path in ("/api/runs", "/api/training/start", "/api/training/stop", "/api/runs/r1/stop", "/api/tasks"):
        error_of(client.post(path, json={}), 401)
        assert "invalid API token" in error_of(client.post(path, json={}, headers={"Authorization": "Bearer nope"}), 401)
        assert "invalid API token" in error_of(client.post(path, json={}, headers={"Authorization": TOKEN}), 401)
    no_token = client_for(db, tmp_path, token=None)
    assert "no API token configured" in error_of(no_token.post("/api/tasks", json=task_body(), headers=AUTH), 403)


def test_reads_are_open_on_loopback_only(db: RunDB, tmp_path: Path) -> None:
    remote = client_for(db, tmp_path, peer=("10.1.2.3", 40000))
    assert "loopback only" in error_of(remote.get("/api/status"), 401)
    assert remote.get("/api/status", headers=AUTH).status_code == 200
    assert remote.get("/health").status_code == 200  # liveness for load balancers


def test_unknown_endpoint_and_docs(client: TestClient) -> None:
    assert "no such endpoint" in error_of(client.get("/api/nothing"), 404)
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/status", "/api/training/start", "/api/training/stop", "/api/training/metrics", "/api/nodes",
                 "/api/blockchain/contributions", "/api/blockchain/rewards/{address}",
                 "/api/blockchain/claim/{address}", "/health", "/api/stream"):
        assert path in paths
    assert "<canvas" not in client.get("/").text and "app.js" in client.get("/").text
    assert "EventSource" in client.get("/static/app.js").text
    assert client.get("/static/missing.js").status_code == 404


# -- run control (real subprocesses) ---------------------------------------------------------------
def test_run_request_validation(client: TestClient) -> None:
    cases = [({"num_miners": 3, "per_round": 5}, "per_round (5) exceeds"), ({"dataset": "cifar"}, "dataset 'cifar'"),
             ({"chain": "embedded", "secagg": "none", "dgc": False}, "a chain needs commitments"),
             ({"rounds": 0}, "rounds"), ({"num_miners": "many"}, "num_miners"), ({"bogus": 1}, "bogus")]
    for body, fragment in cases:
        assert fragment in error_of(client.post("/api/runs", json=body, headers=AUTH), 422)
    assert client.get("/api/status").json()["managed_run"] is None
    overrides = RunRequest(dataset="digits", per_round=2, dgc=True).overrides()
    assert "dgc.enabled=true" in overrides and "selection.per_round=2" in overrides


def wait_status(client: TestClient, run_id: str, want: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/api/runs/{run_id}").json()
        if run["status"] == want:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} never became {want}: {run}")


def test_start_conflict_stop(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = client.app.state.manager  # type: ignore[attr-defined]
    monkeypatch.setenv("MODELMINE_API_TOKEN", TOKEN)
    monkeypatch.setattr(manager, "command", lambda *a: [sys.executable, "-c", "import time; time.sleep(60)"])
    started = client.post("/api/training/start", json={"rounds": 1}, headers=AUTH)
    assert started.status_code == 202
    run_id = started.json()["run_id"]
    assert client.get("/api/status").json()["managed_run"]["run_id"] == run_id
    assert "still active" in error_of(client.post("/api/runs", json={}, headers=AUTH), 409)
    assert "not the active" in error_of(client.post("/api/runs/r1/stop", headers=AUTH), 409)
    assert client.post(f"/api/runs/{run_id}/stop", headers=AUTH).json()["status"] == "stopped"
    assert wait_status(client, run_id, "stopped")["error"] == "stopped from the API"
    assert "no managed run" in error_of(client.post("/api/training/stop", headers=AUTH), 409)


def test_a_crashing_run_is_marked_failed_and_never_sees_the_token(client: TestClient,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    manager = client.app.state.manager  # type: ignore[attr-defined]
    monkeypatch.setenv("MODELMINE_API_TOKEN", TOKEN)
    leak = "import os, sys; print('error: token leaked' if 'MODELMINE_API_TOKEN' in os.environ else 'error: boom'); sys.exit(3)"
    monkeypatch.setattr(manager, "command", lambda *a: [sys.executable, "-c", leak])
    run_id = client.post("/api/runs", json={}, headers=AUTH).json()["run_id"]
    run = wait_status(client, run_id, "failed")
    assert run["error"] == "exit code 3: error: boom"
    assert "error: boom" in client.get(f"/api/runs/{run_id}/log").text
    assert "no console log" in error_of(client.get("/api/runs/r1/log"), 404)
    assert client.get("/health").json()["status"] == "ok"  # the API lives on


# -- events and the live stream --------------------------------------------------------------------
def test_events_page_and_stream_resume(client: TestClient, db: RunDB) -> None:
    events = client.get("/api/events?after=0&limit=5").json()
    assert len(events) == 5 and events[0]["kind"] == "run_started"
    error_of(client.get("/api/events?after=-1"), 422)
    text = client.get("/api/stream?after=0&limit_s=0.2").text
    assert text.startswith("retry: 2000") and text.count("\ndata: ") == db.last_event_id()
    resumed = client.get("/api/stream?limit_s=0.2", headers={"Last-Event-ID": str(db.last_event_id() - 2)}).text
    ids = [int(line[4:]) for line in resumed.splitlines() if line.startswith("id: ")]
    assert ids == [db.last_event_id() - 1, db.last_event_id()]
    assert client.get("/api/stream?limit_s=0.2").text.count("data: ") == 0  # default: from now on
    assert "Last-Event-ID" in error_of(client.get("/api/stream", headers={"Last-Event-ID": "x1"}), 400)
