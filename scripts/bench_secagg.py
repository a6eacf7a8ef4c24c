"""Secure-aggregation modes side by side on the same model, data and miners (DESIGN.md sections 8, 9).

Every mode is one full federated run on Flower's simulation engine with the same Hydra config (model,
data set, partitions, miners, rounds, local training); only the mode's overrides (table ``MODES``
below) differ. Our modes run ``fl_server.experiment.run_experiment``; ``secaggplus`` runs Flower's own
SecAgg+ (``benchmarks.flower_secaggplus.run_secaggplus``). A mode whose overrides do not compose
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# -- the modes: name -> (runner, Hydra overrides of the mode) -------------------------------------
# runner "ours" = fl_server.experiment.run_experiment, "flower-secaggplus" = Flower's dense SecAgg+ baseline.
MODES: dict[str, tuple[str, tuple[str, ...]]] = {
    "dense": ("ours", ("secagg=none", "dgc.enabled=false", "chain=none")),
    "masked": ("ours", ("secagg=masked", "dgc.enabled=false", "chain=none")),
    "dgc": ("ours", ("secagg=none", "dgc.enabled=true", "chain=none")),
    "dgc+masked": ("ours", ("secagg=masked", "dgc.enabled=true", "chain=none")),
    "dgc+nddfe": ("ours", ("secagg=nddfe", "dgc.enabled=true", "chain=none")),
    "dgc+secaggplus": ("ours", ("secagg=secaggplus", "dgc.enabled=true", "chain=none")),
    "flower-secaggplus": ("flower-secaggplus", ()),
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
    if kind == "flower-secaggplus":
        from benchmarks.flower_secaggplus import run_secaggplus

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



# -- in-process protocol sweep (--protocol): every backend's crypto, real keys, no training, no network --------

PROTOCOL_MODES: tuple[str, ...] = ("plaintext", "dgc+masked", "dgc+nddfe", "dgc+secaggplus", "flower-secaggplus")
PROTOCOL_COLUMNS: tuple[str, ...] = (
    "mode", "miners", "dropout", "survivors", "k", "upload_bytes_per_miner", "payload_bytes_per_miner",
    "miner_s", "server_s", "round_s", "exact",
)
MLP_MNIST_D = 199_210  # parameters of model=mlp on MNIST (the quick bench's model)
_SUBMISSION_OVERHEAD = 32 + 65 + 20  # commitment, EIP-712 signature, address (SignedSubmission.wire_bytes)


def _protocol_setup(n: int, d: int, density: float, bits: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    from aggregator import quantize as qz

    rng = np.random.default_rng(seed)
    k = max(1, int(round(density * d)))
    support = np.sort(rng.choice(d, size=k, replace=False)).astype(np.int64)
    bound = qz.max_abs(bits)
    return support, [rng.integers(-bound, bound + 1, size=k) for _ in range(n)]


def _clock() -> Callable[[], float]:
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0


def _protocol_one_shot(mode: str, n: int, dropped: set[int], support: np.ndarray, q: list[np.ndarray], bits: int,
                       miner_sample: int) -> dict[str, Any]:
    """plaintext / dgc+masked / dgc+nddfe: each miner encrypts once, the key (masked, nddfe) is issued
    for the survivors, the server decrypts the sum. Miner time: mean over the first ``miner_sample``
    survivors (every miner does the same work)."""
    from aggregator import secagg
    from aggregator.secagg import AggregatorKeys, MinerKeys, PublisherKeys

    backend = {"plaintext": "none", "dgc+masked": "masked", "dgc+nddfe": "nddfe"}[mode]
    survivors = [i for i in range(n) if i not in dropped]
    publisher, aggregator = PublisherKeys.generate(), AggregatorKeys.generate()
    miners = [MinerKeys.generate() for _ in range(n)]
    secagg.encrypt(backend, q[0], support, 1, 0, miners[0].secret, publisher.public, aggregator.public,  # type: ignore[arg-type]
                   bits=bits)  # warm-up (first use of the AES and curve back ends), not timed
    cts, times = {}, []
    for i in survivors:
        if len(times) >= miner_sample and backend == "nddfe":  # same work for everyone: reuse the timing
            cts[i] = secagg.encrypt(backend, q[i], support, 1, 1, miners[i].secret, publisher.public,  # type: ignore[arg-type]
                                    aggregator.public, bits=bits)
            continue
        clock = _clock()
        cts[i] = secagg.encrypt(backend, q[i], support, 1, 1, miners[i].secret, publisher.public,  # type: ignore[arg-type]
                                aggregator.public, bits=bits)
        times.append(clock())
    clock = _clock()
    key = secagg.functional_key(backend, publisher.secret, [miners[i].public for i in survivors], 1, 1, support, bits)  # type: ignore[arg-type]
    total = secagg.decrypt_sum(backend, [cts[i] for i in survivors], key, len(survivors), bits,  # type: ignore[arg-type]
                               publisher_public=publisher.public, aggregator_public=aggregator.public)
    server = clock()
    payload = float(np.mean([len(cts[i]) for i in survivors]))
    return {"payload": payload, "upload": payload + _SUBMISSION_OVERHEAD, "miner_s": float(np.mean(times)),
            "server_s": server, "exact": bool(np.array_equal(total, np.sum([q[i] for i in survivors], axis=0)))}


def _protocol_secaggplus(n: int, dropped: set[int], support: np.ndarray, q: list[np.ndarray], bits: int) -> dict[str, Any]:
    """dgc+secaggplus: the 4 stages of aggregator.secaggplus with the conf/secagg/secaggplus.yaml defaults."""
    from eth_account import Account

    from aggregator import secaggplus as sp
    from aggregator.support import support_hash

    config = sp.SecAggPlusConfig(bits=bits)
    tag = sp.RoundTag(sp.domain_hash(31337, "0x" + "00" * 20), 1, 1, 1, support_hash(support))
    eth_keys = [bytes(Account.create().key) for _ in range(n)]
    miner_s = [0.0] * n
    upload = [0] * n
    sessions, adverts = [], []
    for i in range(n):
        clock = _clock()
        session, advert = sp.advertise(tag, eth_keys[i], config)
        miner_s[i] += clock()
        sessions.append(session)
        adverts.append(advert)
    clock = _clock()
    roster, _ = sp.build_roster(tag, adverts)
    server = clock()
    order = {a.address: j for j, a in enumerate(roster)}
    sessions.sort(key=lambda s: order[s.address])
    for j, a in enumerate(roster):
        upload[j] += len(a.to_bytes())
    shares = []
    for j, session in enumerate(sessions):
        clock = _clock()
        out = sp.share_keys(session, roster)
        miner_s[j] += clock()
        upload[j] += len(sp.shares_to_bytes(out))
        shares += out
    u2 = list(range(n))
    clock = _clock()
    routed = sp.route_shares(shares, u2)
    server += clock()
    inputs = {}
    for j, session in enumerate(sessions):
        if j in dropped:
            continue
        clock = _clock()
        y = sp.mask_input(session, u2, routed[j], q[j], support)
        wire = sp.masked_to_bytes(y)
        miner_s[j] += clock()
        upload[j] += len(wire) + _SUBMISSION_OVERHEAD
        inputs[j] = sp.masked_from_bytes(wire, support.size, sp.params_for(n, config).word_bits)
    survivors = sorted(inputs)
    replies = []
    for j in survivors:
        clock = _clock()
        reply = sp.unmask(sessions[j], survivors)
        miner_s[j] += clock()
        upload[j] += len(reply.to_bytes())
        replies.append(reply)
    clock = _clock()
    total = sp.unmask_sum(tag, config, roster, u2, inputs, replies, support)
    server += clock()
    params = sp.params_for(n, config)
    return {"payload": float(len(sp.masked_to_bytes(inputs[survivors[0]]))),
            "upload": float(np.mean([upload[j] for j in survivors])),
            "miner_s": float(np.mean([miner_s[j] for j in survivors])), "server_s": server,
            "exact": bool(np.array_equal(total, np.sum([q[j] for j in survivors], axis=0))),
            "degree": params.degree, "threshold": params.threshold}


def _protocol_flower(n: int, dropped: set[int], d: int, bits: int, seed: int) -> dict[str, Any]:
    """flower-secaggplus: Flower 1.41's own SecAgg+ client stages (secaggplus_mod) and the server's
    unmasking as in its SecAggPlusWorkflow, on the dense model (d float32 weights -> int64 masked
    vector), with the neighbourhood size and threshold of dgc+secaggplus for the same n."""
    import importlib

    from flwr.common import bytes_to_ndarray, ndarray_to_bytes, ndarrays_to_parameters
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_extract,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize
    from flwr.common.secure_aggregation.secaggplus_constants import Key
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    from aggregator import secaggplus as sp

    fm = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")  # the package shadows it
    params = sp.params_for(n, sp.SecAggPlusConfig(bits=bits))
    num_shares, threshold = params.degree + 1, params.threshold  # Flower counts the miner itself
    rng = np.random.default_rng(seed)
    weights = [rng.uniform(-1, 1, size=d).astype(np.float32) for _ in range(n)]
    nids = list(range(1, n + 1))
    half = num_shares >> 1
    neighbours = {nid: {nids[(j + o) % n] for o in range(-half, half + 1)} for j, nid in enumerate(nids)}
    if num_shares >= n:
        neighbours = {nid: set(nids) for nid in nids}
    setup = {Key.SAMPLE_NUMBER: n, Key.SHARE_NUMBER: min(num_shares, n), Key.THRESHOLD: threshold,
             Key.CLIPPING_RANGE: 8.0, Key.TARGET_RANGE: 1 << 22, Key.MOD_RANGE: 1 << 32, Key.MAX_WEIGHT: 1.0}
    states = {nid: fm.SecAggPlusState(nid=nid) for nid in nids}
    miner_s = dict.fromkeys(nids, 0.0)
    upload = dict.fromkeys(nids, 0)
    keys = {}
    for nid in nids:
        clock = _clock()
        out = fm._setup(states[nid], setup)  # noqa: SLF001 - Flower's own client stage
        miner_s[nid] += clock()
        keys[nid] = (out[Key.PUBLIC_KEY_1], out[Key.PUBLIC_KEY_2])
        upload[nid] += len(keys[nid][0]) + len(keys[nid][1])
    inbox: dict[int, list[tuple[int, bytes]]] = {nid: [] for nid in nids}
    for nid in nids:
        clock = _clock()
        out = fm._share_keys(states[nid], {str(v): keys[v] for v in sorted(neighbours[nid])})  # noqa: SLF001
        miner_s[nid] += clock()
        for dst, ct in zip(out[Key.DESTINATION_LIST], out[Key.CIPHERTEXT_LIST], strict=True):
            inbox[dst].append((nid, ct))
            upload[nid] += len(ct) + 4
    alive = [nid for j, nid in enumerate(nids) if j not in dropped]
    masked = None
    server = 0.0
    for j, nid in enumerate(nids):
        if j in dropped:
            continue
        clock = _clock()
        out = fm._collect_masked_vectors(  # noqa: SLF001
            states[nid], {Key.CIPHERTEXT_LIST: [c for _, c in inbox[nid]], Key.SOURCE_LIST: [s for s, _ in inbox[nid]]},
            1, ndarrays_to_parameters([weights[j]]),
        )
        miner_s[nid] += clock()
        vec = out[Key.MASKED_PARAMETERS]
        upload[nid] += sum(len(b) for b in vec)
        clock = _clock()  # the server sums the masked vectors as they arrive
        arrays = [bytes_to_ndarray(b) for b in vec]
        masked = arrays if masked is None else parameters_mod(parameters_addition(masked, arrays), 1 << 32)
        server += clock()
    payload = float(len(ndarray_to_bytes(np.zeros(d, dtype=np.int64))))
    collected: dict[int, list[bytes]] = {nid: [] for nid in nids}
    alive_set = set(alive)
    for nid in alive:
        clock = _clock()
        out = fm._unmask(states[nid], {Key.ACTIVE_NODE_ID_LIST: sorted(neighbours[nid] & alive_set),  # noqa: SLF001
                                       Key.DEAD_NODE_ID_LIST: sorted(neighbours[nid] - alive_set)})
        miner_s[nid] += clock()
        for owner, share in zip(out[Key.NODE_ID_LIST], out[Key.SHARE_LIST], strict=True):
            collected[owner].append(share)
            upload[nid] += len(share) + 4
    clock = _clock()
    assert masked is not None
    shape = [a.shape for a in masked]
    for nid, share_list in collected.items():
        secret = combine_shares(share_list[:max(threshold, 1)])
        if nid in alive_set:
            masked = parameters_subtraction(masked, pseudo_rand_gen(secret, 1 << 32, shape))
        else:
            for other in neighbours[nid] - {nid}:
                shared = generate_shared_key(bytes_to_private_key(secret), bytes_to_public_key(keys[other][0]))
                mask = pseudo_rand_gen(shared, 1 << 32, shape)
                masked = parameters_addition(masked, mask) if nid > other else parameters_subtraction(masked, mask)
    total = parameters_mod(masked, 1 << 32)
    q_total, recon = factor_extract(total)  # then dequantize as SecAggPlusWorkflow.unmask_stage does
    mean = dequantize(recon, 8.0, 1 << 22)[0] - (len(alive) - 1) * 8.0
    mean *= (1 << 22) / q_total
    server += clock()
    expected = np.mean([weights[j] for j, nid in enumerate(nids) if nid in alive_set], axis=0)
    return {"payload": payload, "upload": float(np.mean([upload[nid] for nid in alive])),
            "miner_s": float(np.mean([miner_s[nid] for nid in alive])), "server_s": server,
            "exact": bool(np.allclose(mean, expected, atol=1e-4)), "degree": num_shares - 1, "threshold": threshold}


def protocol_rows(
    miners: Sequence[int] = (10, 50), dropouts: Sequence[float] = (0.0, 0.1, 0.3), d: int = MLP_MNIST_D,
    density: float = 0.01, bits: int = 15, modes: Sequence[str] = PROTOCOL_MODES, seed: int = 0, miner_sample: int = 3,
) -> list[dict[str, Any]]:
    """One row per (mode, miners, dropout): bytes one surviving miner uploads in the round (all stages)
    and crypto compute per miner and on the server. A dropped miner is selected and (SecAgg+) shares its
    keys, then never sends its input. ``round_s`` = mean miner compute + server compute (miners run in
    parallel; training and network time are not included)."""
    rows = []
    for n in miners:
        for dropout in dropouts:
            dropped = set(np.random.default_rng(seed + n).choice(n, size=int(dropout * n), replace=False).tolist())
            support, q = _protocol_setup(n, d, density, bits, seed)
            for mode in modes:
                row: dict[str, Any] = {"mode": mode, "miners": n, "dropout": dropout, "survivors": n - len(dropped),
                                       "k": d if mode == "flower-secaggplus" else int(support.size), "d": d}
                try:
                    if mode == "dgc+secaggplus":
                        out = _protocol_secaggplus(n, dropped, support, q, bits)
                    elif mode == "flower-secaggplus":
                        out = _protocol_flower(n, dropped, d, bits, seed)
                    else:
                        out = _protocol_one_shot(mode, n, dropped, support, q, bits, miner_sample)
                except Exception as exc:  # noqa: BLE001 - one failing mode must not hide the others
                    rows.append({**row, "status": f"failed: {_first_line(exc)}"})
                    continue
                row.update(
                    upload_bytes_per_miner=round(out["upload"], 1), payload_bytes_per_miner=round(out["payload"], 1),
                    miner_s=round(out["miner_s"], 5), server_s=round(out["server_s"], 5),
                    round_s=round(out["miner_s"] + out["server_s"], 5), exact=out["exact"], status="ok",
                    degree=out.get("degree"), threshold=out.get("threshold"),
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def print_protocol_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in (*PROTOCOL_COLUMNS, "status"):
        table.add_column(col, justify="left" if col in ("mode", "status") else "right")
    for row in rows:
        cells = []
        for col in PROTOCOL_COLUMNS:
            value = row.get(col)
            if value is None:
                cells.append("-")
            elif col in ("upload_bytes_per_miner", "payload_bytes_per_miner"):
                cells.append(f"{value:,.0f}")
            elif col in ("miner_s", "server_s", "round_s"):
                cells.append(f"{value:.4f}")
            elif col == "dropout":
                cells.append(f"{value:.0%}")
            else:
                cells.append(str(value))
        table.add_row(*cells, str(row.get("status", "")))
    Console(width=200).print(table)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="runs: 4 miners, MNIST 600 samples each, mlp, 3 rounds; --protocol: 10 miners, d=55,210")
    ap.add_argument("--json", type=Path, default=None, help="write the rows as a JSON list to PATH")
    ap.add_argument("--csv", type=Path, default=None, help="CSV of the rows (default <out>/bench_secagg.csv)")
    ap.add_argument("--modes", default=None, help=f"comma-separated subset of {','.join(MODES)} "
                    f"(--protocol: {','.join(PROTOCOL_MODES)})")
    ap.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE", help="extra Hydra override (repeatable)"
    )
    ap.add_argument("--out", type=Path, default=None, help="run folders (default outputs/bench_secagg/<time>)")
    ap.add_argument("--protocol", action="store_true",
                    help="in-process protocol sweep (real crypto, no training, no network) instead of full runs")
    ap.add_argument("--miners", default="10,50", help="--protocol: federation sizes (default %(default)s)")
    ap.add_argument("--dropouts", default="0,0.1,0.3", help="--protocol: dropout fractions (default %(default)s)")
    ap.add_argument("--d", type=int, default=MLP_MNIST_D, help="--protocol: model size (default %(default)s, mlp/MNIST)")
    ap.add_argument("--density", type=float, default=0.01, help="--protocol: DGC density k/d (default %(default)s)")
    args = ap.parse_args(argv)

    out_root = args.out or Path("outputs") / "bench_secagg" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if args.protocol:
        modes = [m.strip() for m in (args.modes or ",".join(PROTOCOL_MODES)).split(",") if m.strip()]
        unknown = [m for m in modes if m not in PROTOCOL_MODES]
        if unknown:
            print(f"error: unknown --protocol modes {unknown}; known: {list(PROTOCOL_MODES)}", file=sys.stderr)
            return 2
        miners = [10] if args.quick else [int(x) for x in args.miners.split(",") if x.strip()]
        d = 55_210 if args.quick else args.d
        rows = protocol_rows(miners, _floats(args.dropouts), d, args.density, modes=modes)
        print_protocol_table(rows, f"bench_secagg --protocol (d={d}, density={args.density}, in process, real crypto)")
    else:
        modes = [m.strip() for m in (args.modes or ",".join(MODES)).split(",") if m.strip()]
        base = QUICK_OVERRIDES if args.quick else DEFAULT_OVERRIDES
        rows = run_bench(modes, base, args.override, out_root)
        print_table(rows, f"bench_secagg ({'quick' if args.quick else 'full'}: {' '.join([*base, *args.override])})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    write_csv(rows, args.csv or out_root / "bench_secagg.csv")
    return 1 if any(str(r.get("status", "")).startswith("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
