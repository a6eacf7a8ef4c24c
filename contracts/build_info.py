"""Where the Solidity sources and compiled artifacts live, and how drift between them is detected.

``source_hash()`` is sha256 over the compiler settings, the pinned solc and OpenZeppelin versions and
every ``contracts/src/**/*.sol`` file (path and bytes, sorted). Artifacts store it; when it differs
from the current sources the artifacts are stale (``artifacts_drift`` lists why).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

PKG_DIR = Path(__file__).resolve().parent
ROOT = PKG_DIR.parent
SRC_DIR = PKG_DIR / "src"
BUILD_DIR = PKG_DIR / "build"

#: Contracts that get an artifact in contracts/build/.
ARTIFACT_CONTRACTS = ("ModelMine", "ReentrantClaimer")

#: solc standard-JSON settings (outputSelection is added by the compile script).
SETTINGS: dict = {
    "evmVersion": "cancun",
    "optimizer": {"enabled": True, "runs": 1},
    "viaIR": True,
}

#: Versions pinned in package.json; part of the hash so a dependency bump forces a rebuild.
SOLC_VERSION = "0.8.37"
OPENZEPPELIN_VERSION = "5.6.1"


def sources() -> dict[str, str]:
    """{source unit name: text} for every .sol file under contracts/src (names relative to it)."""
    return {p.relative_to(SRC_DIR).as_posix(): p.read_text() for p in sorted(SRC_DIR.rglob("*.sol"))}


def source_hash() -> str:
    """sha256 (hex) identifying the sources + settings an artifact must have been built from."""
    h = hashlib.sha256()
    h.update(json.dumps(SETTINGS, sort_keys=True).encode())
    h.update(f"solc={SOLC_VERSION};oz={OPENZEPPELIN_VERSION}".encode())
    for name, text in sources().items():
        h.update(name.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()


def artifact_path(name: str) -> Path:
    """contracts/build/<name>.json"""
    return BUILD_DIR / f"{name}.json"


def load_artifact(name: str) -> dict:
    """The compiled artifact ``name`` (abi, bytecode, sourceHash...); FileNotFoundError if not built."""
    return json.loads(artifact_path(name).read_text())


def artifacts_drift() -> list[str]:
    """Human-readable reasons why the committed artifacts do not match the sources (empty: in sync)."""
    expected = source_hash()
    problems = []
    for name in ARTIFACT_CONTRACTS:
        path = artifact_path(name)
        if not path.exists():
            problems.append(f"{path}: missing (run python scripts/compile_contracts.py)")
            continue
        got = json.loads(path.read_text()).get("sourceHash")
        if got != expected:
            problems.append(f"{path}: built from sourceHash {got}, sources are {expected}")
    return problems
