"""Non-IID accuracy: DGC + secure aggregation against dense FedAvg, in process (no Flower, no Ray).

The same code as a federated run — the miner's ``fl_client.train.train`` with the plan's gradient
mask and ``fl_client.secure_update.build_submission`` (DGC, quantization, masked encryption,
signature); the server's ``SecureRound.verify``/``aggregate`` with the in-process key service — but
every miner trains in this one process, one after the other. That keeps a 20-round, 10-miner study
affordable on a loaded 2-core machine, where Ray's start-up times out. Dense FedAvg averages the
miners' weights by example count, as ``ModelMineStrategy`` does; the secure path averages the
decrypted sum over the submitters (unweighted, as the secure round does).

    python scripts/bench_noniid.py --quick --json outputs/noniid_quick.json
    python scripts/bench_noniid.py --datasets mnist,fashion_mnist --rounds 20 --miners 10 \\
        --max-samples 1000 --json outputs/noniid.json

Prints one row per (dataset, mode): final accuracy, best accuracy, accuracy per round (JSON), and
the gap of each secure row to the dense row of its data set (percentage points).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict  # noqa: E402

from aggregator.datasets import get_spec  # noqa: E402
from aggregator.dgc import DGCConfig, DGCState  # noqa: E402
from aggregator.eip712 import Domain  # noqa: E402
from aggregator.models import (  # noqa: E402
    ModelSpec,
    build_model,
    flatten_state,
    model_hash,
    state_to_bytes,
    unflatten_like,
)
from aggregator.secagg import AggregatorKeys, PublisherKeys  # noqa: E402
from fl_client.data import load_local_data, make_loader  # noqa: E402
from fl_client.identity import create_identity  # noqa: E402
from fl_client.secure_update import build_submission, node_binding  # noqa: E402
from fl_client.train import TrainConfig, train  # noqa: E402
from fl_server.data_prep import PartitionConfig, is_prepared, miner_dir, prepare, server_test_path  # noqa: E402
from fl_server.evaluation import ServerEvaluator  # noqa: E402
from fl_server.key_service import PublisherKeyService, new_credential  # noqa: E402
from fl_server.registry import MinerRegistry  # noqa: E402
from fl_server.secure_aggregation import SecureRound, SecureSettings, public_seed  # noqa: E402


def _secure_round(d: int, layer_sizes: tuple[int, ...], n: int, backend: str, dgc: DGCConfig, folder: Path,
                  knobs: dict[str, Any]):
    identities = [create_identity(folder / f"m{i}") for i in range(n)]
    registry = MinerRegistry()
    for identity in identities:
        registry.register(identity.address, identity.secagg_public)
    publisher, aggregator = PublisherKeys.generate(), AggregatorKeys.generate()
    credential = new_credential()
    service = PublisherKeyService(backend, publisher, credential, registry.key_of, 15, 2)
    settings = SecureSettings(
        backend, 15, float(knobs["clip"]), dgc, float(knobs["explore"]), task_id=1,
        domain=Domain(31337, "0x" + "00" * 20), layer_sizes=layer_sizes, threshold=2,
        train_on_support=bool(knobs["train_on_support"]),
    )
    return SecureRound(settings, d, registry, service, credential, publisher.public, aggregator.public), identities


# The secure round's settings this study varies; defaults = conf/config.yaml's (dgc/default, secagg,
# strategy/fedavgm). The dense baseline is always plain FedAvg.
DEFAULT_KNOBS: dict[str, Any] = {
    "train_on_support": True, "explore": 0.5, "warmup_rounds": 10, "clip": 0.5, "dgc_momentum": 0.0, "clip_norm": None,
    "server_momentum": 0.7, "warmup_start": 0.25, "warmup_factor": 0.7,
}


def run(dataset: str, mode: str, rounds: int, miners: int, alpha: float, seed: int, max_samples: int,
        density: float, backend: str, root: Path, knobs: dict[str, Any] | None = None) -> dict[str, Any]:
    knobs = {**DEFAULT_KNOBS, **(knobs or {})}
    part = PartitionConfig(dataset, miners, "dirichlet", alpha, seed, max_samples)
    if not is_prepared(root, part):
        prepare(root, part)
    ds = get_spec(dataset)
    spec = ModelSpec("cnn_small", {"in_channels": ds.in_channels, "image_size": ds.image_size, "num_classes": ds.num_classes})
    model = build_model(spec, seed=seed)
    evaluator = ServerEvaluator(server_test_path(root, dataset), dataset, spec)
    data = [load_local_data(miner_dir(root, part, i), dataset) for i in range(miners)]
    state = model.state_dict()
    layer_sizes = tuple(state[k].numel() for k in sorted(state))
    d = int(sum(layer_sizes))
    secure = identities = None
    tmp = tempfile.TemporaryDirectory()
    if mode == "secure":
        dgc = DGCConfig(density=density, momentum=float(knobs["dgc_momentum"]),
                        warmup_rounds=int(knobs["warmup_rounds"]), clip_norm=knobs["clip_norm"],
                        warmup_start=float(knobs["warmup_start"]), warmup_factor=float(knobs["warmup_factor"]))
        secure, identities = _secure_round(d, layer_sizes, miners, backend, dgc, Path(tmp.name), knobs)
        dgc_states = [DGCState(d, secure.settings.dgc) for _ in range(miners)]
    accuracies: list[float] = []
    velocity: np.ndarray | None = None
    t0 = time.perf_counter()
    for rnd in range(1, rounds + 1):
        global_state = {k: v.clone() for k, v in model.state_dict().items()}
        flat = flatten_state(global_state)
        masks, plan = None, None
        if secure is not None:
            plan = secure.plan(rnd, public_seed(1, rnd, model_hash(state_to_bytes(global_state))))
            mask = plan.grad_mask()
            masks = unflatten_like(mask, global_state) if mask is not None else None
        weights, counts, accepted = [], [], []
        for i in range(miners):
            local = build_model(spec)
            local.load_state_dict(global_state)
            cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05, optimizer="sgd", momentum=0.9, seed=seed * 100_003 + rnd)
            result = train(local, make_loader(data[i].train, cfg.batch_size, shuffle=True, seed=cfg.seed), cfg, grad_masks=masks)
            if secure is None:
                weights.append(flatten_state(local.state_dict()))
                counts.append(result.num_examples)
                continue
            assert plan is not None and identities is not None
            delta = flatten_state(local.state_dict()) - flat
            sub = build_submission(delta, plan, identities[i], dgc_states[i], np.random.default_rng(seed * 1000 + rnd * 10 + i))
            content = RecordDict({
                "submission": ConfigRecord(sub.submission.to_config()),
                "binding": ConfigRecord(node_binding(identities[i], plan, i)),  # type: ignore[arg-type]
                "metrics": MetricRecord({"train-loss": result.loss}),
            })
            accepted.append(secure.verify(plan, i, content, set(range(miners))))
        if secure is None:
            total = sum(counts)
            new = sum(w * (c / total) for w, c in zip(weights, counts, strict=True))
        else:
            assert plan is not None
            step = secure.aggregate(plan, accepted)
            beta = float(knobs["server_momentum"])
            if beta:  # FedAvgM on the secure mean (the strategy's ServerOptimizer does the same)
                velocity = step if velocity is None else beta * velocity + step
                step = velocity
            new = flat + step
        model.load_state_dict(unflatten_like(np.asarray(new, dtype=np.float32), global_state))
        acc = float(evaluator(rnd, ArrayRecord(model.state_dict()))["accuracy"])
        accuracies.append(acc)
        print(f"{dataset:>13} {mode:>6} round {rnd:>2}: {acc * 100:6.2f}%  ({time.perf_counter() - t0:6.0f} s)", flush=True)
    tmp.cleanup()
    return {
        "dataset": dataset, "mode": mode if mode == "dense" else f"dgc{density:g}+{backend}", "rounds": rounds,
        "miners": miners, "alpha": alpha, "seed": seed, "max_samples_per_miner": max_samples,
        "final_accuracy": accuracies[-1], "best_accuracy": max(accuracies), "accuracy_per_round": accuracies,
        "seconds": time.perf_counter() - t0, **({"knobs": knobs} if mode == "secure" else {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="mnist,fashion_mnist")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--miners", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-samples", type=int, default=0, help="cap per miner (0 = the miner's whole share)")
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--backend", default="masked", choices=["masked", "nddfe", "none"])
    parser.add_argument("--modes", default="dense,secure")
    parser.add_argument("--data-root", type=Path, default=Path("outputs/noniid_data"))
    parser.add_argument("--train-on-support", type=int, choices=[0, 1], default=1)
    parser.add_argument("--explore", type=float, default=DEFAULT_KNOBS["explore"])
    parser.add_argument("--warmup-rounds", type=int, default=DEFAULT_KNOBS["warmup_rounds"])
    parser.add_argument("--warmup-start", type=float, default=DEFAULT_KNOBS["warmup_start"])
    parser.add_argument("--warmup-factor", type=float, default=DEFAULT_KNOBS["warmup_factor"])
    parser.add_argument("--clip", type=float, default=DEFAULT_KNOBS["clip"], help="quantization clip")
    parser.add_argument("--dgc-momentum", type=float, default=DEFAULT_KNOBS["dgc_momentum"])
    parser.add_argument("--clip-norm", type=float, default=None)
    parser.add_argument("--server-momentum", type=float, default=DEFAULT_KNOBS["server_momentum"],
                        help="FedAvgM on the secure path (the dense baseline stays plain FedAvg)")
    parser.add_argument("--quick", action="store_true", help="digits, 4 miners, 3 rounds")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.datasets, args.rounds, args.miners, args.max_samples = "digits", 3, 4, 0
    torch.set_num_threads(1)
    knobs = {"train_on_support": bool(args.train_on_support), "explore": args.explore, "warmup_rounds": args.warmup_rounds,
             "clip": args.clip, "dgc_momentum": args.dgc_momentum, "clip_norm": args.clip_norm,
             "server_momentum": args.server_momentum, "warmup_start": args.warmup_start,
             "warmup_factor": args.warmup_factor}
    rows = []
    for dataset in args.datasets.split(","):
        for mode in args.modes.split(","):
            rows.append(run(dataset, mode, args.rounds, args.miners, args.alpha, args.seed, args.max_samples,
                            args.density, args.backend, args.data_root, knobs))
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(rows, indent=2))
    dense = {r["dataset"]: r for r in rows if r["mode"] == "dense"}
    print(f"\n{'dataset':>13} | {'mode':>16} | final acc | best acc | gap to dense (pp) | seconds")
    for r in rows:
        gap = (r["final_accuracy"] - dense[r["dataset"]]["final_accuracy"]) * 100 if r["dataset"] in dense else float("nan")
        print(f"{r['dataset']:>13} | {r['mode']:>16} | {r['final_accuracy'] * 100:8.2f}% | {r['best_accuracy'] * 100:7.2f}% | "
              f"{gap:+17.2f} | {r['seconds']:7.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
