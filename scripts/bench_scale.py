"""Scale: many registered miners, a fixed number selected per round, the default secure round.

For each number of registered virtual miners (100, 300, 1,000) this runs the real thing,
``python -m fl_server`` (Flower simulation engine, one SuperNode per miner, every miner registered on
the embedded EVM with its stake, DGC + secure aggregation + on-chain voting and rewards: the defaults
of conf/config.yaml), with ``selection.per_round`` miners selected per round and the same number of
training samples per miner at every size, and reports:

- ``round_s``: mean seconds per round (selection, training, secure aggregation, chain round), from
  rounds.csv; ``setup_s``: everything before round 1 (partitions, keys, registrations, task);
- ``peak_rss_mb``: peak resident memory of the whole process tree (the run, the SuperLink, the
  ServerApp, Ray and its workers), sampled every 0.5 s by this script;
- ``gas_per_miner``: chain gas of a round divided by the miners whose submissions it counted.

Per-round cost should grow with the selected miners, not with the registered ones.

    .venv/bin/python scripts/bench_scale.py --quick --json outputs/bench_scale.json
    .venv/bin/python scripts/bench_scale.py --registered 1000 --rounds 3      # the acceptance run

Runs write under --out (default outputs/bench_scale/<time>/n<N>/).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"


class TreeMemory:
    """Peak RSS (MB) of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_mb = 0.0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        if total / 2**20 > self.peak_mb:
            self.peak_mb, self.peak_processes = total / 2**20, len(procs)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


RAY_START_FAILURE = "timed out during startup"  # Ray's fixed 30 s raylet limit, hit on an overloaded machine


def run_size(n: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One size; retried (up to --retries) when Ray's start-up timed out on a busy machine."""
    for attempt in range(args.retries + 1):
        row = _run_size_once(n, args, out)
        if "error" not in row or RAY_START_FAILURE not in (out / f"n{n}" / "run.log").read_text(errors="replace"):
            return row
        print(f"[bench_scale] {n}: Ray did not start in time (busy machine); retry {attempt + 1}", flush=True)
        time.sleep(30 * (attempt + 1))
    return row


def _run_size_once(n: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    run_dir = out / f"n{n}"
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = [
        f"num_miners={n}", f"rounds={args.rounds}", f"selection.per_round={args.per_round}",
        f"selection.min_available={n}", f"dataset.max_samples_per_miner={args.samples}",
        f"data_root={args.data_root}", f"hydra.run.dir={run_dir}", *args.override,
    ]
    cmd = [str(PYTHON), "-m", "fl_server", *overrides]
    print(f"[bench_scale] {n} registered: {' '.join(cmd[2:])}", flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (open(run_dir / "run.log", "w") as log,
          subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env) as proc,
          TreeMemory(proc.pid) as memory):
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            rc = -9
    wall = time.perf_counter() - t0
    row: dict[str, Any] = {"registered": n, "per_round": args.per_round, "rounds": args.rounds, "rc": rc,
                           "wall_s": round(wall, 1), "peak_rss_mb": round(memory.peak_mb, 1),
                           "processes_at_peak": memory.peak_processes}
    rounds_csv = run_dir / "rounds.csv"
    if rc != 0 or not rounds_csv.exists():
        tail = (run_dir / "run.log").read_text(errors="replace").splitlines()[-15:]
        row["error"] = "\n".join(tail)
        print(f"[bench_scale] {n}: FAILED (rc {rc}); log tail:\n" + row["error"], flush=True)
        return row
    with open(rounds_csv) as fh:
        rows = list(csv.DictReader(fh))
    round_s = [float(r["round_seconds"]) for r in rows]
    gas = [float(r["gas"]) / max(int(r["received"]), 1) for r in rows if r.get("gas") not in (None, "")]
    row.update(
        round_s=round(sum(round_s) / len(round_s), 2),
        round_s_each=[round(x, 2) for x in round_s],
        selected=[int(r["selected"]) for r in rows],
        received=[int(r["received"]) for r in rows],
        gas_per_miner=round(sum(gas) / len(gas)) if gas else None,
        final_accuracy=float(rows[-1]["accuracy"]),
        setup_s=round(wall - sum(round_s), 1),
    )
    summary = run_dir / "summary.json"
    if summary.exists():
        row["server_peak_rss_mb"] = json.loads(summary.read_text()).get("peak_rss_mb")
    print(f"[bench_scale] {n}: {row['round_s']} s/round, peak {row['peak_rss_mb']:.0f} MB, "
          f"gas/miner {row['gas_per_miner']}, setup {row['setup_s']} s", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="40 and 120 registered, 20 per round, 2 rounds")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--out", type=Path, help="output folder (default outputs/bench_scale/<time>)")
    p.add_argument("--registered", default="", help="comma-separated sizes (default 100,300,1000)")
    p.add_argument("--per-round", type=int, default=0, help="miners selected per round (default 50)")
    p.add_argument("--rounds", type=int, default=0, help="rounds per size (default 3)")
    p.add_argument("--samples", type=int, default=60, help="training samples per miner at every size")
    p.add_argument("--data-root", default=str(REPO / "local_data"))
    p.add_argument("--timeout", type=float, default=3600, help="seconds per size before the run is killed")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    p.add_argument("--retries", type=int, default=2, help="re-runs of a size whose Ray start-up timed out")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.registered.split(",") if x] or ([40, 120] if args.quick else [100, 300, 1000])
    args.per_round = args.per_round or (20 if args.quick else 50)
    args.rounds = args.rounds or (2 if args.quick else 3)
    if min(sizes) < args.per_round or args.rounds < 1 or args.samples < 10:
        print(f"error: every size must be >= per_round ({args.per_round}); rounds >= 1; samples >= 10",
              file=sys.stderr)
        return 2
    out = args.out or REPO / "outputs" / "bench_scale" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in sizes:
        rows.append(run_size(n, args, out))
        (out / "rows.json").write_text(json.dumps(rows, indent=2))
    print(f"\n{args.per_round} selected per round, {args.rounds} rounds, {args.samples} samples per miner, "
          f"default secure configuration (+ {' '.join(args.override) or 'no overrides'})")
    print(f"{'registered':>10} {'per round':>9} {'s/round':>8} {'setup s':>8} {'peak RSS MB':>12} "
          f"{'gas/miner/round':>16} {'final acc':>9}")
    for r in sorted(rows, key=lambda r: r["registered"]):
        if "round_s" not in r:
            print(f"{r['registered']:>10} {r['per_round']:>9}   failed (rc {r['rc']}), see {out}/n{r['registered']}/run.log")
            continue
        gas = "-" if r["gas_per_miner"] is None else f"{r['gas_per_miner']:,}"
        print(f"{r['registered']:>10} {r['per_round']:>9} {r['round_s']:>8.1f} {r['setup_s']:>8.1f} "
              f"{r['peak_rss_mb']:>12.0f} {gas:>16} {r['final_accuracy'] * 100:>8.2f}%")
    ok = sorted((r for r in rows if "round_s" in r), key=lambda r: r["registered"])
    if len(ok) >= 2:
        lo, hi = ok[0], ok[-1]
        growth = hi["round_s"] / lo["round_s"] if lo["round_s"] else math.nan
        print(f"round time x{growth:.2f} from {lo['registered']} to {hi['registered']} registered "
              f"(x{hi['registered'] / lo['registered']:.0f} miners registered, same number selected)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    print(f"outputs: {out}")
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
