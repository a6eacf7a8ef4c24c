"""Run slither on contracts/src offline, with solc-js (npm ``solc``) instead of a native solc.

Usage: ``python contracts/analysis/run_slither.py [--slither PATH] [--out PATH]``

slither-analyzer is not a project dependency (it pins its own web3/eth libraries): install it in a
separate virtual environment, e.g. ``python -m venv /tmp/slither && /tmp/slither/bin/pip install
slither-analyzer==0.11.6``, and pass ``--slither /tmp/slither/bin/slither``. The script writes the
solc standard-JSON input of the current sources (same settings as the artifacts) and lets
crytic-compile call ``contracts/analysis/solc-js-cli.js`` as its ``solc``. Exit status is slither's
(255 when it reports findings; docs/contracts.md explains each one).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from contracts.build_info import SETTINGS, sources  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slither", default=shutil.which("slither") or "slither", help="slither executable")
    parser.add_argument("--out", default="", help="also write the report here")
    args = parser.parse_args(argv)
    std_input = {
        "language": "Solidity",
        "sources": {f"contracts/src/{name}": {"content": text} for name, text in sources().items()},
        "settings": {
            **SETTINGS,
            "remappings": ["@openzeppelin/=node_modules/@openzeppelin/"],
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode", "evm.deployedBytecode"], "": ["ast"]}},
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "input.json"
        target.write_text(json.dumps(std_input))
        cmd = [args.slither, str(target), "--compile-force-framework", "solc-json",
               "--solc", str(ROOT / "contracts" / "analysis" / "solc-js-cli.js"), "--filter-paths", "node_modules"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    report = proc.stdout + proc.stderr
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
