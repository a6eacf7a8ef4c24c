"""Adaptive selection vs random selection under simulated network conditions.

50 miners (MNIST, Dirichlet alpha=0.5 label skew, the ``mlp`` model), 10 selected per round, the
``mixed`` network (conf/network/mixed.yaml: 50% good, 30% average, 10% poor, 10% unstable, round
deadline), the same seeds for every policy. Each policy runs the same in-process federated loop:
real PyTorch local training (fl_client.train.train) of every selected miner, then the network
simulator (fl_server.network_sim) decides on the virtual clock which replies arrived by the
deadline, FedAvg over those, and the test accuracy of the global model. Selection, feedback,
quarantine and local work caps go through fl_server.selection.SelectionController, the same code
the Flower strategy uses (the Flower path is covered by tests/fl_server/test_selection.py).

Training time is nominal (``nominal_seconds_per_example`` x examples, times the miner's speed
factor) so that the simulated wall time is deterministic per seed on a shared machine.

    .venv/bin/python scripts/bench_selection.py --quick --json outputs/bench_selection.json

Prints time-to-target (simulated seconds) and final accuracy side by side; writes rows.json,
selection_<policy>.jsonl and accuracy_vs_time.png under --out (default outputs/bench_selection/<time>).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from torch.utils.data import TensorDataset  # noqa: E402

from aggregator.datasets import get_spec, normalize  # noqa: E402
from aggregator.models import ModelSpec, build_model, flatten_state, num_parameters, unflatten_like  # noqa: E402
from aggregator.torch_eval import evaluate, make_loader  # noqa: E402
from fl_client.data import load_local_data  # noqa: E402
from fl_client.train import TrainConfig, train  # noqa: E402
from fl_server.data_prep import PartitionConfig, is_prepared, miner_dir, prepare, server_test_path  # noqa: E402
from fl_server.evaluation import load_test_set  # noqa: E402
from fl_server.network_sim import NetworkConfig, NetworkSim  # noqa: E402
from fl_server.selection import ReplyFacts, SelectionController, build_local_work, build_selector  # noqa: E402

# (label, conf/selection file, local work on, extra selection settings)
POLICIES: tuple[tuple[str, str, bool, dict[str, Any]], ...] = (
    ("random", "random", False, {}),
    ("oort", "oort", False, {}),
    ("oort_reputation", "oort_reputation", False, {}),
    ("oort_reputation+local_work", "oort_reputation", True, {}),
    ("random+overcommit", "random", False, {"overcommit": 1.3}),  # how much is over-selection alone
)


def load_federation(args: argparse.Namespace) -> tuple[list[Any], Any, ModelSpec]:
    root = Path(args.data_root)
    part = PartitionConfig(dataset=args.dataset, num_miners=args.miners, partition="dirichlet", alpha=args.alpha,
                           seed=args.seed, max_samples_per_miner=args.max_samples)
    if not is_prepared(root, part):
        print(f"setup: writing {args.miners} partitions ({part.tag}) under {root}")
        prepare(root, part)
    miners = [load_local_data(miner_dir(root, part, i), args.dataset).train for i in range(args.miners)]
    images, labels = load_test_set(server_test_path(root, args.dataset))
    test = TensorDataset(torch.from_numpy(normalize(images, get_spec(args.dataset))), torch.from_numpy(labels))
    ds = get_spec(args.dataset)
    spec = ModelSpec("mlp", {"in_channels": ds.in_channels, "image_size": ds.image_size, "num_classes": ds.num_classes})
    return miners, make_loader(test, 2000, shuffle=False), spec


def run_policy(label: str, policy: str, local_work: bool, extra: dict[str, Any], args: argparse.Namespace,
               miners: list[Any], test_loader: Any, spec: ModelSpec, out: Path) -> dict[str, Any]:
    sel_cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "selection" / f"{policy}.yaml"))
    sel_cfg.update(extra)  # type: ignore[union-attr]
    sel_cfg["per_round"] = args.per_round  # type: ignore[index]
    sel_cfg["local_work"] = {"enabled": local_work, "target": args.local_work_target, "safety": 0.9,  # type: ignore[index]
                             "min_steps": 1}
    net_cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "network" / f"{args.network}.yaml"))
    net_cfg.update(train_time="nominal", nominal_seconds_per_example=args.seconds_per_example)  # type: ignore[union-attr]
    if args.deadline is not None:
        net_cfg["deadline_s"] = args.deadline  # type: ignore[index]
    network = NetworkSim(NetworkConfig.from_mapping(net_cfg), len(miners), args.seed)  # type: ignore[arg-type]
    model = build_model(spec, seed=args.seed)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    model_bytes = 4 * num_parameters(model)
    controller = SelectionController(build_selector(sel_cfg, args.seed), network, build_local_work(sel_cfg), model_bytes)
    nodes = list(range(len(miners)))
    curve: list[dict[str, float]] = []
    _, acc0, _ = evaluate(model, test_loader)
    curve.append({"round": 0, "sim_time_s": 0.0, "accuracy": acc0})
    t0 = time.perf_counter()
    for r in range(1, args.rounds + 1):
        chosen = controller.select(nodes, r)
        caps = controller.work_caps()
        updates: dict[int, tuple[np.ndarray, int]] = {}
        facts = []
        for n in chosen:
            local = copy.deepcopy(model)
            local.load_state_dict(global_state)
            cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr=args.lr, momentum=0.9,
                              seed=args.seed * 100_003 + r, max_steps=caps.get(n, 0))
            res = train(local, make_loader(miners[n], cfg.batch_size, shuffle=True, seed=cfg.seed), cfg,
                        device=torch.device("cpu"))
            updates[n] = (flatten_state(local.state_dict()), res.num_examples)
            facts.append(ReplyFacts(n, True, res.seconds, model_bytes, res.loss, res.num_examples, res.steps))
        on_time = controller.arrive(r, facts)
        if on_time:
            total = sum(updates[n][1] for n in on_time)
            avg = sum(updates[n][0] * (updates[n][1] / total) for n in sorted(on_time))
            global_state = unflatten_like(np.asarray(avg, dtype=np.float32), global_state)
        controller.feedback(r, on_time)
        model.load_state_dict(global_state)
        _, acc, _ = evaluate(model, test_loader)
        curve.append({"round": r, "sim_time_s": network.clock.now_s, "accuracy": acc, "received": len(on_time),
                      "selected": len(chosen)})
    wall = time.perf_counter() - t0
    controller.write_jsonl(out / f"selection_{label.replace('+', '_')}.jsonl")
    hit = next((p for p in curve if p["accuracy"] >= args.target), None)
    recs = controller.stats.records.values()
    return {
        "policy": label,
        "target_accuracy": args.target,
        "time_to_target_s": None if hit is None else round(hit["sim_time_s"], 2),
        "rounds_to_target": None if hit is None else int(hit["round"]),
        "final_accuracy": round(float(np.mean([p["accuracy"] for p in curve[-3:]])), 4),
        "last_round_accuracy": round(curve[-1]["accuracy"], 4),
        "rounds": args.rounds,
        "sim_total_s": round(network.clock.now_s, 2),
        "mean_round_s": round(network.clock.now_s / args.rounds, 2),
        "timeouts": sum(rec.timeouts for rec in recs),
        "cut": sum(rec.cuts for rec in recs),
        "overcommit": float(sel_cfg.get("overcommit", 1.0)),  # type: ignore[union-attr]
        "distinct_miners": sum(1 for rec in recs if rec.selections > 0),
        "local_work": local_work,
        "bench_wall_s": round(wall, 1),
        "curve": curve,
    }


def plot(rows: list[dict[str, Any]], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        ax.plot([p["sim_time_s"] for p in row["curve"]], [p["accuracy"] for p in row["curve"]], label=row["policy"])
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    ax.set_xlabel("simulated wall time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title("selection policies, 50 miners, mixed network, Dirichlet 0.5")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds (about a minute)")
    p.add_argument("--json", type=Path, help="also write the result rows here")
    p.add_argument("--out", type=Path, help="output folder (default outputs/bench_selection/<time>)")
    p.add_argument("--miners", type=int, default=50)
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--rounds", type=int, default=0, help="rounds per policy (default 60, --quick 30)")
    p.add_argument("--target", type=float, default=0.90, help="target test accuracy")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--max-samples", type=int, default=0, help="cap per miner (0 = all of its share)")
    p.add_argument("--network", default="mixed", help="conf/network/<name>.yaml")
    p.add_argument("--deadline", type=float, default=None, help="override the network's round deadline (s)")
    p.add_argument("--seconds-per-example", type=float, default=0.002, help="nominal reference train time")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--local-work-target", choices=("deadline", "preferred"), default="preferred",
                   help="what capped local work must fit: the round deadline or the selector's preferred time T")
    p.add_argument("--data-root", default=str(REPO / "local_data"))
    p.add_argument("--policies", default=",".join(label for label, *_ in POLICIES))
    args = p.parse_args(argv)
    if not args.rounds:
        args.rounds = 30 if args.quick else 60
    wanted = args.policies.split(",")
    unknown = [w for w in wanted if w not in {label for label, *_ in POLICIES}]
    if unknown or args.per_round < 1 or args.miners < args.per_round or not 0 < args.target < 1:
        print(f"error: bad arguments (unknown policies {unknown}, or per_round/miners/target out of range); "
              f"policies: {[label for label, *_ in POLICIES]}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    out = args.out or REPO / "outputs" / "bench_selection" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    miners, test_loader, spec = load_federation(args)
    rows = []
    for label, policy, local_work, extra in POLICIES:
        if label not in wanted:
            continue
        row = run_policy(label, policy, local_work, extra, args, miners, test_loader, spec, out)
        rows.append(row)
        print(f"  {label}: time to target {row['time_to_target_s']} s (sim), final {row['final_accuracy']:.4f}, "
              f"mean round {row['mean_round_s']} s (sim), {row['timeouts']} timeouts; {row['bench_wall_s']} s real",
              flush=True)
        (out / "rows.json").write_text(json.dumps(rows, indent=2))
    base = next((r for r in rows if r["policy"] == "random"), None)
    print(f"\n{args.miners} miners, {args.per_round}/round, {args.network} network, Dirichlet {args.alpha}, "
          f"{args.rounds} rounds, target {args.target:.0%}")
    print(f"{'policy':<28} {'time to target (sim s)':>22} {'rounds':>7} {'speed-up':>9} {'final acc':>10} "
          f"{'mean round s':>12} {'timeouts':>9} {'miners used':>11}")
    for r in rows:
        tt = r["time_to_target_s"]
        speed = (base["time_to_target_s"] / tt if base and base["time_to_target_s"] and tt else math.nan)
        r["speedup_vs_random"] = None if math.isnan(speed) else round(speed, 2)
        print(f"{r['policy']:<28} {('-' if tt is None else f'{tt:.1f}'):>22} {str(r['rounds_to_target']):>7} "
              f"{('-' if math.isnan(speed) else f'{speed:.2f}x'):>9} {r['final_accuracy'] * 100:>9.2f}% "
              f"{r['mean_round_s']:>12.2f} {r['timeouts']:>9} {r['distinct_miners']:>11}")
    plot(rows, args.target, out / "accuracy_vs_time.png")
    (out / "rows.json").write_text(json.dumps(rows, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "curve"} for r in rows], indent=2))
    print(f"outputs: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
