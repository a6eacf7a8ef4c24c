"""scripts/bench_noniid.py: the non-IID accuracy study runs end to end on a small case."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_noniid", ROOT / "scripts" / "bench_noniid.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_noniid"] = module
    spec.loader.exec_module(module)
    return module


def test_quick_study_compares_the_secure_round_with_dense_fedavg(tmp_path: Path, capsys) -> None:
    bench = _bench()
    out = tmp_path / "noniid.json"
    assert bench.main(["--quick", "--data-root", str(tmp_path / "data"), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["mode"] for r in rows] == ["dense", "dgc0.05+masked"]  # the defaults: 5% of coordinates
    for row in rows:
        assert row["rounds"] == 3 and len(row["accuracy_per_round"]) == 3
        assert 0.2 < row["final_accuracy"] <= 1.0  # 10 classes: well above chance after 3 rounds
    assert rows[1]["knobs"] == bench.DEFAULT_KNOBS  # the secure row records the settings it ran with
    assert "gap to dense" in capsys.readouterr().out
