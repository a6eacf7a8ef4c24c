"""Hydra callback: after a ``--multirun`` sweep, one table (CSV + Markdown) and one plot across runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

SUMMARY_KEYS = ("final_accuracy", "best_accuracy", "rounds", "mean_round_seconds", "wall_seconds", "peak_rss_mb")


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per finished job: its overrides and its summary.json figures."""
    rows = []
    for summary_path in sorted(sweep_dir.glob("*/summary.json"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0):
        job = summary_path.parent
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = ""
        if overrides_file.exists():
            lines = [ln[2:].strip() for ln in overrides_file.read_text().splitlines() if ln.startswith("- ")]
            overrides = " ".join(lines)
        summary = json.loads(summary_path.read_text())
        row = {"job": job.name, "overrides": overrides}
        row.update({k: summary.get(k) for k in SUMMARY_KEYS})
        rows.append(row)
    return rows


def write_table(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with open(sweep_dir / "multirun_summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    header = "| " + " | ".join(rows[0]) + " |"
    sep = "|" + "---|" * len(rows[0])
    body = ["| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()) + " |" for r in rows]
    (sweep_dir / "multirun_summary.md").write_text("\n".join([header, sep, *body]) + "\n")
    _plot(sweep_dir, rows)


def _plot(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for row in rows:
        rounds_json = sweep_dir / row["job"] / "rounds.json"
        if rounds_json.exists():
            data = json.loads(rounds_json.read_text())
            ax.plot([d["round"] for d in data], [d["accuracy"] for d in data], marker="o", label=row["overrides"] or row["job"])
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(sweep_dir / "multirun_accuracy.png", dpi=110)
    plt.close(fig)


class MultirunSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = collect(sweep_dir)
        write_table(sweep_dir, rows)
        if rows:
            print(f"multirun summary: {sweep_dir / 'multirun_summary.csv'}")
            print((sweep_dir / "multirun_summary.md").read_text())
