"""Latency of the REST API while a run trains (target: /api/status under 50 ms).

Starts ``python -m fl_server <small run> dashboard.enabled=true`` (the API served from a thread of the
training server process, the demanding case), waits for the printed URL, then runs a bounded load loop
against /api/status (and a few other read endpoints) from ``--clients`` threads, counting only the
requests answered while the run's rounds were in progress. Prints a table; ``--json PATH`` writes the
rows; ``--quick`` runs a shorter run.

    python scripts/bench_api.py [--quick] [--json outputs/bench_api.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
ENDPOINTS = ("/api/status", "/api/training/metrics", "/api/nodes", "/api/rounds")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_overrides(quick: bool) -> list[str]:
    if quick:
        return ["dataset=digits", "model=mlp", "num_miners=2", "rounds=6", "secagg=none", "dgc.enabled=false",
                "chain=none"]
    return ["dataset=mnist", "model=cnn_small", "num_miners=3", "rounds=4", "secagg=none", "dgc.enabled=false",
            "chain=none", "dataset.max_samples_per_miner=2000"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits/mlp run, fewer requests")
    parser.add_argument("--json", help="write the table rows as JSON here")
    parser.add_argument("--clients", type=int, default=2, help="concurrent client threads")
    parser.add_argument("--max-requests", type=int, default=0, help="stop after this many (0: 2000, quick 500)")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench_api"), help="run folder")
    args = parser.parse_args()
    limit = args.max_requests or (500 if args.quick else 2000)
    port = free_port()
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    argv = [sys.executable, "-m", "fl_server", *run_overrides(args.quick), "dashboard.enabled=true",
            f"dashboard.port={port}", "dashboard.linger_s=0", f"hydra.run.dir={out}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "bench_console.log", "w")  # noqa: SIM115 - closed at the end
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    url_holder: list[str] = []

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            log.write(line)
            match = re.search(r"dashboard: (http://\S+)/", line)
            if match and not url_holder:
                url_holder.append(match.group(1))

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 300
    while not url_holder and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not url_holder:
        proc.kill()
        print(f"error: the run printed no dashboard URL; see {out / 'bench_console.log'}", file=sys.stderr)
        return 1
    base = url_holder[0]
    samples: dict[str, list[float]] = {e: [] for e in ENDPOINTS}  # as the client saw them
    server_ms: dict[str, list[float]] = {e: [] for e in ENDPOINTS}  # the server's own time (Server-Timing)
    errors: list[str] = []
    training = threading.Event()
    done = threading.Event()
    sent = [0]
    lock = threading.Lock()

    def watch() -> None:  # marks the training phase: first round started .. run not running any more
        with httpx.Client(base_url=base, timeout=10) as client:
            while not done.is_set() and proc.poll() is None:
                try:
                    status = client.get("/api/status").json()
                    run = status.get("run") or {}
                    if run.get("status") == "running" and status.get("round", 0) >= 1:
                        training.set()
                    elif training.is_set():
                        done.set()
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        done.set()

    def load(worker: int) -> None:
        with httpx.Client(base_url=base, timeout=10) as client:
            i = worker
            while not done.is_set():
                if not training.wait(0.2):
                    continue
                with lock:
                    if sent[0] >= limit:
                        return
                    sent[0] += 1
                endpoint = "/api/status" if i % 2 == 0 else ENDPOINTS[1 + (i // 2) % (len(ENDPOINTS) - 1)]
                i += 1
                t0 = time.perf_counter()
                try:
                    response = client.get(endpoint)
                    elapsed = (time.perf_counter() - t0) * 1000
                    if response.status_code != 200:
                        errors.append(f"{endpoint}: HTTP {response.status_code}")
                    elif training.is_set() and not done.is_set():
                        samples[endpoint].append(elapsed)
                        timing = re.search(r"dur=([0-9.]+)", response.headers.get("server-timing", ""))
                        if timing:
                            server_ms[endpoint].append(float(timing.group(1)))
                except httpx.HTTPError as exc:
                    errors.append(f"{endpoint}: {exc}")
                time.sleep(0.005)

    threads = [threading.Thread(target=watch, daemon=True)]
    threads += [threading.Thread(target=load, args=(w,), daemon=True) for w in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join(timeout=900)
    done.set()
    rc = proc.wait(timeout=600)
    log.close()
    rows = []
    for endpoint, values in samples.items():
        if not values:
            continue
        rows.append({"endpoint": endpoint, "requests": len(values), "clients": args.clients,
                     "mean_ms": round(statistics.fmean(values), 2), "p50_ms": round(percentile(values, 50), 2),
                     "p95_ms": round(percentile(values, 95), 2), "p99_ms": round(percentile(values, 99), 2),
                     "max_ms": round(max(values), 2),
                     "server_p50_ms": round(percentile(server_ms[endpoint], 50), 2) if server_ms[endpoint] else None,
                     "server_p95_ms": round(percentile(server_ms[endpoint], 95), 2) if server_ms[endpoint] else None,
                     "load_avg": round(os.getloadavg()[0], 1), "run": " ".join(run_overrides(args.quick)[:2])})
    print(f"{'endpoint':<24}{'n':>6}{'mean ms':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}"
          f"{'server p50':>12}{'server p95':>12}")
    for r in rows:
        print(f"{r['endpoint']:<24}{r['requests']:>6}{r['mean_ms']:>9.2f}{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}"
              f"{r['p99_ms']:>9.2f}{r['max_ms']:>9.2f}{r['server_p50_ms'] or 0:>12.2f}{r['server_p95_ms'] or 0:>12.2f}")
    status_rows = [r for r in rows if r["endpoint"] == "/api/status"]
    verdict = "no samples" if not status_rows else (
        "PASS" if status_rows[0]["p95_ms"] < 50 else "FAIL") + " (target: /api/status p95 < 50 ms while training)"
    print(f"{verdict}; {len(errors)} errors; run exit code {rc}; load {os.getloadavg()[0]:.1f}; log {out}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if status_rows and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
