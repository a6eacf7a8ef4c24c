"""The Hydra front door's launcher: one ModelMine run on Flower's simulation runtime through ``flwr run``.

``run_experiment(cfg, out_dir)`` starts a private SuperLink in simulation mode (the same command
``flwr run`` uses for a ``:local:`` connection, on free loopback ports, stopped by PID afterwards),
submits the Flower App of this project (components ``fl_server.app:app`` and ``fl_client.app:app``
from pyproject.toml) with ``flwr run <app> <connection> --stream``, and passes the Hydra overrides and
the output folder in the run config. The ServerApp composes the same ``conf/`` with the same
overrides, so both front doors run identical settings. The ServerApp writes rounds.csv/json,
summary.json and plots into ``out_dir`` (the run folder), where this launcher reads the summary back.

Why this path: ``flwr.simulation.run_simulation`` is deprecated in Flower 1.41 ("use `flwr run`");
``flwr run`` with a simulation SuperLink is the supported runtime, and it loads the apps by their
component strings exactly as on the deployment engine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import tomli_w
from omegaconf import DictConfig, ListConfig, OmegaConf

from fl_server.config_check import check_config
from fl_server.data_prep import REPO_ROOT

VENV_BIN = Path(sys.executable).parent
log = logging.getLogger("modelmine.launcher")
CONNECTION = "modelmine-simulation"


class RunFailed(RuntimeError):
    """The Flower run ended without a summary (the ServerApp's error is in the streamed log)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_render(v)}" for k, v in value.items()) + "}"
    text = str(value)
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def config_overrides(cfg: DictConfig) -> list[str]:
    """Hydra overrides that reproduce ``cfg`` from the defaults: every leaf that differs, as ``++key=value``."""
    from fl_server.app import compose_config

    base = OmegaConf.to_container(compose_config([]), resolve=True)
    want = OmegaConf.to_container(cfg, resolve=True)
    out: list[str] = []

    def walk(prefix: str, value: Any, default: Any) -> None:
        if isinstance(value, dict) and value and isinstance(default, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub, default.get(key, _MISSING))
        elif value != default:
            out.append(f"++{prefix}={_render(value)}")

    walk("", {k: v for k, v in want.items() if k != "hydra"}, base)  # type: ignore[union-attr]
    return out


_MISSING = object()
_REEXPORTED = (
    "build_secure_round", "compose_config", "data_root", "dgc_config", "ensure_partitions", "layer_sizes",
    "model_spec", "partition_config", "secure_mode", "table_line", "train_config",
)


def __getattr__(name: str) -> Any:
    """Older callers import the config helpers from here; they live in fl_server.app (imported lazily:
    the launcher itself needs neither torch nor Flower's server side)."""
    if name in _REEXPORTED:
        import fl_server.app

        return getattr(fl_server.app, name)
    raise AttributeError(name)


def run_overrides(cfg: DictConfig, overrides: Sequence[str] | None) -> list[str]:
    """The overrides of this run: given, else Hydra's task overrides, else derived from ``cfg``."""
    if overrides is not None:
        return list(overrides)
    try:
        from hydra.core.hydra_config import HydraConfig

        task = HydraConfig.get().overrides.task
        return [str(o) for o in (task if isinstance(task, ListConfig | list) else [])]
    except ValueError:  # not inside a Hydra app: a composed config
        return config_overrides(cfg)


class SimulationSuperLink:
    """``flower-superlink --simulation`` on free loopback ports, owned (and stopped) by this process."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.port = _free_port()
        self.control_port = _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> SimulationSuperLink:
        exe = shutil.which("flower-superlink", path=str(VENV_BIN)) or "flower-superlink"
        cmd = [
            exe, "--insecure", "--simulation", "--isolation", "subprocess",
            "--control-api-address", f"127.0.0.1:{self.control_port}", "--host", "127.0.0.1", "--port", str(self.port),
            "--log-file", str(self.home / "superlink.log"),
        ]
        log_file = open(self.home / "superlink.out", "wb")  # noqa: SIM115 - closed in stop()
        # its own process group: stop() ends the SuperLink and everything it started (SuperExec, the
        # simulation runtime, Ray) by this group's id, and nothing else
        self.process = subprocess.Popen(cmd, env=self.env, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                        start_new_session=True)
        self._log = log_file
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RunFailed(f"flower-superlink exited with {self.process.returncode}; see {self.home}/superlink.out")
            try:
                if httpx.get(f"http://{self.address}/health", timeout=1.0).is_success:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RunFailed(f"flower-superlink did not answer on {self.address} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None:
            group = self.process.pid  # start_new_session: the group id is the SuperLink's pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            time.sleep(1.0)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)  # stragglers of the group (a Ray worker, a SuperExec)
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def __enter__(self) -> SimulationSuperLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def flower_env(home: Path) -> dict[str, str]:
    """Environment of every Flower process of a run: the venv on PATH (flower-superexec), a private
    FLWR_HOME, no run-time dependency installation, and the project root for the extracted app."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_HOME"] = str(home)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["MODELMINE_ROOT"] = str(REPO_ROOT)
    env.setdefault("RAY_DEDUP_LOGS", "0")
    env.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    env["PYTHONWARNINGS"] = "ignore::FutureWarning,ignore::ResourceWarning"
    return env


def run_experiment(
    cfg: DictConfig, out_dir: Path, overrides: Sequence[str] | None = None, app_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the configured experiment through ``flwr run`` on a private simulation SuperLink and return
    the summary the ServerApp wrote to ``out_dir/summary.json``.

    ``overrides``: the Hydra overrides of ``cfg`` (default: Hydra's, or derived from ``cfg``).
    ``app_dir``: the Flower App to run (default: this project; tests pass an app whose ClientApp misbehaves).
    """
    check_config(cfg)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").unlink(missing_ok=True)
    (out_dir / "error.txt").unlink(missing_ok=True)
    home = out_dir / ".flwr"
    home.mkdir(exist_ok=True)
    env = flower_env(home)
    run_config = {"overrides": " ".join(_quote(o) for o in run_overrides(cfg, overrides)), "run-dir": str(out_dir)}
    (home / "run_config.toml").write_text(tomli_w.dumps(run_config))
    sim = cfg.simulation
    total_cpus = int(sim.total_cpus) or os.cpu_count() or 1
    federation = [
        f"num-supernodes={int(cfg.num_miners)}",
        f"client-resources-num-cpus={max(1, round(float(sim.cpus_per_miner)))}",
        f"client-resources-num-gpus={float(sim.gpus_per_miner)}",
        f"init-args-num-cpus={total_cpus}",
        'init-args-logging-level="ERROR"',
    ]
    with SimulationSuperLink(home, env) as link:
        (home / "config.toml").write_text(
            tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: {"address": link.address, "insecure": True}}})
        )
        log.info("simulation SuperLink on %s (pid %d); flwr run %s with %d virtual SuperNodes",
                 link.address, link.process.pid if link.process else -1, app_dir or REPO_ROOT, int(cfg.num_miners))
        cmd = [
            str(VENV_BIN / "flwr"), "run", str(app_dir or REPO_ROOT), CONNECTION, "--stream",
            "--run-config", str(home / "run_config.toml"),
            "--federation-config", " ".join(federation),
        ]
        done = subprocess.run(cmd, env=env, cwd=REPO_ROOT, check=False)
    summary_path = out_dir / "summary.json"
    error = out_dir / "error.txt"
    if not summary_path.exists() and error.exists():
        raise RunFailed(error.read_text().strip().splitlines()[0])
    if not summary_path.exists():
        raise RunFailed(
            f"the Flower run ended without a summary (flwr exit {done.returncode}); see the log above and "
            f"{home}/superlink.log"
        )
    log.info("run finished: outputs in %s", out_dir)
    return json.loads(summary_path.read_text())


def _quote(override: str) -> str:
    """One override as a shell word (the ServerApp splits the string with shlex)."""
    import shlex

    return shlex.quote(override)
