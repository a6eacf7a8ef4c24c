"""Benchmark the secure-aggregation backends (none, masked, nddfe) per DESIGN.md section 9.

For every (d, density, n) it measures, for one round with k = ceil(d * density) coordinates:
  encrypt_s   seconds to encrypt one miner's update (mean over the miners actually encrypted),
  key_s       seconds for the publisher to derive the functional key for n distinct miners,
  decrypt_s   seconds for the aggregator to parse n ciphertexts and recover the sum (for nddfe:
              combination, sk*P_T and BSGS; the one-time baby-step table build is reported as table_s),
  bytes_per_miner  exact ciphertext size on the wire.

NDD-FE encryption is ~45 us per coordinate, so by default only ``--enc-miners`` (2) distinct miners
are encrypted per row and their ciphertexts are reused (cycled) for the other miners; decryption then
uses the matching key (sum of the encrypted miners' masks with multiplicity). The decryption work is
identical to n distinct ciphertexts; the key time is measured with n distinct miners. The decrypted sum
is checked against the plaintext sum on every row.

    python scripts/bench_crypto.py --quick --json        # -> outputs/bench_crypto.json
    python scripts/bench_crypto.py --quick --json PATH   # or any path you give
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregator import nddfe, secagg  # noqa: E402
from aggregator.bsgs import CURVE_ORDER, baby_step_table, table_size_for  # noqa: E402

TASK_ID, ROUND = 1, 1


def bench_row(
    backend: str, d: int, density: float, n: int, bits: int, enc_miners: int, seed: int
) -> dict[str, Any]:
    """Run one benchmark row and return its JSON object."""
    rng = np.random.default_rng(seed)
    k = max(1, math.ceil(d * density))
    max_abs = (1 << (bits - 1)) - 1
    idx = np.sort(rng.choice(d, size=k, replace=False)).astype(np.int64)
    publisher = secagg.PublisherKeys.generate()
    aggregator = secagg.AggregatorKeys.generate()
    miners = [secagg.MinerKeys.generate() for _ in range(n)]
    n_enc = n if backend != "nddfe" else max(1, min(n, enc_miners))
    xs = [rng.integers(-max_abs, max_abs + 1, size=k) for _ in range(n_enc)]

    t0 = time.perf_counter()
    cts = [
        secagg.encrypt(backend, x, idx, TASK_ID, ROUND, m.secret, publisher.public, aggregator.public, bits)  # type: ignore[arg-type]
        for x, m in zip(xs, miners, strict=False)
    ]
    encrypt_s = (time.perf_counter() - t0) / n_enc

    t0 = time.perf_counter()
    key = secagg.functional_key(backend, publisher.secret, [m.public for m in miners], TASK_ID, ROUND, idx)  # type: ignore[arg-type]
    key_s = time.perf_counter() - t0

    submitted = [cts[i % n_enc] for i in range(n)]
    expected = np.sum([xs[i % n_enc] for i in range(n)], axis=0)
    if backend == "nddfe" and n_enc < n:
        # key matching the cycled ciphertexts: sum of the encrypted miners' masks with multiplicity
        total = [0] * k
        for i in range(n):
            dh = nddfe.dh_point(publisher.secret, miners[i % n_enc].public)
            for p, r in enumerate(nddfe.mask_scalars(dh, TASK_ID, ROUND, idx)):
                total[p] += r
        key = nddfe.FunctionalKey(tuple(v % CURVE_ORDER for v in total)).to_bytes()

    table_s = 0.0
    if backend == "nddfe":
        t0 = time.perf_counter()
        baby_step_table(aggregator.public, table_size_for(secagg.sum_bound(n, bits)))
        table_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    got = secagg.decrypt_sum(
        backend,  # type: ignore[arg-type]
        submitted,
        key,
        n,
        bits,
        publisher_public=publisher.public,
        aggregator_public=aggregator.public,
    )
    decrypt_s = time.perf_counter() - t0
    if not np.array_equal(got, expected):
        raise SystemExit(f"{backend} d={d} density={density} n={n}: decrypted sum is WRONG")
    return {
        "backend": backend,
        "d": d,
        "density": density,
        "n": n,
        "k": k,
        "bits": bits,
        "encrypt_s": round(encrypt_s, 6),
        "key_s": round(key_s, 6),
        "decrypt_s": round(decrypt_s, 6),
        "table_s": round(table_s, 6),
        "bytes_per_miner": len(cts[0]),
        "encrypted_miners": n_enc,
    }


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    """Print the rows with rich (falls back to plain text)."""
    cols = ["backend", "d", "density", "n", "k", "encrypt_s", "key_s", "decrypt_s", "table_s", "bytes_per_miner"]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for c in cols:
            table.add_column(c, justify="right" if c != "backend" else "left")
        for r in rows:
            table.add_row(*[_fmt(r[c]) for c in cols])
        Console(width=160).print(table)
    except ImportError:  # pragma: no cover
        print(title)
        print(" ".join(f"{c:>14}" for c in cols))
        for r in rows:
            print(" ".join(f"{_fmt(r[c]):>14}" for c in cols))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if v < 100 else f"{v:.1f}"
    if isinstance(v, int) and v >= 10_000:
        return f"{v:,}"
    return str(v)


DEFAULT_JSON = Path(__file__).resolve().parents[1] / "outputs" / "bench_crypto.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="n=10 only, d=100k (1%%, 10%%) and d=1M at 1%%")
    ap.add_argument("--json", type=Path, nargs="?", default=None, const=DEFAULT_JSON,
                    help="write the rows as a JSON list to PATH (no PATH: outputs/bench_crypto.json)")
    ap.add_argument("--bits", type=int, default=15)
    ap.add_argument("--enc-miners", type=int, default=2, help="distinct miners actually encrypted (nddfe)")
    ap.add_argument("--backends", default="nddfe,masked,none")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in secagg.BACKENDS:
            ap.error(f"unknown backend {b!r}")
    if args.quick:
        grid = [(100_000, 0.01, 10), (100_000, 0.1, 10), (1_000_000, 0.01, 10)]
    else:
        grid = [(d, dens, n) for d in (100_000, 1_000_000) for dens in (0.01, 0.1) for n in (10, 50)]
    rows: list[dict[str, Any]] = []
    for d, dens, n in grid:
        for b in backends:
            row = bench_row(b, d, dens, n, args.bits, args.enc_miners, args.seed)
            rows.append(row)
            print(
                f"  {b:6s} d={d:>9,} density={dens:<5} n={n:<3} k={row['k']:>7,}  enc={row['encrypt_s']:.4f}s "
                f"key={row['key_s']:.4f}s dec={row['decrypt_s']:.4f}s bytes={row['bytes_per_miner']:,}",
                flush=True,
            )
    print_table(rows, "secure aggregation, one round (seconds; encrypt is per miner)")
    print(
        f"nddfe: encrypt timed on {args.enc_miners} distinct miner(s) per row, ciphertexts reused for the "
        "others; decryption over all n ciphertexts (table_s = one-time cached BSGS table build)."
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {len(rows)} rows to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
