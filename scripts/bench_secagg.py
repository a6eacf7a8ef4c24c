"""Secure-aggregation modes side by side on the same model, data and miners (DESIGN.md sections 8, 9).

Every mode is one full federated run on Flower's simulation engine with the same Hydra config (model,
data set, partitions, miners, rounds, local training); only the mode's overrides (table ``MODES``
below) differ. Our modes run ``fl_server.experiment.run_experiment``; ``secaggplus`` runs Flower's own
SecAgg+ (``fl_server.baseline_secaggplus.run_secaggplus``). A mode whose overrides do not compose
(e.g. the ``secagg``/``dgc`` config groups are not in conf/ yet) gives a ``skipped: <reason>`` row;
a run that raises gives a ``failed: <reason>`` row; the others go on.

Columns (one row per mode):
  mode                    the mode's name (table MODES)
  rounds                  federated rounds completed
  round_s                 median over rounds of the round's wall time (send, local training,
                          replies, aggregation; server-side test-set evaluation excluded)
  upload_bytes_per_miner  mean over rounds of the bytes one miner sends the server per round
                          (ours: the reply's array payload; secaggplus: every reply of the 4 SecAgg+
                          stages, as Flower's message_size_mod counts them; see docs/benchmarks.md)
  payload_bytes_per_miner the model-update part of it (secaggplus: the dense masked vector alone)
  aggregate_s             median over rounds of the server's aggregation compute
  final_accuracy          accuracy of the final global model on the server test set
  peak_rss_mb             peak resident memory of the run, all processes (Ray workers included)

    python scripts/bench_secagg.py --quick --json bench.json          # ~ a few minutes
    python scripts/bench_secagg.py                                    # 10 miners, cnn_small, MNIST, 10 rounds
    python scripts/bench_secagg.py --modes dense,secaggplus --override seed=1
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# -- the modes: name -> (runner, Hydra overrides of the mode) -------------------------------------
# runner "ours" = fl_server.experiment.run_experiment, "secaggplus" = Flower's SecAgg+ baseline.
MODES: dict[str, tuple[str, tuple[str, ...]]] = {
    "dense": ("ours", ("secagg=none", "dgc.enabled=false", "chain=none")),
    "masked": ("ours", ("secagg=masked", "dgc.enabled=false", "chain=none")),
    "dgc": ("ours", ("secagg=none", "dgc.enabled=true", "chain=none")),
    "dgc+masked": ("ours", ("secagg=masked", "dgc.enabled=true", "chain=none")),
    "dgc+nddfe": ("ours", ("secagg=nddfe", "dgc.enabled=true", "chain=none")),
    "secaggplus": ("secaggplus", ()),
}

# Shared settings of every mode (before --override).
DEFAULT_OVERRIDES: tuple[str, ...] = (
    "num_miners=10",
    "model=cnn_small",
    "dataset=mnist",
    "dataset.partition=iid",
    "rounds=10",
)
QUICK_OVERRIDES: tuple[str, ...] = (
    "num_miners=4",
    "model=mlp",
    "dataset=mnist",
    "dataset.partition=iid",
    "dataset.max_samples_per_miner=600",
    "rounds=3",
)

COLUMNS: tuple[str, ...] = (
    "mode",
    "rounds",
    "round_s",
    "upload_bytes_per_miner",
    "payload_bytes_per_miner",
    "aggregate_s",
    "final_accuracy",
    "peak_rss_mb",
)


def compose_mode(mode: str, base: Sequence[str], extra: Sequence[str] = ()) -> Any:
    """The Hydra config of ``mode``: config.yaml + ``base`` + the mode's overrides + ``extra``."""
    from hydra import compose, initialize_config_dir

    from fl_server.__main__ import CONF_DIR

    _, overrides = MODES[mode]
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose(config_name="config", overrides=[*base, *overrides, *extra])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def _empty_row(mode: str, status: str) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(mode=mode, status=status)
    return row


def row_from_run(mode: str, out_dir: Path, summary: dict[str, Any], wall: float) -> dict[str, Any]:
    """One bench row from a finished run's ``rounds.json`` and summary."""
    rounds = json.loads((out_dir / "rounds.json").read_text())
    upload = [float(r["upload_bytes_per_miner"]) for r in rounds]
    payload = [float(r.get("masked_vector_bytes_per_miner", r["upload_bytes_per_miner"])) for r in rounds]
    return {
        "mode": mode,
        "rounds": int(summary["rounds"]),
        "round_s": round(statistics.median(float(r["round_seconds"]) for r in rounds), 4),
        "upload_bytes_per_miner": round(statistics.fmean(upload), 1),
        "payload_bytes_per_miner": round(statistics.fmean(payload), 1),
        "aggregate_s": round(statistics.median(float(r["aggregate_seconds"]) for r in rounds), 5),
        "final_accuracy": round(float(summary["final_accuracy"]), 4),
        "peak_rss_mb": float(summary["peak_rss_mb"]),
        "wall_s": round(wall, 2),
        "num_miners": summary.get("num_miners"),
        "model": summary.get("model"),
        "dataset": summary.get("dataset"),
        "out_dir": str(out_dir),
        "status": "ok",
    }


def _runner(kind: str) -> Callable[[Any, Path], dict[str, Any]]:
    if kind == "secaggplus":
        from fl_server.baseline_secaggplus import run_secaggplus

        return run_secaggplus
    from fl_server.experiment import run_experiment

    return run_experiment


def run_mode(mode: str, base: Sequence[str], extra: Sequence[str], out_root: Path) -> dict[str, Any]:
    """Compose, run and summarize one mode; never raises (skipped/failed rows instead)."""
    try:
        cfg = compose_mode(mode, base, extra)
    except Exception as exc:  # noqa: BLE001 - a config group missing in conf/ is an expected skip
        return _empty_row(mode, f"skipped: {_first_line(exc)}")
    out_dir = out_root / mode.replace("+", "_")
    t0 = time.perf_counter()
    try:
        summary = _runner(MODES[mode][0])(cfg, out_dir)
    except Exception as exc:  # noqa: BLE001 - one broken mode must not hide the others
        traceback.print_exc()
        return _empty_row(mode, f"failed: {_first_line(exc)}")
    return row_from_run(mode, out_dir, summary, time.perf_counter() - t0)


def run_bench(
    modes: Sequence[str], base: Sequence[str], extra: Sequence[str], out_root: Path
) -> list[dict[str, Any]]:
    """Run ``modes`` one after the other with the same settings; one row per mode."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown modes {unknown}; known: {list(MODES)}")
    return [run_mode(mode, base, extra, out_root) for mode in modes]


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "final_accuracy":
        return f"{value * 100:.2f}%"
    if key in ("upload_bytes_per_miner", "payload_bytes_per_miner"):
        return f"{value:,.0f}"
    if key in ("round_s", "aggregate_s"):
        return f"{value:.4f}" if value < 1 else f"{value:.2f}"
    if key == "peak_rss_mb":
        return f"{value:.0f}"
    return str(value)


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in (*COLUMNS, "status"):
        table.add_column(col, justify="left" if col in ("mode", "status") else "right")
    for row in rows:
        table.add_row(*(_fmt(c, row.get(c)) for c in COLUMNS), str(row.get("status", "")))
    Console(width=200).print(table)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    fields = [*COLUMNS, "status"]
    for row in rows:
        fields += [k for k in row if k not in fields]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 miners, MNIST 600 samples each, mlp, 3 rounds")
    ap.add_argument("--json", type=Path, default=None, help="write the rows as a JSON list to PATH")
    ap.add_argument("--csv", type=Path, default=Path("bench_secagg.csv"), help="CSV of the rows (default %(default)s)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of %(default)s")
    ap.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE", help="extra Hydra override (repeatable)"
    )
    ap.add_argument("--out", type=Path, default=None, help="run folders (default outputs/bench_secagg/<time>)")
    args = ap.parse_args(argv)

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    base = QUICK_OVERRIDES if args.quick else DEFAULT_OVERRIDES
    out_root = args.out or Path("outputs") / "bench_secagg" / time.strftime("%Y-%m-%d_%H-%M-%S")
    rows = run_bench(modes, base, args.override, out_root)
    print_table(rows, f"bench_secagg ({'quick' if args.quick else 'full'}: {' '.join([*base, *args.override])})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    write_csv(rows, args.csv)
    return 1 if any(str(r.get("status", "")).startswith("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
