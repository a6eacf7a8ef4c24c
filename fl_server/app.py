"""ModelMine's Flower ServerApp: the ``serverapp`` component (``fl_server.app:app``) of the Flower App
declared in pyproject.toml. ``flwr run . local-simulation`` / ``local-deployment`` and the Hydra front
door (``python -m fl_server``, which starts a run through ``flwr run``) all land here.

One source of settings: the run config carries Hydra overrides and this module composes ``conf/``
with Hydra's compose API, exactly as ``python -m fl_server <overrides>`` does.

Run config (``[tool.flwr.app.config]``, override with ``flwr run ... --run-config 'key="value"'``):

- ``overrides``: Hydra overrides, one shell-quoted string, e.g. ``"dataset=digits model=mlp rounds=2"``;
- ``run-dir``: folder for rounds.csv/json, summary.json, plots and the checkpoint ("" = a fresh
  ``outputs/flwr/<date>/<time>`` under the project);
- deployment settings passed by scripts/local_network.py (empty = unused), available to the server as
  ``cfg.deployment.<key with underscores>``: ``chain-rpc-url``, ``contract-address``, ``task-id``,
  ``aggregator-key-file``, ``model-store-url``, ``key-service-url``.

Per run the ServerApp: checks the config (fl_server.config_check), writes missing partitions in
simulation, waits for ``num_miners`` nodes, has every miner register itself (fl_server.enrollment),
opens the chain session, runs the rounds (fl_server.strategy), checkpoints after every finalized
round (fl_server.checkpoint), and writes the outputs into the run folder, where the front door reads
them back.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig, OmegaConf

from aggregator.datasets import get_spec
from aggregator.dgc import DGCConfig
from aggregator.eip712 import Domain
from aggregator.key_issuer import ChainCommitments, UnverifiedCommitments
from aggregator.models import ModelSpec, build_model, model_hash, num_parameters, state_to_bytes
from fl_server import secaggplus_round
from fl_server.chain_round import ChainSession, open_session
from fl_server.checkpoint import Checkpoint, CheckpointStore, ServerSecrets
from fl_server.config_check import ConfigError, check_config
from fl_server.data_prep import REPO_ROOT, PartitionConfig, is_prepared, prepare, server_test_path
from fl_server.deployment import attach as attach_deployment
from fl_server.deployment import enabled as deployment_enabled
from fl_server.enrollment import collect_registrations, enroll
from fl_server.evaluation import ServerEvaluator
from fl_server.key_service import PublisherKeyService, RemoteKeyService
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
from fl_server.secaggplus_round import SecAggPlusRound
from fl_server.secure_aggregation import SecureRound, SecureSettings, trust_task_in_simulation
from fl_server.selection import build_selection
from fl_server.strategy import ModelMineStrategy, ServerOptimizer

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
DEPLOYMENT_KEYS = (
    "chain-rpc-url", "contract-address", "task-id", "aggregator-key-file", "model-store-url", "key-service-url",
)
log = logging.getLogger("modelmine")

app = ServerApp()


# -- settings ---------------------------------------------------------------------------------------
def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/config.yaml`` with Hydra ``overrides`` applied (the same composition as the front door)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=list(overrides))
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config_name="config", overrides=list(overrides))


def overrides_from_run_config(run_config: dict[str, Any]) -> list[str]:
    """Hydra overrides of a run: the ``overrides`` string plus the non-empty deployment keys."""
    overrides = shlex.split(str(run_config.get("overrides", "") or ""))
    for key in DEPLOYMENT_KEYS:
        value = str(run_config.get(key, "") or "")
        if value:
            overrides.append(f"deployment.{key.replace('-', '_')}={value}")
    return overrides


def default_run_dir() -> Path:
    return REPO_ROOT / "outputs" / "flwr" / time.strftime("%Y-%m-%d") / time.strftime("%H-%M-%S")


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


def ensure_partitions(cfg: DictConfig, console: Any = None) -> tuple[Path, PartitionConfig]:
    """The data root and partitioning of ``cfg``; writes missing partitions when ``auto_prepare``."""
    root = data_root(cfg)
    part = partition_config(cfg)
    if not is_prepared(root, part):
        if not cfg.auto_prepare:
            raise FileNotFoundError(
                f"no partitions for {part.tag} under {root}. Fix: python scripts/prepare_data.py "
                f"--dataset {part.dataset} --miners {part.num_miners} --partition {part.partition}"
            )
        log.info("setup: writing %d private partitions (%s) under %s", part.num_miners, part.tag, root)
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
            **locator_config(part, root),
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


def locator_config(part: PartitionConfig, root: Path) -> dict[str, Any]:
    """Where a simulated miner finds its folder (deployment miners use their node config's data-dir)."""
    return {"dataset": part.dataset, "partition-tag": part.tag, "data-root": str(root)}


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


# -- hooks for the other parts (one place each) ------------------------------------------------------
def build_selector(cfg: DictConfig, download_bytes: int = 0) -> Any:
    """The selection policy of ``cfg.selection`` with the simulated network of ``cfg.network``
    (a fl_server.selection.SelectionController; docs/selection.md)."""
    return build_selection(cfg, download_bytes)


def attach_observers(cfg: DictConfig, run_dir: Path) -> Any:
    """Run database / dashboard for this run (dashboard helper's fl_server.api), if available."""
    try:
        from fl_server.api import attach_dashboard
    except ImportError:
        return None
    return attach_dashboard(cfg, run_dir)


def build_secaggplus(cfg: DictConfig, secure: SecureRound | None) -> SecAggPlusRound | None:
    """The SecAgg+ stage driver when ``secagg=secaggplus`` (fl_server/secaggplus_round.py), else None."""
    if secure is None or str(cfg.secagg.backend) != "secaggplus":
        return None
    per_round = int(cfg.selection.per_round) or int(cfg.num_miners)
    return secaggplus_round.from_config(cfg.secagg, secure, int(cfg.seed), per_round)


def build_secure_round(
    cfg: DictConfig, initial: torch.nn.Module, registry: MinerRegistry, session: ChainSession | None,
    secrets: ServerSecrets,
) -> SecureRound:
    """The server's half of secure rounds for ``cfg.secagg.backend`` (secagg helpers: extend here)."""
    backend = str(cfg.secagg.backend)
    task_id, domain = int(cfg.task.id), Domain(int(cfg.task.chain_id), "0x" + "00" * 20)
    if session is not None:
        task_id, domain = session.task_id, session.domain
    threshold = int(cfg.secagg.get("threshold", 2))  # t of the task (secagg-hardening)
    # the set I and the open epoch come from the chain's commitments when there is a chain
    commitments = ChainCommitments(session.client) if session is not None else UnverifiedCommitments()
    service = None if backend == "secaggplus" else PublisherKeyService(  # SecAgg+ has no key service
        backend, secrets.publisher, secrets.credential, registry.key_of, int(cfg.secagg.bits), threshold, commitments
    )
    key_service_url = str(cfg.deployment.get("key_service_url", "") or "")
    if service is not None and key_service_url:  # deployment: the publisher's own process (scripts/key_service.py)
        service = RemoteKeyService(key_service_url, secrets.credential, ca_file=os.environ.get("MODELMINE_KEY_SERVICE_CA"))
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
        threshold=threshold,
    )
    secure = SecureRound(
        settings, num_parameters(initial), registry, service, secrets.credential,
        secrets.publisher.public, secrets.aggregator_keys.public,
    )
    if not str(cfg.deployment.get("key_service_url", "") or ""):  # simulation: we are every miner's operator too
        trust_task_in_simulation(data_root(cfg), partition_config(cfg), secure.task_spec)
    return secure


def open_chain(
    cfg: DictConfig, initial: torch.nn.Module, part: PartitionConfig, secrets: ServerSecrets,
    resume_from: Checkpoint | None,
) -> ChainSession | None:
    """Publish the task on chain (or, when resuming, re-attach to the checkpoint's task)."""
    if str(cfg.chain.backend) == "none":
        return None
    if resume_from is not None and resume_from.chain is not None:
        return secrets.reattach(cfg.chain, resume_from.chain, float(cfg.task.vote_tolerance))
    session = open_session(
        cfg.chain,
        model_hash=model_hash(state_to_bytes(initial.state_dict())),
        publisher_key=secrets.publisher.public,
        aggregator_key=secrets.aggregator_keys.public,
        rounds=int(cfg.rounds),
        dataset=part.dataset,
        miner_folders=[],  # miners register themselves (fl_server.enrollment)
        target_bps=int(round(float(cfg.task.target_accuracy) * 10_000)),
        tolerance=float(cfg.task.vote_tolerance),
        # the round settings fixed in the task on chain (rules v2): support size cap k = d, bits, clip, backend, t
        support_k=num_parameters(initial),
        bits=int(cfg.secagg.bits),
        clip=float(cfg.secagg.clip),
        secagg_backend=str(cfg.secagg.backend),
        support_mode=str(cfg.dgc.support),
        threshold=int(cfg.secagg.get("threshold", 2)),
    )
    secrets.remember_session(session)
    return session


def table_line(r: RoundRecord) -> str:
    line = (
        f"round {r.round:>3} | acc {r.accuracy * 100:6.2f}% | loss {r.loss:.4f} | {r.round_seconds:6.1f} s | "
        f"{r.upload_bytes_per_miner / 1e3:8.1f} kB/miner | {r.received}/{r.selected} miners"
    )
    if "chain_status" in r.extra:
        e = r.extra
        line += f" | {e['chain_status']} {e['votes_accept']} | {e['rewards_eth']:.4f} ETH | {e['gas']:,} gas"
    return line


def setup_logging(cfg: DictConfig) -> None:
    """``modelmine`` logs at INFO to stdout (streamed by ``flwr run``); Flower's own at ``cfg.log_level``."""
    logging.getLogger("flwr").setLevel(str(cfg.log_level))
    ours = logging.getLogger("modelmine")
    ours.setLevel(logging.INFO)
    if not any(getattr(h, "_modelmine", False) for h in ours.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._modelmine = True  # type: ignore[attr-defined]
        ours.addHandler(handler)
        ours.propagate = False


def wait_for_nodes(grid: Grid, count: int, timeout: float, minimum: int | None = None) -> list[int]:
    """The connected nodes once ``count`` are there; after ``timeout`` seconds, those present if at least
    ``minimum`` (default ``count``), else an error naming the fix."""
    deadline = time.monotonic() + timeout
    minimum = count if minimum is None else max(1, min(minimum, count))
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            if len(nodes) >= minimum:
                log.warning("%d of num_miners=%d miners connected within %.0f s; going on with them", len(nodes), count, timeout)
                return nodes
            raise RuntimeError(
                f"only {len(nodes)} of num_miners={count} miners connected within {timeout:.0f} s "
                "(simulation: set the federation's num-supernodes to num_miners)"
            )
        time.sleep(1.0)


# -- the run -----------------------------------------------------------------------------------------
def serve(grid: Grid, cfg: DictConfig, run_dir: Path, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the configured task on ``grid`` end to end; write the outputs into ``run_dir``; return the summary."""
    setup_logging(cfg)
    warnings.simplefilter("ignore", ResourceWarning)  # Ray's log files; eth-tester resets the filters
    check_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    attach_observers(cfg, run_dir)
    root, part = ensure_partitions(cfg)
    spec = model_spec(cfg)
    initial = build_model(spec, seed=int(cfg.seed))
    evaluator = ServerEvaluator(server_test_path(root, part.dataset), part.dataset, spec)
    store = CheckpointStore(Path(str(cfg.checkpoint)) if str(cfg.checkpoint or "") else run_dir / "checkpoint")
    resume_from = store.load() if bool(cfg.resume) or str(cfg.checkpoint or "") else None
    if bool(cfg.resume) and resume_from is None:
        log.warning("resume=true but no checkpoint in %s: starting from round 1", store.folder)
    first_eval = evaluator(0, ArrayRecord(initial.state_dict()))
    initial_accuracy = float(first_eval["accuracy"])
    records: list[RoundRecord] = []
    start_state = initial.state_dict()
    if resume_from is not None:
        start_state = resume_from.model
        records = resume_from.records
        initial_accuracy = resume_from.initial_accuracy
        echo(f"resume: from the checkpoint of round {resume_from.round} in {store.folder}")
    echo(
        f"ModelMine: {part.num_miners} miners, {part.dataset} ({part.tag}), {spec.name} "
        f"secagg={cfg.secagg.backend} dgc={'on' if cfg.dgc.enabled else 'off'}, "
        f"({num_parameters(initial):,} parameters), {cfg.rounds} rounds; initial accuracy {initial_accuracy * 100:.2f}%"
    )
    secrets = ServerSecrets.load_or_create(run_dir / "server_keys", resume=resume_from is not None)
    deployment = None
    if deployment_enabled(cfg):  # a task published by someone else (scripts/local_network.py, docs/network.md)
        deployment = attach_deployment(cfg, initial.state_dict(), float(cfg.task.vote_tolerance))
        secrets = deployment.secrets  # type: ignore[assignment]  # no publisher secret in this process
    nodes = wait_for_nodes(grid, int(cfg.num_miners), float(cfg.strategy.round_timeout_s),
                           minimum=int(cfg.selection.min_available) or int(cfg.num_miners))
    timeout = float(cfg.strategy.round_timeout_s)
    regs = collect_registrations(grid, nodes, locator_config(part, root), int(cfg.task.chain_id), "", timeout)
    session = deployment.session if deployment is not None else open_chain(cfg, initial, part, secrets, resume_from)
    if session is not None:
        echo(f"chain {cfg.chain.backend}: task {session.task_id} on {session.client.address}")
    registry = enroll(
        grid, regs, locator_config(part, root), session=session,
        stake_wei=int(cfg.chain.get("stake_wei", 0) or 0), timeout=timeout,
        fund_dev_accounts=deployment is None and session is not None and bool(session.client.chain.cfg.is_dev),
    )
    secure = build_secure_round(cfg, initial, registry, session, secrets) if secure_mode(cfg) else None
    if deployment is not None and secure is not None:
        deployment.pin(secure)  # announce exactly the published spec (miners trust only its hash)
    strategy = ModelMineStrategy(
        selector=build_selector(cfg, download_bytes=4 * num_parameters(initial)),
        server_optimizer=ServerOptimizer(lr=float(cfg.strategy.server_lr), momentum=float(cfg.strategy.server_momentum)),
        min_replies=int(cfg.strategy.min_replies),
        secure=secure,
        chain=session,
        secaggplus=build_secaggplus(cfg, secure),
    )
    if deployment is not None:
        strategy.candidate_sink = deployment.upload_candidate  # voters and auditors fetch what is on chain
    if resume_from is not None:
        resume_from.restore(strategy, secure)
    crash_after = int(cfg.debug.crash_after_round)

    def on_round(record: RoundRecord) -> None:
        echo(table_line(record))
        records.append(record)
        write_rounds(run_dir, records)
        strategy.selection.write_jsonl(run_dir / "selection.jsonl")  # who was selected, why, who was skipped
        finalized = record.extra.get("chain_status", "finalized") == "finalized" and not record.extra.get("failed")
        if finalized:
            store.save(Checkpoint.capture(strategy, secure, record.round, records, initial_accuracy, session))
        if crash_after and record.round == crash_after:
            raise RuntimeError(f"debug.crash_after_round={crash_after}: simulated server crash")

    strategy.on_round = on_round
    clock = Stopwatch()
    first_round = (resume_from.round + 1) if resume_from is not None else 1
    with PeakMemory() as memory:
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(start_state),
            num_rounds=int(cfg.rounds),
            timeout=float(cfg.strategy.round_timeout_s),
            train_config=train_config(cfg, part, spec, root),
            evaluate_fn=evaluator,
            first_round=first_round,
        )
    wall = clock.elapsed()
    chain_summary = None
    if session is not None:
        chain_summary = session.finish(sorted(registry.secagg_keys))
    if len(records) < int(cfg.rounds):
        raise RuntimeError(f"the run ended after {len(records)} of {cfg.rounds} rounds; see the log above")
    plot_rounds(run_dir, records, (float(first_eval["loss"]), initial_accuracy), f"{part.dataset} {part.tag}")
    summary = run_summary(
        records, initial_accuracy, wall, memory,
        num_miners=part.num_miners, dataset=part.dataset, partition=part.tag, model=spec.name,
    )
    summary |= {
        "secagg": str(cfg.secagg.backend),
        "dgc": bool(cfg.dgc.enabled),
        "mean_upload_bytes_per_miner": sum(r.upload_bytes_per_miner for r in records) / len(records),
        "parameters": num_parameters(initial),
        "rejected_replies": len(strategy.rejections) + (resume_from.rejected if resume_from else 0),
        "resumed_from_round": resume_from.round if resume_from else None,
        "final_model_hash": "0x" + model_hash(state_to_bytes(strategy._global or {})).hex(),
        "chain": chain_summary,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_summary(run_dir, summary)
    if chain_summary:
        echo(
            f"chain: task {chain_summary['task_id']}: {chain_summary['finalized_rounds']} rounds finalized, "
            f"{chain_summary['miner_rewards_total_eth']:.4f} ETH owed to miners (pull with claim)"
        )
    echo(
        f"done: final accuracy {summary['final_accuracy'] * 100:.2f}% after {len(records)} rounds, "
        f"{wall:.1f} s wall, peak memory {summary['peak_rss_mb']:.0f} MB (all processes). Outputs: {run_dir}"
    )
    return summary


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: compose the config from the run config and serve the run."""
    run_config = dict(context.run_config)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        cfg = compose_config(overrides_from_run_config(run_config))
    except Exception as exc:  # Hydra's own message names the bad override
        raise ConfigError(f"run config overrides: {exc}") from exc
    run_dir = Path(str(run_config.get("run-dir", "") or "")) if run_config.get("run-dir") else default_run_dir()
    try:
        serve(grid, cfg, run_dir, echo=lambda line: print(line, flush=True))
    except Exception as exc:
        run_dir.mkdir(parents=True, exist_ok=True)  # the launcher prints this as its one `error:` line
        (run_dir / "error.txt").write_text(f"{type(exc).__name__}: {exc}" if not isinstance(exc, ConfigError) else str(exc))
        raise
