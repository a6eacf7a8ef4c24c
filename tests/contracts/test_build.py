"""Artifacts are built from the current sources; the contract fits the size limit; EIP-712 matches."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aggregator import eip712
from contracts.build_info import ARTIFACT_CONTRACTS, ROOT, artifacts_drift, load_artifact, source_hash


def test_artifacts_match_sources() -> None:
    assert artifacts_drift() == [], "run: python scripts/compile_contracts.py"


def test_artifacts_have_abi_bytecode_and_hash() -> None:
    for name in ARTIFACT_CONTRACTS:
        art = load_artifact(name)
        assert art["abi"] and art["bytecode"].startswith("0x") and len(art["bytecode"]) > 100
        assert art["sourceHash"] == source_hash()
        assert art["compiler"]["settings"]["evmVersion"] in ("cancun", "prague")
        assert art["compiler"]["settings"]["optimizer"]["enabled"] is True


def test_contract_size_under_eip170_limit() -> None:
    art = load_artifact("ModelMine")
    assert (len(art["deployedBytecode"]) - 2) // 2 <= 24576


def test_check_flag_of_compile_script() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "compile_contracts.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(not (ROOT / "node_modules" / "solc").exists(), reason="solc-js not installed")
def test_recompile_gives_committed_bytecode() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import compile_contracts

    fresh = compile_contracts.compile_all()
    for name in ARTIFACT_CONTRACTS:
        assert fresh[name]["bytecode"] == load_artifact(name)["bytecode"], f"{name} drifted from its sources"


def test_domain_separator_matches_python(client) -> None:  # noqa: ANN001
    from eth_abi import encode
    from eth_utils import keccak

    d = client.domain.as_dict()
    expected = keccak(encode(
        ["bytes32", "bytes32", "bytes32", "uint256", "address"],
        [keccak(text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
         keccak(text=eip712.DOMAIN_NAME), keccak(text=eip712.DOMAIN_VERSION), d["chainId"], d["verifyingContract"]],
    ))
    assert client.chain.call(client.contract.functions.domainSeparator()) == expected


def test_typehashes_in_source_match_python_types() -> None:
    """The type strings hashed in ModelMine.sol are exactly aggregator/eip712.py's (signatures made by
    the Python side are also verified on chain by every round test)."""
    from contracts.build_info import SRC_DIR

    src = (SRC_DIR / "ModelMine.sol").read_text() + (SRC_DIR / "MinerRegistry.sol").read_text()
    for name in ("Submission", "Vote", "Reveal", "Registration"):
        fields = ",".join(f"{f['type']} {f['name']}" for f in eip712.MESSAGE_TYPES[name])
        assert f'"{name}({fields})"' in src
