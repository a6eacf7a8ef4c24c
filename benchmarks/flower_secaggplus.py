"""Flower's own SecAgg+ as a comparison baseline (DESIGN sections 2 and 8).

Same model, same private partitions, same local training settings as ``fl_server.experiment``, but
aggregated by Flower's SecAgg+ protocol, which Flower 1.41 only offers through its legacy API:

- server: ``LegacyContext`` + ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` driving a
  ``flwr.server.strategy.FedAvg`` (every miner every round, no federated evaluation) whose
  ``evaluate_fn`` scores the global model on our server test set after every round;
- miners: ``ClientApp(client_fn=..., mods=[secaggplus_mod])`` around a ``NumPyClient`` that trains
  with ``fl_client.train`` on the partition named by ``context.node_config["partition-id"]``.

What is measured per round (``rounds.json``/``rounds.csv`` keep the keys of our experiment):

- ``round_seconds``: wall time of the whole SecAgg+ fit round (its 4 stages: setup, share keys,
  collect masked vectors (the miners train here), unmask), server-side evaluation excluded, like our
  strategy's ``round_seconds``.
- ``upload_bytes_per_miner``: mean over miners of the bytes of every reply a miner sent the server in
  the round, over all 4 stages, counted on the server as ``sum(record.count_bytes())`` over the
  reply's records (the same count as Flower's ``message_size_mod``: array/bytes payloads plus
  the encoded size of config/metric values; gRPC framing and message metadata are not counted).
  ``masked_vector_bytes_per_miner`` is the dense masked vector alone (uint64 numpy buffers, as
  serialized by Flower), ``protocol_bytes_per_miner`` the rest (public keys, encrypted key shares,
  unmask shares, metrics).
- ``aggregate_seconds``: server compute in the 'collect masked vectors' and 'unmask' stages (summing
  the masked vectors, reconstructing secrets from shares, regenerating and removing masks,
  dequantizing, FedAvg's ``aggregate_fit``), i.e. those stages' wall time minus the time the server
  spent waiting in ``grid.send_and_receive`` (and minus our own byte counting).
  ``server_compute_seconds`` is the same over all 4 stages.
- ``accuracy``/``loss``: the global model on the server test set (``fl_server.evaluation``).

Quantization (documented in docs/benchmarks.md): each miner multiplies its weights by
``num_examples / max_weight`` and quantizes them in ``[-clipping_range, clipping_range]`` to
``quantization_range`` levels; the server divides by the summed ratios. We set ``max_weight`` to the
largest miner's number of training examples (so the ratio is at most 1 and nothing overflows),
``clipping_range = 8`` (the models' weights are far inside +-8) and ``quantization_range = 2**22``
(a step of 16 / 2**22 = 3.8e-6 before weighting), ``modulus_range = 2**32`` (room for 2**10 miners).
With these settings the aggregate equals plain FedAvg to ~1e-5, so accuracy is not affected.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggPlusKey
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from aggregator.models import ModelSpec, build_model, num_parameters
from fl_client.app import train_config as miner_train_config
from fl_client.data import load_local_data, make_loader
from fl_client.train import train
from fl_server.data_prep import PartitionConfig, miner_dir, server_test_path
from fl_server.evaluation import ServerEvaluator
from fl_server.experiment import ensure_partitions, model_spec, train_config
from fl_server.results import PeakMemory, RoundRecord, Stopwatch, run_summary, write_rounds, write_summary

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
log = logging.getLogger("modelmine")

# SecAgg+ settings of the baseline (see the module docstring and docs/benchmarks.md).
CLIPPING_RANGE = 8.0
QUANTIZATION_RANGE = 2**22
MODULUS_RANGE = 2**32
MASKED_PARAMETERS_KEY = str(SecAggPlusKey.MASKED_PARAMETERS)  # the reply field holding the masked vector


def secaggplus_shares(num_miners: int) -> tuple[int, int]:
    """(num_shares, reconstruction_threshold): every miner shares with all others (at most 5), majority needed."""
    shares = min(num_miners, 5)
    if shares < num_miners and shares % 2 == 0:
        shares += 1
    return shares, max(2, shares // 2 + 1)


# -- miners ------------------------------------------------------------------------------------


def _state_arrays(model: torch.nn.Module) -> list[np.ndarray]:
    return [v.detach().cpu().numpy() for v in model.state_dict().values()]


def _load_arrays(model: torch.nn.Module, arrays: list[np.ndarray]) -> None:
    keys = list(model.state_dict().keys())
    if len(keys) != len(arrays):
        raise ValueError(f"received {len(arrays)} arrays, model has {len(keys)} tensors")
    state = OrderedDict(
        (k, torch.from_numpy(np.asarray(a).copy())) for k, a in zip(keys, arrays, strict=True)
    )
    model.load_state_dict(state, strict=True)


def make_client_app() -> Any:
    """The miners' legacy ClientApp: a NumPyClient training with fl_client.train, wrapped by secaggplus_mod."""
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp

    class SecAggMiner(NumPyClient):
        """Trains the received global model on this miner's private partition."""

        def __init__(self, partition_id: int) -> None:
            self.partition_id = partition_id

        def fit(
            self, parameters: list[np.ndarray], config: dict[str, Any]
        ) -> tuple[list[np.ndarray], int, dict]:
            torch.set_num_threads(1)  # several miners per core in simulation
            folder = Path(str(config["data-root"])) / str(config["dataset"]) / str(config["partition-tag"])
            data = load_local_data(folder / f"miner_{self.partition_id}", str(config["dataset"]))
            model = build_model(ModelSpec.from_json(str(config["model-spec"])))
            _load_arrays(model, parameters)
            cfg = miner_train_config(config)  # the same settings as our ClientApp
            result = train(model, make_loader(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed), cfg)
            metrics = {"train-loss": result.loss, "train-seconds": result.seconds}
            return _state_arrays(model), result.num_examples, metrics

    def client_fn(context: Context) -> Any:
        return SecAggMiner(int(context.node_config["partition-id"])).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod])


# -- server measurements -------------------------------------------------------------------------


def reply_bytes(msg: Message) -> tuple[int, int]:
    """(all bytes, masked-vector bytes) of a reply's records, as Flower's message_size_mod counts them."""
    total = sum(record.count_bytes() for record in msg.content.values())
    masked = 0
    for record in msg.content.config_records.values():
        if MASKED_PARAMETERS_KEY in record:
            masked += sum(len(b) for b in record[MASKED_PARAMETERS_KEY])  # type: ignore[union-attr]
    return total, masked


class RoundMeter:
    """Per-round timings and reply bytes, filled by the instrumented grid and workflow."""

    def __init__(self) -> None:
        self.round = 0
        self.stage = ""
        self.wait: dict[str, float] = defaultdict(float)  # stage -> seconds in send_and_receive
        self.stage_seconds: dict[str, float] = {}
        self.bytes: dict[int, int] = defaultdict(int)
        self.masked: dict[int, int] = defaultdict(int)
        self.errors = 0

    def reset(self, server_round: int) -> None:
        self.__init__()  # type: ignore[misc]
        self.round = server_round

    def instrument(self, grid: Any) -> None:
        """Wrap ``grid.send_and_receive`` to time the waiting and count the bytes of every reply."""
        inner = grid.send_and_receive

        def send_and_receive(messages: Any, *, timeout: float | None = None) -> Any:
            t0 = time.perf_counter()
            replies = list(inner(messages, timeout=timeout))
            for reply in replies:
                if reply.has_error():
                    self.errors += 1
                    continue
                total, masked = reply_bytes(reply)
                self.bytes[reply.metadata.src_node_id] += total
                self.masked[reply.metadata.src_node_id] += masked
            self.wait[self.stage] += time.perf_counter() - t0
            return replies

        grid.send_and_receive = send_and_receive


def make_workflow(meter: RoundMeter, num_shares: int, threshold: int, max_weight: float) -> Any:
    """SecAggPlusWorkflow whose stages are timed into ``meter``."""
    from flwr.server.workflow import SecAggPlusWorkflow

    class TimedSecAggPlusWorkflow(SecAggPlusWorkflow):
        def __call__(self, grid: Any, context: Any) -> None:
            from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key

            meter.reset(int(context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND]))
            t0 = time.perf_counter()
            super().__call__(grid, context)
            meter.stage_seconds["round"] = time.perf_counter() - t0

        def _timed(self, name: str, stage: Any, grid: Any, context: Any, state: Any) -> bool:
            meter.stage = name
            t0 = time.perf_counter()
            ok = bool(stage(grid, context, state))
            meter.stage_seconds[name] = time.perf_counter() - t0
            return ok

        def setup_stage(self, grid: Any, context: Any, state: Any) -> bool:
            return self._timed("setup", super().setup_stage, grid, context, state)

        def share_keys_stage(self, grid: Any, context: Any, state: Any) -> bool:
            return self._timed("share_keys", super().share_keys_stage, grid, context, state)

        def collect_masked_vectors_stage(self, grid: Any, context: Any, state: Any) -> bool:
            return self._timed("collect", super().collect_masked_vectors_stage, grid, context, state)

        def unmask_stage(self, grid: Any, context: Any, state: Any) -> bool:
            return self._timed("unmask", super().unmask_stage, grid, context, state)

    return TimedSecAggPlusWorkflow(
        num_shares=num_shares,
        reconstruction_threshold=threshold,
        max_weight=max_weight,
        clipping_range=CLIPPING_RANGE,
        quantization_range=QUANTIZATION_RANGE,
        modulus_range=MODULUS_RANGE,
    )


def _max_train_examples(root: Path, part: PartitionConfig) -> int:
    counts = []
    for i in range(part.num_miners):
        manifest = json.loads((miner_dir(root, part, i) / "manifest.json").read_text())
        counts.append(int(manifest["train_samples"]))
    return max(counts)


# -- the run -------------------------------------------------------------------------------------


def run_secaggplus(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run Flower's SecAgg+ baseline for ``cfg`` and return the summary written to ``out_dir/summary.json``.

    Every miner is selected every round (SecAgg+ needs at least 2); ``cfg.selection`` is not used.
    """
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(str(cfg.log_level))
    warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
    console = Console(width=120)
    out_dir.mkdir(parents=True, exist_ok=True)
    root, part = ensure_partitions(cfg, console)
    if part.num_miners < 2:
        raise ValueError("SecAgg+ needs at least 2 miners")
    spec = model_spec(cfg)
    initial = build_model(spec, seed=int(cfg.seed))
    keys = list(initial.state_dict().keys())
    evaluator = ServerEvaluator(server_test_path(root, part.dataset), part.dataset, spec)
    fit_config: dict[str, Any] = dict(train_config(cfg, part, spec, root))
    num_shares, threshold = secaggplus_shares(part.num_miners)
    max_weight = float(_max_train_examples(root, part))

    evaluations: dict[int, tuple[float, float]] = {}
    train_stats: dict[int, tuple[float, float]] = {}
    meter = RoundMeter()
    records: list[RoundRecord] = []

    def evaluate_fn(server_round: int, arrays: list[np.ndarray], _config: dict) -> tuple[float, dict]:
        state = OrderedDict(
            (k, torch.from_numpy(np.asarray(a).copy())) for k, a in zip(keys, arrays, strict=True)
        )
        result = evaluator(server_round, ArrayRecord(state))
        evaluations[server_round] = (float(result["loss"]), float(result["accuracy"]))
        if server_round > 0:
            _record(server_round)
        return float(result["loss"]), {"accuracy": float(result["accuracy"])}

    def fit_metrics(results: list[tuple[int, dict]]) -> dict:
        total = sum(n for n, _ in results) or 1
        loss = sum(n * float(m.get("train-loss", 0.0)) for n, m in results) / total
        secs = float(np.mean([float(m.get("train-seconds", 0.0)) for _, m in results])) if results else 0.0
        train_stats[meter.round] = (loss, secs)
        return {"train-loss": loss}

    def on_fit_config(server_round: int) -> dict:
        return {**fit_config, "server-round": server_round}

    def _record(server_round: int) -> None:
        loss, accuracy = evaluations[server_round]
        received = len(meter.bytes)
        stages = meter.stage_seconds
        compute = {
            s: max(0.0, stages.get(s, 0.0) - meter.wait.get(s, 0.0))
            for s in ("setup", "share_keys", "collect", "unmask")
        }
        masked = float(np.mean(list(meter.masked.values()))) if meter.masked else 0.0
        upload = float(np.mean(list(meter.bytes.values()))) if meter.bytes else 0.0
        tl, ts = train_stats.get(server_round, (float("nan"), float("nan")))
        record = RoundRecord(
            round=server_round,
            accuracy=accuracy,
            loss=loss,
            round_seconds=stages.get("round", float("nan")),
            upload_bytes_per_miner=upload,
            selected=part.num_miners,
            received=received,
            aggregate_seconds=compute["collect"] + compute["unmask"],
            train_loss=tl,
            train_seconds_mean=ts,
            extra={
                "masked_vector_bytes_per_miner": masked,
                "protocol_bytes_per_miner": upload - masked,
                "server_compute_seconds": sum(compute.values()),
                **{
                    f"{s}_seconds": round(stages.get(s, 0.0), 4)
                    for s in ("setup", "share_keys", "collect", "unmask")
                },
            },
        )
        records.append(record)
        console.print(
            f"round {server_round:>3} | acc {accuracy * 100:6.2f}% | loss {loss:.4f} | {record.round_seconds:6.1f} s | "
            f"{upload / 1e3:8.1f} kB/miner | aggregate {record.aggregate_seconds:.3f} s (SecAgg+)"
        )

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=part.num_miners,
            min_evaluate_clients=0,
            min_available_clients=part.num_miners,
            evaluate_fn=evaluate_fn,
            on_fit_config_fn=on_fit_config,
            fit_metrics_aggregation_fn=fit_metrics,
            initial_parameters=ndarrays_to_parameters(_state_arrays(initial)),
        )
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=int(cfg.rounds)), strategy=strategy
        )
        meter.instrument(grid)
        DefaultWorkflow(fit_workflow=make_workflow(meter, num_shares, threshold, max_weight))(grid, legacy)

    first = evaluator(0, ArrayRecord(initial.state_dict()))
    first_loss, first_acc = float(first["loss"]), float(first["accuracy"])
    console.print(
        f"Flower SecAgg+ baseline: {part.num_miners} miners, {part.dataset} ({part.tag}), {spec.name} "
        f"({num_parameters(initial):,} parameters), {cfg.rounds} rounds, num_shares={num_shares}, "
        f"threshold={threshold}, max_weight={max_weight:.0f}; initial accuracy {first_acc * 100:.2f}%"
    )
    sim = cfg.simulation
    backend_config = {
        "client_resources": {"num_cpus": float(sim.cpus_per_miner), "num_gpus": float(sim.gpus_per_miner)},
        "init_args": {"num_cpus": int(sim.total_cpus) or os.cpu_count() or 1, "include_dashboard": False},
    }
    clock = Stopwatch()
    with PeakMemory() as memory:
        run_simulation(
            server_app=server_app,
            client_app=make_client_app(),
            num_supernodes=part.num_miners,
            backend_config=backend_config,  # type: ignore[arg-type]
        )
    wall = clock.elapsed()
    if len(records) < int(cfg.rounds):
        raise RuntimeError(
            f"SecAgg+ simulation ended after {len(records)} of {cfg.rounds} rounds; see the log above"
        )
    write_rounds(out_dir, records)
    summary = run_summary(
        records,
        first_acc,
        wall,
        memory,
        initial_loss=first_loss,
        num_miners=part.num_miners,
        dataset=part.dataset,
        partition=part.tag,
        model=spec.name,
    )
    summary |= {
        "parameters": num_parameters(initial),
        "secaggplus": {
            "num_shares": num_shares,
            "reconstruction_threshold": threshold,
            "max_weight": max_weight,
            "clipping_range": CLIPPING_RANGE,
            "quantization_range": QUANTIZATION_RANGE,
            "modulus_range": MODULUS_RANGE,
        },
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_summary(out_dir, summary)
    console.print(
        f"done (SecAgg+): final accuracy {summary['final_accuracy'] * 100:.2f}% after {len(records)} rounds, "
        f"{wall:.1f} s wall, peak memory {summary['peak_rss_mb']:.0f} MB (all processes). Outputs: {out_dir}"
    )
    return summary
