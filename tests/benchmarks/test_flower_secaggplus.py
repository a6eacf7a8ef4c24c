"""Flower's SecAgg+ baseline end to end, and the bench_secagg helpers (real simulation, tiny data)."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
from hydra import compose, initialize_config_dir

from benchmarks.flower_secaggplus import run_secaggplus, secaggplus_shares
from fl_server.__main__ import CONF_DIR

REPO = Path(__file__).resolve().parents[2]
BENCH_KEYS = ("mode", "rounds", "round_s", "upload_bytes_per_miner", "aggregate_s", "final_accuracy", "peak_rss_mb")


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_secagg", REPO / "scripts" / "bench_secagg.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny(root: Path, rounds: int) -> list[str]:
    return ["dataset=digits", "model=mlp", "num_miners=3", f"rounds={rounds}", f"data_root={root}"]


def test_share_settings_are_valid_for_small_and_large_federations() -> None:
    assert secaggplus_shares(2) == (2, 2)
    assert secaggplus_shares(3) == (3, 2)
    assert secaggplus_shares(10) == (5, 3)


def test_bench_modes_name_flower_baseline_and_ours_apart() -> None:
    bench = _bench()
    assert bench.MODES["flower-secaggplus"][0] == "flower-secaggplus" and "secaggplus" not in bench.MODES
    assert "secagg=secaggplus" in bench.MODES["dgc+secaggplus"][1]


@pytest.mark.slow
def test_protocol_sweep_is_exact_for_every_backend_with_dropouts() -> None:
    """The in-process rows (used for the 50-miner table): every mode recovers the survivors' sum."""
    bench = _bench()
    rows = bench.protocol_rows(miners=(6,), dropouts=(0.0, 0.34), d=3_000, density=0.05)
    assert len(rows) == 2 * len(bench.PROTOCOL_MODES)
    for row in rows:
        assert row["status"] == "ok" and row["exact"] is True, row
        assert row["survivors"] == (6 if row["dropout"] == 0 else 4)
    by = {(r["mode"], r["dropout"]): r for r in rows}
    sap, flower = by[("dgc+secaggplus", 0.34)], by[("flower-secaggplus", 0.34)]
    assert sap["payload_bytes_per_miner"] == by[("dgc+masked", 0.34)]["payload_bytes_per_miner"]  # same wire format
    assert flower["payload_bytes_per_miner"] > 8 * 3_000 > 10 * sap["payload_bytes_per_miner"]  # dense int64


def test_a_mode_whose_overrides_do_not_compose_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _bench()
    monkeypatch.setitem(bench.MODES, "bogus", ("ours", ("no_such_group=x",)))
    row = bench.run_mode("bogus", _tiny(tmp_path, 1), [], tmp_path / "out")
    assert row["mode"] == "bogus" and row["status"].startswith("skipped: ")
    assert all(key in row for key in BENCH_KEYS)


@pytest.mark.slow
def test_secaggplus_baseline_trains_and_measures(tmp_path: Path) -> None:
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="config", overrides=_tiny(tmp_path / "data", 2))
    out = tmp_path / "run"
    summary = run_secaggplus(cfg, out)
    assert summary["rounds"] == 2
    assert summary["final_accuracy"] > summary["initial_accuracy"] + 0.2
    with open(out / "rounds.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [1, 2]
    for row in rows:
        assert int(row["received"]) == 3
        assert float(row["round_seconds"]) > 0 and float(row["aggregate_seconds"]) > 0
        # dense masked vector: one 8-byte integer per parameter (55,210 for mlp on digits), plus protocol
        masked = float(row["masked_vector_bytes_per_miner"])
        assert masked >= 8 * summary["parameters"]
        assert float(row["upload_bytes_per_miner"]) > masked
    saved = json.loads((out / "summary.json").read_text())
    for key in ("final_accuracy", "rounds", "wall_seconds", "mean_round_seconds", "peak_rss_mb"):
        assert key in saved
    assert json.loads((out / "rounds.json").read_text())[0]["accuracy"] == pytest.approx(float(rows[0]["accuracy"]))


@pytest.mark.slow
def test_bench_rows_have_the_required_keys(tmp_path: Path) -> None:
    bench = _bench()
    rows = bench.run_bench(["dense", "flower-secaggplus"], _tiny(tmp_path / "data", 1), [], tmp_path / "out")
    assert [r["mode"] for r in rows] == ["dense", "flower-secaggplus"]
    for row in rows:
        assert row["status"] == "ok", row
        assert all(row[key] is not None for key in BENCH_KEYS)
        assert row["rounds"] == 1 and 0 < row["final_accuracy"] <= 1
    dense, secaggplus = rows
    assert secaggplus["upload_bytes_per_miner"] > dense["upload_bytes_per_miner"]  # dense 8-byte masks + protocol
    bench.write_csv(rows, tmp_path / "bench.csv")
    with open(tmp_path / "bench.csv") as fh:
        assert [r["mode"] for r in csv.DictReader(fh)] == ["dense", "flower-secaggplus"]
