"""Per-round records and the files a run leaves in its Hydra output folder.

- ``rounds.csv`` / ``rounds.json``: one row per round (DESIGN section 9 columns first);
- ``summary.json``: final accuracy, rounds, wall seconds, peak memory;
- ``accuracy.png``, ``loss.png``: curves of the global model on the server's test set.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil


@dataclass
class RoundRecord:
    """What happened in one round, as seen by the server."""

    round: int
    accuracy: float
    loss: float
    round_seconds: float
    upload_bytes_per_miner: float
    selected: int
    received: int
    aggregate_seconds: float = 0.0
    train_loss: float = float("nan")
    train_seconds_mean: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(row.pop("extra"))
        return row


class PeakMemory:
    """Samples the resident memory of this process and all its descendants (Ray workers included)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak_self_mb = 0.0
        self.peak_tree_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        own = me.memory_info().rss
        tree = own
        for child in me.children(recursive=True):
            try:
                tree += child.memory_info().rss
            except psutil.Error:
                continue
        self.peak_self_mb = max(self.peak_self_mb, own / 2**20)
        self.peak_tree_mb = max(self.peak_tree_mb, tree / 2**20)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def write_rounds(folder: Path, records: list[RoundRecord]) -> None:
    rows = [r.row() for r in records]
    (folder / "rounds.json").write_text(json.dumps(rows, indent=2))
    if not rows:
        return
    fields = list(rows[0])
    for row in rows[1:]:
        fields += [k for k in row if k not in fields]
    with open(folder / "rounds.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_summary(folder: Path, summary: dict[str, Any]) -> None:
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


def plot_rounds(folder: Path, records: list[RoundRecord], initial: tuple[float, float], title: str) -> list[Path]:
    """Accuracy and loss of the global model per round (round 0 = the initial model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [0] + [r.round for r in records]
    paths = []
    for key, label, first in (("accuracy", "test accuracy", initial[1]), ("loss", "test loss", initial[0])):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(rounds, [first] + [getattr(r, key) for r in records], marker="o")
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = folder / f"{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def run_summary(
    records: list[RoundRecord], initial_accuracy: float, wall: float, memory: PeakMemory, **identity: Any
) -> dict[str, Any]:
    """The summary.json fields every runner shares (DESIGN section 9), plus ``identity`` fields
    (data set, partition, model, ...) as given."""
    return {
        "final_accuracy": records[-1].accuracy,
        "best_accuracy": max(r.accuracy for r in records),
        "initial_accuracy": initial_accuracy,
        "final_loss": records[-1].loss,
        "rounds": len(records),
        "wall_seconds": round(wall, 2),
        "mean_round_seconds": round(sum(r.round_seconds for r in records) / len(records), 3),
        "peak_rss_mb": round(memory.peak_tree_mb, 1),
        "peak_server_rss_mb": round(memory.peak_self_mb, 1),
        **identity,
    }
