"""Write ModelMine's Flower connections into ``$FLWR_HOME/config.toml`` (Flower >= 1.26 reads them there).

    export FLWR_HOME=$PWD/.flwr PATH=$PWD/.venv/bin:$PATH FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
    .venv/bin/python scripts/flwr_config.py                # local-simulation (3 virtual SuperNodes) + local-deployment
    flwr run . local-simulation --stream

Connections written (existing other connections in the file are kept):

- ``local-simulation``: ``address = ":local:"``: ``flwr run`` starts a local SuperLink in simulation mode
  (127.0.0.1:39091, detached; it keeps running after the run) with ``--supernodes`` virtual SuperNodes;
- ``local-deployment``: a SuperLink you started (``flower-superlink --insecure``; its HTTP API listens on
  ``--deployment-address``, default 127.0.0.1:8000) with SuperNodes (``python -m fl_client``) attached.

``FLWR_HOME`` defaults to ``~/.flwr``; set it per checkout (as above) or per test so nothing touches ``~/.flwr``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import tomli
import tomli_w


def flwr_home() -> Path:
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")


def connections(supernodes: int, cpus_per_miner: int, deployment_address: str) -> dict[str, dict]:
    return {
        "local-simulation": {
            "address": ":local:",
            "options": {"num-supernodes": supernodes, "backend": {"client-resources": {"num-cpus": cpus_per_miner}}},
        },
        "local-deployment": {"address": deployment_address, "insecure": True},
    }


def write(home: Path, supernodes: int = 3, cpus_per_miner: int = 1, deployment_address: str = "127.0.0.1:8000",
          default: str = "local-simulation") -> Path:
    """Merge the two connections into ``home/config.toml``; returns its path."""
    path = home / "config.toml"
    home.mkdir(parents=True, exist_ok=True)
    data = tomli.loads(path.read_text()) if path.exists() else {}
    superlink = data.setdefault("superlink", {})
    superlink.update(connections(supernodes, cpus_per_miner, deployment_address))
    superlink["default"] = default
    path.write_text(tomli_w.dumps(data))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=None, help="Flower home (default: $FLWR_HOME, else ~/.flwr)")
    parser.add_argument("--supernodes", type=int, default=3, help="virtual SuperNodes of local-simulation (= num_miners)")
    parser.add_argument("--cpus-per-miner", type=int, default=1, help="Ray CPUs per virtual SuperNode")
    parser.add_argument("--deployment-address", default="127.0.0.1:8000", help="SuperLink HTTP API of local-deployment")
    args = parser.parse_args(argv)
    if args.supernodes < 1:
        print("error: --supernodes must be at least 1", file=sys.stderr)
        return 2
    path = write(Path(args.home) if args.home else flwr_home(), args.supernodes, args.cpus_per_miner, args.deployment_address)
    print(f"wrote local-simulation ({args.supernodes} SuperNodes) and local-deployment ({args.deployment_address}) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
