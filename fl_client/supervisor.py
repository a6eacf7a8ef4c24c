"""Start, watch and stop the miner's Flower processes for one task, restarting them with backoff.

For each joined task the daemon runs two children:

1. ``flower-supernode --isolation process``: connects to the task's SuperLink and queues the
   messages for this node. With ``process`` isolation it launches no app by itself.
2. ``python -m fl_client.app_guard``: ModelMine's SuperExec. It takes the queued tasks from the
   SuperNode and launches ``flwr-clientapp`` only for an allow-listed app (FAB sha256); any other
   app is refused and never runs on this machine.

A child that exits is restarted after a delay that doubles up to ``max_backoff_s`` (reset after
it stayed up for ``stable_s``). ``stop`` sends SIGTERM, then SIGKILL after ``grace_s``. Every
child gets PATH with the venv's ``bin`` first (flower-supernode needs ``flower-superexec`` and
``flwr-clientapp`` on PATH) and its output goes to a log file in the miner's folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("modelmine.miner.supervisor")

VENV_BIN = Path(sys.executable).parent


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every Flower child: venv first on PATH, no runtime dependency install,
    and no miner secret (keys are never passed through the environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMINE_") or not k.endswith("_KEY")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


@dataclass
class ManagedProcess:
    """One supervised child process."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=child_env)
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    stable_s: float = 120.0
    grace_s: float = 10.0
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _backoff: float = 0.0
    _next_start: float = 0.0
    _started_at: float = 0.0
    _stopped: bool = False
    adopted_pid: int | None = None  # a child left running by a previous daemon, watched by PID

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else self.adopted_pid

    def running(self) -> bool:
        if self.adopted_pid is not None:
            return is_ours(self.adopted_pid)
        return self.proc is not None and self.proc.poll() is None

    def adopt(self, pid: int) -> bool:
        """Watch ``pid`` (started by a previous daemon) instead of starting a new child; False if it
        is not one of ours any more."""
        if not is_ours(pid):
            return False
        self.adopted_pid, self._started_at, self._stopped = pid, time.monotonic(), False
        log.info("%s: adopted pid %d left running by the previous daemon", self.name, pid)
        return True

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        finally:
            out.close()
        self._started_at = time.monotonic()
        self._stopped = False
        log.info("%s started (pid %d), log %s", self.name, self.proc.pid, self.log_path)

    def poll(self) -> None:
        """Restart the child if it exited, after the current backoff delay."""
        if self._stopped or self.running():
            return
        now = time.monotonic()
        if self.adopted_pid is not None:  # the adopted child died: restart a child of our own
            log.warning("%s (adopted pid %d) is gone; restarting it", self.name, self.adopted_pid)
            self.adopted_pid = None
            self._next_start = now
            return
        if self.proc is not None:  # it exited: schedule a restart
            code = self.proc.returncode
            up = now - self._started_at
            self._backoff = self.initial_backoff_s if up >= self.stable_s or not self._backoff else min(
                self._backoff * 2, self.max_backoff_s)
            self._next_start = now + self._backoff
            log.warning("%s exited with code %s after %.0f s; restart in %.0f s", self.name, code, up, self._backoff)
            self.proc = None
            return
        if now >= self._next_start:
            self.restarts += 1
            self.start()

    def stop(self) -> None:
        """SIGTERM the child's process group, SIGKILL after the grace period."""
        self._stopped = True
        if self.adopted_pid is not None:
            if is_ours(self.adopted_pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.adopted_pid, signal.SIGTERM)
                deadline = time.monotonic() + self.grace_s
                while is_ours(self.adopted_pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if is_ours(self.adopted_pid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(self.adopted_pid, signal.SIGKILL)
            self.adopted_pid = None
            log.info("%s stopped", self.name)
            return
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM; killing it", self.name)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        log.info("%s stopped", self.name)
        self.proc = None


def is_ours(pid: int) -> bool:
    """True while ``pid`` is alive and is a SuperNode or an app guard (a reused PID is not ours)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat_line.rsplit(")", 1)[-1].split()[0] == "Z":  # a zombie is dead
        return False
    return b"flower-supernode" in cmdline or b"fl_client.app_guard" in cmdline


@dataclass(frozen=True)
class SuperNodeSettings:
    """How this miner reaches the federation (conf/miner.yaml ``supernode``)."""

    superlink: str
    runtime_port: int
    insecure: bool = False
    root_certificates: str = ""
    auth_private_key: str = ""
    max_retries: int = 0  # 0: retry forever


def supernode_argv(settings: SuperNodeSettings, node_config: dict[str, str | int]) -> list[str]:
    """``flower-supernode`` for this miner. ``node_config`` values are what the ClientApp may read:
    the data folder and the key folder (read only by the allow-listed ModelMine ClientApp)."""
    exe = str(VENV_BIN / "flower-supernode")
    pairs = " ".join(f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}" for k, v in node_config.items())
    argv = [exe, "--superlink", settings.superlink, "--isolation", "process",
            "--host", "127.0.0.1", "--port", str(settings.runtime_port), "--node-config", pairs]
    if settings.insecure:
        argv.append("--insecure")
    elif settings.root_certificates:
        argv += ["--root-certificates", settings.root_certificates]
    if settings.auth_private_key:
        argv += ["--auth-supernode-private-key", settings.auth_private_key]
    if settings.max_retries:
        argv += ["--max-retries", str(settings.max_retries)]
    return argv


def guard_argv(runtime_port: int, allowed_fab_hashes: list[str]) -> list[str]:
    """ModelMine's SuperExec (fl_client.app_guard) for the SuperNode's runtime API on ``runtime_port``."""
    argv = [sys.executable, "-m", "fl_client.app_guard", "--runtime-api-address", f"127.0.0.1:{runtime_port}"]
    for digest in allowed_fab_hashes:
        argv += ["--allow", digest]
    return argv


class TaskProcesses:
    """The SuperNode and the app guard of one task, supervised together."""

    def __init__(self, task_id: int, settings: SuperNodeSettings, node_config: dict[str, str | int],
                 allowed_fab_hashes: list[str], log_dir: Path, backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0, flwr_home: Path | None = None) -> None:
        if not allowed_fab_hashes:
            raise ValueError("no allowed ClientApp (FAB) hash: refusing to run a SuperNode that would run any app")
        self.task_id = task_id
        env = child_env({"FLWR_HOME": str(flwr_home)} if flwr_home is not None else None)
        self.children = [
            ManagedProcess(f"task {task_id} supernode", supernode_argv(settings, node_config),
                           log_dir / f"supernode-task{task_id}.log", env=env, initial_backoff_s=backoff_s,
                           max_backoff_s=max_backoff_s),
            ManagedProcess(f"task {task_id} app guard", guard_argv(settings.runtime_port, allowed_fab_hashes),
                           log_dir / f"app-guard-task{task_id}.log", env=env, initial_backoff_s=backoff_s,
                           max_backoff_s=max_backoff_s),
        ]

    def start(self) -> None:
        for child in self.children:
            child.start()

    def adopt_or_start(self, pids: list[int]) -> None:
        """After a daemon restart: keep the SuperNode and app guard the previous daemon left running
        (same node id, the task goes on undisturbed); start whatever is missing."""
        if len(pids) == len(self.children) and all(is_ours(p) for p in pids):
            for child, pid in zip(self.children, pids, strict=True):
                child.adopt(pid)
            return
        for pid in pids:  # a partial set: stop the leftovers and start afresh
            if is_ours(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGTERM)
        self.start()

    def poll(self) -> None:
        for child in self.children:
            child.poll()

    @property
    def restarts(self) -> int:
        return sum(c.restarts for c in self.children)

    def pids(self) -> list[int]:
        return [p for c in self.children if (p := c.pid) is not None]

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
