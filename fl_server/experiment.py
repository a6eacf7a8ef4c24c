"""One ModelMine experiment on Flower's simulation engine, driven by a Hydra config.

``run_experiment(cfg, out_dir)`` prepares the miners' partitions if needed, builds the initial
model, runs the ServerApp and N ClientApps through ``flwr.simulation.run_simulation``, prints a
per-round table, and writes rounds.csv/json, summary.json and plots into ``out_dir``.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from aggregator.datasets import get_spec
from aggregator.dgc import DGCConfig
from aggregator.eip712 import Domain
from aggregator.models import ModelSpec, build_model, model_hash, num_parameters, state_to_bytes
from aggregator.secagg import AggregatorKeys, PublisherKeys
from fl_client.identity import create_identity
from fl_server.api import attach_dashboard
from fl_server.chain_round import ChainSession, open_session
from fl_server.data_prep import REPO_ROOT, PartitionConfig, is_prepared, miner_dir, prepare, server_test_path
from fl_server.evaluation import ServerEvaluator
from fl_server.key_service import PublisherKeyService, new_credential
from fl_server.registry import MinerRegistry
from fl_server.results import (
    PeakMemory,
    RoundRecord,
    Stopwatch,
    plot_rounds,
    run_summary,
    write_rounds,
    write_summary,
)
from fl_server import secaggplus_round
from fl_server.secure_aggregation import SecureRound, SecureSettings
from fl_server.selection import RandomSelector
from fl_server.strategy import ModelMineStrategy, ServerOptimizer

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
log = logging.getLogger("modelmine")


def data_root(cfg: DictConfig) -> Path:
    root = Path(str(cfg.data_root))
    return root if root.is_absolute() else REPO_ROOT / root


def partition_config(cfg: DictConfig) -> PartitionConfig:
    return PartitionConfig(
        dataset=str(cfg.dataset.name),
        num_miners=int(cfg.num_miners),
        partition=str(cfg.dataset.partition),
        alpha=float(cfg.dataset.alpha),
        seed=int(cfg.seed),
        max_samples_per_miner=int(cfg.dataset.max_samples_per_miner),
    )


def ensure_partitions(cfg: DictConfig, console: Console) -> tuple[Path, PartitionConfig]:
    """The data root and partitioning of ``cfg``; writes missing partitions when ``auto_prepare``."""
    root = data_root(cfg)
    part = partition_config(cfg)
    if not is_prepared(root, part):
        if not cfg.auto_prepare:
            raise FileNotFoundError(
                f"no partitions for {part.tag} under {root}. Fix: python scripts/prepare_data.py "
                f"--dataset {part.dataset} --miners {part.num_miners} --partition {part.partition}"
            )
        console.print(f"setup: writing {part.num_miners} private partitions ({part.tag}) under {root}")
        prepare(root, part)
    return root, part


def model_spec(cfg: DictConfig) -> ModelSpec:
    """The task's model; input shape and classes come from the data set unless set explicitly."""
    ds = get_spec(str(cfg.dataset.name))
    kwargs: dict[str, Any] = {"in_channels": ds.in_channels, "image_size": ds.image_size, "num_classes": ds.num_classes}
    kwargs.update(OmegaConf.to_container(cfg.model.kwargs, resolve=True) or {})  # type: ignore[arg-type]
    return ModelSpec(str(cfg.model.name), kwargs)


def train_config(cfg: DictConfig, part: PartitionConfig, spec: ModelSpec, root: Path) -> ConfigRecord:
    t = cfg.task.train
    return ConfigRecord(
        {
            "dataset": part.dataset,
            "partition-tag": part.tag,
            "data-root": str(root),
            "model-spec": spec.to_json(),
            "epochs": int(t.epochs),
            "batch-size": int(t.batch_size),
            "lr": float(t.lr),
            "optimizer": str(t.optimizer),
            "momentum": float(t.momentum),
            "weight-decay": float(t.weight_decay),
            "seed": int(cfg.seed),
        }
    )


def secure_mode(cfg: DictConfig) -> bool:
    """Dense plaintext FedAvg only for ``secagg=none dgc.enabled=false``; everything else is a secure round."""
    return str(cfg.secagg.backend) != "none" or bool(cfg.dgc.enabled)


def dgc_config(cfg: DictConfig) -> DGCConfig:
    g = cfg.dgc
    if not g.enabled:  # secure aggregation of the whole update: every coordinate, every round
        return DGCConfig(density=1.0, momentum=0.0, warmup_rounds=0, support="shared")
    return DGCConfig(
        density=float(g.density),
        momentum=float(g.momentum),
        clip_norm=None if g.clip_norm is None else float(g.clip_norm),
        momentum_masking=bool(g.momentum_masking),
        warmup_rounds=int(g.warmup_rounds),
        warmup_start=float(g.warmup_start),
        warmup_factor=float(g.warmup_factor),
        support=str(g.support),  # type: ignore[arg-type]
    )


def layer_sizes(model: torch.nn.Module) -> tuple[int, ...]:
    """Lengths of the model's tensors in the flattened order (sorted state-dict keys)."""
    state = model.state_dict()
    return tuple(state[k].numel() for k in sorted(state))


def build_secure_round(
    cfg: DictConfig, part: PartitionConfig, root: Path, initial: torch.nn.Module
) -> tuple[SecureRound, ChainSession | None]:
    """Keys of the simulated parties, the miners' registry, the publisher's key service and, with a
    chain, the published task (miners registered on chain, the registry read back from it)."""
    folders = [miner_dir(root, part, i) for i in range(part.num_miners)]
    for folder in folders:  # simulation set-up: each miner gets its own keys in its own folder
        if not (folder / "keys" / "public.json").exists():
            create_identity(folder)
    backend = str(cfg.secagg.backend)
    publisher = PublisherKeys.generate()
    aggregator_keys = AggregatorKeys.generate()
    session: ChainSession | None = None
    task_id, domain = int(cfg.task.id), Domain(int(cfg.task.chain_id), "0x" + "00" * 20)
    if str(cfg.chain.backend) != "none":
        session = open_session(
            cfg.chain,
            model_hash=model_hash(state_to_bytes(initial.state_dict())),
            publisher_key=publisher.public,
            aggregator_key=aggregator_keys.public,
            rounds=int(cfg.rounds),
            dataset=part.dataset,
            miner_folders=folders,
            target_bps=int(round(float(cfg.task.target_accuracy) * 10_000)),
            tolerance=float(cfg.task.vote_tolerance),
        )
        registry = session.registry()
        task_id, domain = session.task_id, session.domain
    else:
        registry = MinerRegistry.from_miner_folders(folders)
    credential = new_credential()
    service = PublisherKeyService(backend, publisher, credential, registry.key_of, int(cfg.secagg.bits))
    settings = SecureSettings(
        backend=backend,
        bits=int(cfg.secagg.bits),
        clip=float(cfg.secagg.clip),
        dgc=dgc_config(cfg),
        explore_fraction=float(cfg.dgc.explore_fraction),
        task_id=task_id,
        domain=domain,
        train_on_support=bool(cfg.dgc.train_on_support),
        layer_sizes=layer_sizes(initial) if str(cfg.dgc.allocation) == "layer" else None,
    )
    secure = SecureRound(
        settings, num_parameters(initial), registry, service, credential, publisher.public, aggregator_keys.public
    )
    return secure, session


def _table_line(r: RoundRecord) -> str:
    line = (
        f"round {r.round:>3} | acc {r.accuracy * 100:6.2f}% | loss {r.loss:.4f} | {r.round_seconds:6.1f} s | "
        f"{r.upload_bytes_per_miner / 1e3:8.1f} kB/miner | {r.received}/{r.selected} miners"
    )
    if "chain_status" in r.extra:
        e = r.extra
        line += f" | {e['chain_status']} {e['votes_accept']} | {e['rewards_eth']:.4f} ETH | {e['gas']:,} gas"
    return line


def run_experiment(cfg: DictConfig, out_dir: Path, client_app: ClientApp | None = None) -> dict[str, Any]:
    """Run the configured experiment end to end and return the summary written to summary.json.

    ``client_app`` replaces the miners' app (tests use it to put a misbehaving miner in the federation).
    """
    from flwr.simulation import run_simulation

    if client_app is None:
        from fl_client.app import app as client_app

    logging.getLogger("flwr").setLevel(str(cfg.log_level))
    warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
    warnings.filterwarnings("ignore", category=ResourceWarning)
    console = Console(width=160)
    out_dir.mkdir(parents=True, exist_ok=True)
    attach_dashboard(cfg, out_dir)  # run database (+ REST API and live dashboard with dashboard=true)
    root, part = ensure_partitions(cfg, console)
    spec = model_spec(cfg)
    initial = build_model(spec, seed=int(cfg.seed))
    evaluator = ServerEvaluator(server_test_path(root, part.dataset), part.dataset, spec)
    initial_arrays = ArrayRecord(initial.state_dict())
    first = evaluator(0, initial_arrays)
    console.print(
        f"ModelMine: {part.num_miners} miners, {part.dataset} ({part.tag}), {spec.name} "
        f"secagg={cfg.secagg.backend} dgc={'on' if cfg.dgc.enabled else 'off'}, "
        f"({num_parameters(initial):,} parameters), {cfg.rounds} rounds; initial accuracy "
        f"{float(first['accuracy']) * 100:.2f}%"
    )

    sel = cfg.selection
    progress = Progress(TextColumn("[bold]rounds"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), console=console, transient=False)
    bar = progress.add_task("rounds", total=int(cfg.rounds))

    def on_round(record: RoundRecord) -> None:
        progress.console.print(_table_line(record))
        progress.advance(bar)

    secure, session = build_secure_round(cfg, part, root, initial) if secure_mode(cfg) else (None, None)
    secaggplus = None
    if secure is not None and str(cfg.secagg.backend) == "secaggplus":  # no key service: SecAgg+ stages
        secaggplus = secaggplus_round.from_config(cfg.secagg, secure, int(cfg.seed), int(cfg.selection.per_round) or int(cfg.num_miners))
    if session is not None:
        console.print(f"chain {cfg.chain.backend}: task {session.task_id} published on {session.client.address}")
    strategy = ModelMineStrategy(
        selector=RandomSelector(per_round=int(sel.per_round), min_available=int(sel.min_available), seed=int(cfg.seed)),
        server_optimizer=ServerOptimizer(lr=float(cfg.strategy.server_lr), momentum=float(cfg.strategy.server_momentum)),
        on_round=on_round,
        min_replies=int(cfg.strategy.min_replies),
        secure=secure,
        chain=session,
        secaggplus=secaggplus,
    )
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        strategy.start(
            grid=grid,
            initial_arrays=initial_arrays,
            num_rounds=int(cfg.rounds),
            timeout=float(cfg.strategy.round_timeout_s),
            train_config=train_config(cfg, part, spec, root),
            evaluate_fn=evaluator,
        )

    sim = cfg.simulation
    backend_config = {
        "client_resources": {"num_cpus": float(sim.cpus_per_miner), "num_gpus": float(sim.gpus_per_miner)},
        "init_args": {"num_cpus": int(sim.total_cpus) or os.cpu_count() or 1, "include_dashboard": False},
    }
    clock = Stopwatch()
    warnings.simplefilter("ignore", ResourceWarning)  # Ray's log files, eth-tester resets filters
    with PeakMemory() as memory, progress:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=part.num_miners,
            backend_config=backend_config,  # type: ignore[arg-type]
        )
    wall = clock.elapsed()
    records = strategy.records
    chain_summary = None
    if session is not None:
        chain_summary = session.finish(sorted(session.registry().secagg_keys))
        session.client.chain.close()
    if len(records) < int(cfg.rounds):
        raise RuntimeError(f"simulation ended after {len(records)} of {cfg.rounds} rounds; see the log above")
    write_rounds(out_dir, records)
    plot_rounds(out_dir, records, (float(first["loss"]), float(first["accuracy"])), f"{part.dataset} {part.tag}")
    summary = run_summary(
        records,
        float(first["accuracy"]),
        wall,
        memory,
        num_miners=part.num_miners,
        dataset=part.dataset,
        partition=part.tag,
        model=spec.name,
    )
    summary |= {
        "secagg": str(cfg.secagg.backend),
        "dgc": bool(cfg.dgc.enabled),
        "mean_upload_bytes_per_miner": sum(r.upload_bytes_per_miner for r in records) / len(records),
        "parameters": num_parameters(initial),
        "rejected_replies": len(strategy.rejections),
        "chain": chain_summary,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_summary(out_dir, summary)
    if chain_summary:
        console.print(
            f"chain: task {chain_summary['task_id']}: {chain_summary['finalized_rounds']} rounds finalized, "
            f"{chain_summary['miner_rewards_total_eth']:.4f} ETH owed to miners (pull with claim)"
        )
    console.print(
        f"done: final accuracy {summary['final_accuracy'] * 100:.2f}% after {len(records)} rounds, "
        f"{wall:.1f} s wall, peak memory {summary['peak_rss_mb']:.0f} MB (all processes). Outputs: {out_dir}"
    )
    return summary
