"""The daemon's state file, process supervision, app allow-list and config checks."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fl_client.__main__ import run_daemon
from fl_client.app_guard import make_guarded_plugin
from fl_client.state import DaemonState, StateCorrupt, StateStore, TaskRecord
from fl_client.supervisor import ManagedProcess, SuperNodeSettings, TaskProcesses, child_env, is_ours


def test_state_round_trip_and_atomic_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    state = DaemonState(last_block=7, registered=True)
    state.tasks[3] = TaskRecord(task_id=3, status="running", reveals_sent=[1], rewards_claimed_wei=5)
    store.save(state)
    again = store.load()
    assert again.last_block == 7 and again.tasks[3].reveals_sent == [1] and again.tasks[3].rewards_claimed_wei == 5
    assert [p.name for p in (tmp_path / "daemon").iterdir()] == ["state.json"]  # no temporary left behind


def test_corrupt_state_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "daemon").mkdir()
    (tmp_path / "daemon" / "state.json").write_text("{half")
    with pytest.raises(StateCorrupt):
        StateStore(tmp_path).load()
    assert (tmp_path / "daemon" / "state.json.corrupt").exists()
    assert StateStore(tmp_path).load().last_block == -1


def test_crashed_child_is_restarted_with_growing_backoff(tmp_path: Path) -> None:
    child = ManagedProcess("crasher", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "c.log",
                           initial_backoff_s=0.05, max_backoff_s=0.2, stable_s=60)
    child.start()
    delays = []
    deadline = time.monotonic() + 10
    while child.restarts < 3 and time.monotonic() < deadline:
        before = child._backoff
        child.poll()
        if child._backoff != before:
            delays.append(child._backoff)
        time.sleep(0.01)
    child.stop()
    assert child.restarts >= 3
    assert delays[:3] == [0.05, 0.1, 0.2]


def test_stop_terminates_the_child(tmp_path: Path) -> None:
    child = ManagedProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log")
    child.start()
    proc = child.proc
    child.stop()
    assert proc is not None and proc.poll() is not None
    child.poll()
    assert not child.running()  # a stopped child is not restarted


def test_child_env_has_venv_first_and_no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELMINE_ETH_KEY", "ab" * 32)
    env = child_env()
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert "MODELMINE_ETH_KEY" not in env and env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"


def test_supernode_needs_an_allow_list(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="allowed"):
        TaskProcesses(1, SuperNodeSettings("127.0.0.1:9092", 9094, insecure=True), {}, [], tmp_path)


def test_guard_refuses_a_foreign_app() -> None:
    from flwr.supercore.superexec.executor import LaunchResult, LaunchResultStatus

    launched = []

    class Executor:
        def launch(self, spec: object) -> LaunchResult:
            launched.append(spec)
            return LaunchResult.accepted()

    plugin = make_guarded_plugin(frozenset({"aa" * 32}))(
        runtime_api_address="127.0.0.1:1", insecure=True, root_certificates_path=None, executor=Executor())
    foreign = SimpleNamespace(task_id=1, run_id=5, fab_hash="bb" * 32, type=plugin_task_type())
    assert plugin.launch_task("token", foreign).status == LaunchResultStatus.FAILED
    assert launched == []
    ours = SimpleNamespace(task_id=2, run_id=5, fab_hash="aa" * 32, type=plugin_task_type())
    assert plugin.launch_task("token", ours).status == LaunchResultStatus.ACCEPTED
    assert len(launched) == 1


def plugin_task_type() -> str:
    from flwr.supercore.constant import TaskType

    return TaskType.CLIENT_APP.value


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["chain.rpc_url=http://x:1", "chain.contract_address=0x1", "store.url=http://s"], "miner.dir is required"),
        (["miner.dir=/nonexistent", "chain.rpc_url=http://x:1", "chain.contract_address=0x1", "store.url=http://s"],
         "is not a folder"),
    ],
)
def test_bad_config_is_one_line_error(override: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_daemon(override) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_bad_contract_address_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "eth.key").write_text("00")
    (tmp_path / "manifest.json").write_text("{}")
    args = [f"miner.dir={tmp_path}", "chain.rpc_url=http://127.0.0.1:1", "chain.contract_address=0x1234",
            "store.url=http://127.0.0.1:2", "supernode.insecure=true"]
    assert run_daemon(args) == 2
    assert "chain.contract_address" in capsys.readouterr().err


def test_restarted_daemon_adopts_a_live_supernode_and_replaces_a_dead_one(tmp_path: Path) -> None:
    import subprocess

    left_behind = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "flower-supernode"])
    for _ in range(100):  # /proc/<pid>/cmdline shows the new argv only once the child has exec'd
        if is_ours(left_behind.pid):
            break
        time.sleep(0.05)
    try:
        child = ManagedProcess("supernode", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "n.log",
                               initial_backoff_s=0.01)
        assert child.adopt(left_behind.pid) and child.running() and child.pid == left_behind.pid
        left_behind.kill()
        left_behind.wait()
        assert not child.running()
        child.poll()  # notices the adopted child is gone
        child.poll()  # and starts one of its own
        assert child.proc is not None and child.running() and child.pid != left_behind.pid
        child.stop()
        assert not child.running()
        stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        assert not child.adopt(stranger.pid)  # a PID that is not a SuperNode/app guard is never adopted
        stranger.kill()
        stranger.wait()
    finally:
        if left_behind.poll() is None:
            left_behind.kill()


def test_daemon_reveals_itself_when_the_server_does_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reveal phase, this miner committed, nobody relayed its reveal within the grace period: the
    daemon sends its stored opening itself, once."""
    from aggregator.commitments import Opening
    from fl_client.daemon import MinerDaemon, Running
    from fl_client.secure_update import MinerState

    calls: list[tuple[int, int, int, bytes]] = []

    class Client:
        def round_state(self, task_id: int) -> dict:
            return {"phase": 3, "round": 2}

        def miner_round(self, task_id: int, miner: str) -> dict:
            return {"flags": 1}  # committed, not revealed

        def reveal(self, account: object, task_id: int, round_: int, score: int, nonce: bytes) -> None:
            calls.append((task_id, round_, score, nonce))

    MinerState(tmp_path, "abcd1234").save_opening(2, Opening(77, b"\x05" * 32))
    daemon = object.__new__(MinerDaemon)
    daemon.client = Client()
    daemon.account = SimpleNamespace(address="0x" + "11" * 20)
    daemon.cfg = SimpleNamespace(reveal_grace_s=0.0, data_dir=tmp_path)
    daemon.store = StateStore(tmp_path)
    daemon.state = DaemonState()
    record = TaskRecord(task_id=9, status="running")
    daemon.state.tasks[9] = record
    run = Running(record, processes=None, chain_task=None, key="abcd1234")  # type: ignore[arg-type]
    daemon._reveal_if_needed(run)
    daemon._reveal_if_needed(run)  # not twice
    assert calls == [(9, 2, 77, b"\x05" * 32)]
    assert StateStore(tmp_path).load().tasks[9].reveals_sent == [2]
