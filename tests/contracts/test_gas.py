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
    # target: <= 60k per miner per round at 10 miners (propose + voteRevealBatch); measured ~59.8k
    assert row["gas"] <= 60_000, row
    # the two-transaction path (voteBatch then revealBatch) stays close
    assert row["separate_batches_gas"] < 66_000, row


def test_gas_report_json(tmp_path: Path) -> None:
    out = tmp_path / "gas.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gas_report.py"), "--json", str(out), "--miners", "3"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    names = {r["function"] for r in rows}
    for fn in ("publishTask", "register", "commit", "commitBatch", "propose", "vote", "voteBatch", "finalize",
               "reveal", "revealBatch", "settle", "revealTarget", "cancelTask", "claim", "withdrawStake"):
        assert fn in names
    batched = [r for r in rows if r["function"] == "per_miner_per_round"]
    assert batched and batched[0]["miners"] == 3 and all(isinstance(r["gas"], int) for r in rows)
    assert "per_miner_per_round" in proc.stdout
