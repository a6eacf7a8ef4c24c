"""The Flower App: its declaration in pyproject.toml, one source of settings for `flwr run` and the Hydra
front door, and the connections file written for Flower 1.41 (FLWR_HOME, never ~/.flwr)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from omegaconf import OmegaConf

from fl_server.app import compose_config, overrides_from_run_config
from fl_server.experiment import config_overrides, flower_env

REPO = Path(__file__).resolve().parents[2]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_pyproject_declares_the_flower_app_with_module_level_apps():
    app = _pyproject()["tool"]["flwr"]["app"]
    assert app["publisher"] and app["components"] == {"serverapp": "fl_server.app:app", "clientapp": "fl_client.app:app"}
    assert {"overrides", "run-dir"} <= set(app["config"])
    assert "federations" not in _pyproject()["tool"]["flwr"]  # flwr run would rewrite pyproject to migrate them
    for ref, kind in ((app["components"]["serverapp"], ServerApp), (app["components"]["clientapp"], ClientApp)):
        module, attr = ref.split(":")
        assert isinstance(getattr(importlib.import_module(module), attr), kind)


def test_run_config_overrides_compose_the_same_config_as_the_front_door():
    overrides = ["dataset=digits", "model=mlp", "num_miners=3", "rounds=2", "secagg=none", "chain=none"]
    from_run_config = compose_config(overrides_from_run_config({"overrides": " ".join(overrides), "run-dir": ""}))
    assert OmegaConf.to_container(from_run_config) == OmegaConf.to_container(compose_config(overrides))
    assert from_run_config.dataset.name == "digits" and from_run_config.rounds == 2


def test_quoted_overrides_and_deployment_keys_reach_the_config():
    cfg = compose_config(overrides_from_run_config({
        "overrides": "dataset=digits 'data_root=/tmp/with space'", "chain-rpc-url": "http://127.0.0.1:8545",
        "task-id": "7", "model-store-url": "",
    }))
    assert cfg.data_root == "/tmp/with space"
    assert cfg.deployment.chain_rpc_url == "http://127.0.0.1:8545" and str(cfg.deployment.task_id) == "7"
    assert cfg.deployment.model_store_url == ""


def test_a_composed_config_is_reproduced_from_its_derived_overrides():
    cfg = compose_config(["dataset=digits", "model=mlp", "strategy.server_lr=0.5", "dgc.density=0.1", "seed=3"])
    again = compose_config(config_overrides(cfg))
    assert OmegaConf.to_container(again, resolve=True) == OmegaConf.to_container(cfg, resolve=True)


def test_flower_processes_get_a_private_home_and_the_venv(tmp_path):
    env = flower_env(tmp_path)
    assert env["FLWR_HOME"] == str(tmp_path) and env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_flwr_config_script_writes_both_connections_and_keeps_others(tmp_path):
    (tmp_path / "config.toml").write_text('[superlink.mine]\naddress = "10.0.0.1:9093"\n')
    cmd = [sys.executable, "scripts/flwr_config.py", "--home", str(tmp_path), "--supernodes", "4",
           "--deployment-address", "127.0.0.1:18000"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    links = tomllib.loads((tmp_path / "config.toml").read_text())["superlink"]
    assert links["mine"]["address"] == "10.0.0.1:9093"
    assert links["local-simulation"]["address"] == ":local:" and links["local-simulation"]["options"]["num-supernodes"] == 4
    assert links["local-deployment"] == {"address": "127.0.0.1:18000", "insecure": True}
    assert links["default"] == "local-simulation"


@pytest.mark.slow
def test_the_app_bundle_builds_small_with_code_and_config(tmp_path):
    env = flower_env(tmp_path / "home")
    done = subprocess.run([str(Path(sys.executable).parent / "flwr"), "build", "--app", str(REPO)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (fab,) = tmp_path.glob("*.fab")
    import zipfile

    names = zipfile.ZipFile(fab).namelist()
    assert "fl_server/app.py" in names and "fl_client/app.py" in names and "conf/config.yaml" in names
    assert not any(n.startswith(("tests/", "node_modules/", "local_data/", ".venv/")) for n in names)
    assert fab.stat().st_size < 5 * 1024 * 1024
