"""Compile contracts/src/*.sol with solc-js (npm ``solc``) into contracts/build/<Contract>.json.

Usage: ``python scripts/compile_contracts.py [--check]``

Standard JSON input, evmVersion "cancun" (py-evm and anvil both run it), optimizer on, imports of
``@openzeppelin/...`` resolved from node_modules. Each artifact holds ``abi``, ``bytecode``,
``deployedBytecode``, ``sourceHash`` (see :func:`contracts.build_info.source_hash`), the compiler version
and settings. ``--check`` compiles nothing: it exits 1 when the committed artifacts were not built from
the current sources (the same check the test suite runs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contracts.build_info import (  # noqa: E402
    ARTIFACT_CONTRACTS,
    BUILD_DIR,
    SETTINGS,
    SRC_DIR,
    artifacts_drift,
    source_hash,
    sources,
)

_NODE_COMPILER = r"""
const fs = require('fs');
const path = require('path');
const solc = require(path.join(process.argv[1], 'node_modules', 'solc'));
const root = process.argv[1];
const input = fs.readFileSync(0, 'utf8');
function findImports(p) {
  const candidates = [path.join(root, 'node_modules', p), path.join(root, 'contracts', 'src', p)];
  for (const c of candidates) {
    if (fs.existsSync(c)) return { contents: fs.readFileSync(c, 'utf8') };
  }
  return { error: 'not found: ' + p };
}
const out = solc.compile(input, { import: findImports });
process.stdout.write(JSON.stringify({ version: solc.version(), output: JSON.parse(out) }));
"""


class CompileError(RuntimeError):
    """solc reported errors, or node/solc-js is missing."""


def compile_all() -> dict[str, dict]:
    """Compile every source and return {contract name: artifact}; raises CompileError."""
    srcs = sources()
    std_input = {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in srcs.items()},
        "settings": {
            **SETTINGS,
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
        },
    }
    try:
        proc = subprocess.run(
            ["node", "-e", _NODE_COMPILER, str(ROOT)],
            input=json.dumps(std_input),
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
    except FileNotFoundError as exc:
        raise CompileError("node is not installed (needed to run solc-js)") from exc
    if proc.returncode != 0:
        raise CompileError(f"solc-js failed: {proc.stderr.strip()[-2000:]}")
    result = json.loads(proc.stdout)
    output = result["output"]
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise CompileError("\n".join(e.get("formattedMessage", e.get("message", "")) for e in errors))
    digest = source_hash()
    artifacts: dict[str, dict] = {}
    for source_name, contracts in output["contracts"].items():
        for name, data in contracts.items():
            if name not in ARTIFACT_CONTRACTS:
                continue
            artifacts[name] = {
                "contractName": name,
                "sourceName": source_name,
                "abi": data["abi"],
                "bytecode": "0x" + data["evm"]["bytecode"]["object"],
                "deployedBytecode": "0x" + data["evm"]["deployedBytecode"]["object"],
                "sourceHash": digest,
                "compiler": {"solc": result["version"], "settings": SETTINGS},
            }
    missing = set(ARTIFACT_CONTRACTS) - set(artifacts)
    if missing:
        raise CompileError(f"contracts not found in output: {sorted(missing)}")
    return artifacts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify artifacts match the sources")
    args = parser.parse_args(argv)
    if args.check:
        drift = artifacts_drift()
        for line in drift:
            print(line)
        return 1 if drift else 0
    artifacts = compile_all()
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    for name, art in artifacts.items():
        path = BUILD_DIR / f"{name}.json"
        path.write_text(json.dumps(art, indent=1, sort_keys=True) + "\n")
        size = (len(art["deployedBytecode"]) - 2) // 2
        print(f"{name}: {size} bytes deployed -> {path.relative_to(ROOT)}")
        if size > 24576:
            print(f"warning: {name} exceeds the 24 KiB contract size limit", file=sys.stderr)
    print(f"sources: {len(sources())} files under {SRC_DIR.relative_to(ROOT)}, sourceHash {source_hash()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
