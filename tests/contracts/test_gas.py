"""Gas regression guard and the gas report's JSON shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from contracts.build_info import ROOT


def test_batched_gas_per_miner_regression(embedded_chain) -> None:  # noqa: ANN001
    sys.path.insert(0, str(ROOT / "scripts"))
    import gas_report

    row = gas_report.batched_row(embedded_chain, 10, rounds=3)
    assert row["function"] == "per_miner_per_round" and row["miners"] == 10
    # openRound + commitBatch + propose + voteRevealBatch at 10 miners; measured ~71.7k (docs/contracts.md)
    assert row["gas"] <= 75_000, row
    assert row["separate_batches_gas"] < 80_000, row


def test_gas_report_json(tmp_path: Path) -> None:
    out = tmp_path / "gas.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gas_report.py"), "--json", str(out), "--miners", "3",
                           "--finalize-voters", "4"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    names = {r["function"] for r in rows}
    for fn in ("publishTask", "register", "registerFor", "openRound", "commitBatch", "propose", "voteRevealBatch",
               "finalize", "revealBatch", "settle", "expire", "revealTarget", "cancelTask", "claim", "withdrawStake",
               "releaseTasks"):
        assert fn in names
    batched = [r for r in rows if r["function"] == "per_miner_per_round"]
    assert batched and batched[0]["miners"] == 3 and all(isinstance(r["gas"], int) for r in rows)
    assert "per_miner_per_round" in proc.stdout
