"""``python -m fl_server [hydra overrides]``: run a ModelMine experiment (the demo by default).

Settings are validated first: a bad one prints ``error: <what and how to fix>`` and exits with status 2
before anything runs. The run itself goes through ``flwr run`` (fl_server.experiment).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def run(cfg: DictConfig) -> float:
    from fl_server.config_check import ConfigError, check_config
    from fl_server.experiment import RunFailed, run_experiment

    try:
        check_config(cfg)
        summary = run_experiment(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except RunFailed as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    return float(summary["final_accuracy"])


def main() -> None:
    run()


if __name__ == "__main__":
    main()
