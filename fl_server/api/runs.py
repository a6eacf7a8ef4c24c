"""Start and stop simulated runs from the API: each run is a ``python -m fl_server <overrides>``
subprocess writing the shared run database, so a crashing run cannot take the API down.

Contract: at most one managed run at a time; the config is validated (:class:`RunRequest`) before any
process starts; the child never sees the API token; its console goes to ``<runs_dir>/<run_id>/console.log``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fl_server.data_prep import REPO_ROOT  # the checkout, also when running from a Flower App bundle copy
from fl_server.rundb import RunDB, new_run_id

CONF_DIR = REPO_ROOT / "conf"


def config_options(group: str) -> list[str]:
    """Names of the options of a Hydra config group (file stems under conf/<group>/)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


class RunConflict(RuntimeError):
    """A managed run is already active (or none is, for stop)."""


class RunRequest(BaseModel):
    """A simulated run the API may start (the fields of the settings form)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field("digits", description="conf/dataset option")
    model: str = Field("mlp", description="conf/model option")
    num_miners: int = Field(3, ge=2, le=32)
    rounds: int = Field(3, ge=1, le=200)
    per_round: int = Field(0, ge=0, le=32, description="miners selected per round (0 = all)")
    secagg: str = Field("none", description="conf/secagg option")
    dgc: bool = Field(False, description="Deep Gradient Compression on")
    chain: str = Field("none", description="conf/chain option")
    strategy: str = Field("fedavg", description="conf/strategy option")
    selection: str = Field("random", description="conf/selection option")
    partition: Literal["iid", "dirichlet"] = "iid"
    seed: int = Field(42, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _check(self) -> RunRequest:
        for group in ("dataset", "model", "secagg", "chain", "strategy", "selection"):
            options = config_options(group)
            value = getattr(self, group)
            if value not in options:
                raise ValueError(f"{group} '{value}' is not one of {options}")
        if self.per_round > self.num_miners:
            raise ValueError(f"per_round ({self.per_round}) exceeds num_miners ({self.num_miners})")
        if self.chain != "none" and self.secagg == "none" and not self.dgc:
            raise ValueError("a chain needs commitments: choose a secagg backend or enable dgc, or chain 'none'")
        if self.dataset == "fashion_mnist" and not Path("/usr/share/datasets/fashion-mnist").is_dir():
            raise ValueError("fashion_mnist is not installed here (apt-get install dataset-fashion-mnist)")
        return self

    def overrides(self) -> list[str]:
        return [
            f"dataset={self.dataset}", f"model={self.model}", f"num_miners={self.num_miners}",
            f"rounds={self.rounds}", f"secagg={self.secagg}", f"dgc.enabled={str(self.dgc).lower()}",
            f"chain={self.chain}", f"strategy={self.strategy}", f"selection={self.selection}",
            f"selection.per_round={self.per_round}", f"dataset.partition={self.partition}", f"seed={self.seed}",
        ]


class RunManager:
    """Owns the run subprocesses the API started."""

    def __init__(self, db: RunDB, runs_dir: Path, secret_env: tuple[str, ...] = ("MODELMINE_API_TOKEN",)) -> None:
        self.db = db
        self.runs_dir = Path(runs_dir)
        self.secret_env = secret_env
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._run_id: str | None = None
        self._stopping = False
        self._started_at = 0.0

    def active(self) -> dict[str, Any] | None:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                return None
            return {"run_id": self._run_id, "pid": self._proc.pid, "started_at": self._started_at}

    def command(self, request: RunRequest, run_id: str, run_dir: Path) -> list[str]:
        return [
            sys.executable, "-m", "fl_server", *request.overrides(),
            "dashboard.enabled=false", "dashboard.record=true", f"dashboard.db_url={self.db.url}",
            f"dashboard.run_id={run_id}", f"hydra.run.dir={run_dir}",
        ]

    def start(self, request: RunRequest) -> dict[str, Any]:
        """Spawn the run; raises :class:`RunConflict` while another managed run is active."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                raise RunConflict(f"run {self._run_id} is still active; stop it first (POST /api/runs/{self._run_id}/stop)")
            run_id = new_run_id()
            run_dir = self.runs_dir / run_id
            run_dir.mkdir(parents=True, exist_ok=True)
            env = {k: v for k, v in os.environ.items() if k not in self.secret_env}
            env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
            env["PYTHONUNBUFFERED"] = "1"
            self.db.start_run(run_id, config=request.model_dump(), out_dir=str(run_dir), rounds=request.rounds,
                              num_miners=request.num_miners, dataset=request.dataset, model=request.model)
            log_file = open(run_dir / "console.log", "wb")  # noqa: SIM115 - handed to the child, closed by the watcher
            self._proc = subprocess.Popen(
                self.command(request, run_id, run_dir), cwd=REPO_ROOT, env=env, stdout=log_file,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
            self._run_id, self._stopping, self._started_at = run_id, False, time.time()
            proc = self._proc
        threading.Thread(target=self._watch, args=(proc, run_id, log_file), daemon=True).start()
        return {"run_id": run_id, "pid": proc.pid, "status": "running", "out_dir": str(run_dir),
                "log": f"/api/runs/{run_id}/log"}

    def _watch(self, proc: subprocess.Popen[bytes], run_id: str, log_file: Any) -> None:
        rc = proc.wait()
        log_file.close()
        if self._stopping and self._run_id == run_id:
            self.db.finish_run(run_id, "stopped", "stopped from the API")
        elif rc == 0:
            self.db.finish_run(run_id, "finished")
        else:
            self.db.finish_run(run_id, "failed", f"exit code {rc}: {last_error_line(self.log_path(run_id))}")

    def stop(self, run_id: str | None = None, grace_s: float = 5.0) -> dict[str, Any]:
        """SIGTERM the run's process group, SIGKILL after ``grace_s``; raises RunConflict if not active."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                raise RunConflict("no managed run is active")
            if run_id is not None and run_id != self._run_id:
                raise RunConflict(f"run {run_id} is not the active managed run ({self._run_id})")
            self._stopping = True
            active = self._run_id
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        time.sleep(0.05)  # let the watcher record the status
        return {"run_id": active, "status": "stopped", "returncode": proc.returncode}

    def log_path(self, run_id: str) -> Path:
        return self.runs_dir / run_id / "console.log"

    def shutdown(self) -> None:
        if self.active() is not None:
            self.stop()


def last_error_line(path: Path, max_chars: int = 400) -> str:
    """The last line of a run's console that reads like an error (or its last non-empty line)."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no console log"
    for line in reversed(lines):
        if line.startswith("error:") or "Error" in line or "error" in line.split(":")[0].lower():
            return line[:max_chars]
    return (lines[-1] if lines else "no output")[:max_chars]
