"""``python -m fl_server [hydra overrides]``: run a ModelMine experiment (the demo by default)."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def run(cfg: DictConfig) -> float:
    from fl_server.experiment import run_experiment

    summary = run_experiment(cfg, Path(HydraConfig.get().runtime.output_dir))
    return float(summary["final_accuracy"])


def main() -> None:
    run()


if __name__ == "__main__":
    main()
