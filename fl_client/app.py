"""The miner's Flower ClientApp: trains the received global model on private data and evaluates it.

Contract of the messages (keys of the ``config`` ConfigRecord sent by fl_server.strategy):
- ``dataset``, ``partition-tag``, ``data-root``: where this miner's partition lives (simulation);
  in deployment the node config's ``data-dir`` names the folder directly.
- ``model-spec``: JSON ``{"name", "kwargs"}`` (aggregator.models.ModelSpec).
- ``epochs``, ``batch-size``, ``lr``, ``optimizer``, ``momentum``, ``weight-decay``, ``seed``, ``server-round``;
  optional ``max-steps`` (local work cap set per miner by adaptive selection; replies report ``train-steps``).
With the ``mm-*`` keys of aggregator.protocol.RoundPlan the round is secure: the reply holds a
``submission`` ConfigRecord (ciphertext, commitment, EIP-712 signature) instead of weights.
Otherwise replies hold ``arrays`` (trained weights) and ``metrics`` with ``num-examples``, ``train-loss``,
``train-accuracy``, ``train-seconds`` (train) or ``num-examples``, ``eval-loss``, ``eval-accuracy``
(evaluate, on the miner's local validation split).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from aggregator.models import (
    ModelSpec,
    build_model,
    flatten_state,
    load_state_checked,
    model_hash,
    state_to_bytes,
    unflatten_like,
)
from aggregator.protocol import RoundPlan, VoteRequest
from aggregator.registration import sign_register_tx, sign_registration
from fl_client import secaggplus_client
from fl_client.data import LocalData, load_local_data, make_loader
from fl_client.identity import load_identity, load_or_create_identity
from fl_client.secure_update import (
    MinerState,
    build_submission,
    cast_vote,
    node_binding,
    pinned_plan,
    trusted_task_hashes,
)
from fl_client.train import TrainConfig, evaluate, train

app = ClientApp()

_DATA_CACHE: dict[tuple[str, str], LocalData] = {}


def _threads(context: Context) -> None:
    # Simulation packs several miners per core; one intra-op thread each avoids oversubscription.
    torch.set_num_threads(int(context.node_config.get("num-threads", 1)))


def data_folder(config: ConfigRecord, context: Context) -> Path:
    """This miner's partition folder: the node config's ``data-dir``, else derived from its partition id."""
    if "data-dir" in context.node_config:
        return Path(str(context.node_config["data-dir"]))
    pid = int(context.node_config["partition-id"])
    return Path(str(config["data-root"])) / str(config["dataset"]) / str(config["partition-tag"]) / f"miner_{pid}"


def keys_folder(folder: Path, context: Context) -> Path:
    """This miner's key folder: the node config's ``key-dir`` (deployment: keys outside the data folder),
    else ``<data folder>/keys``."""
    if "key-dir" in context.node_config:
        return Path(str(context.node_config["key-dir"]))
    return folder / "keys"


def local_data(config: ConfigRecord, context: Context) -> LocalData:
    folder = data_folder(config, context)
    key = (str(folder), str(config["dataset"]))
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_local_data(folder, str(config["dataset"]))
    return _DATA_CACHE[key]


def received_model(msg: Message) -> torch.nn.Module:
    config = msg.content["config"]
    model = build_model(ModelSpec.from_json(str(config["model-spec"])))
    load_state_checked(model, msg.content["arrays"].to_torch_state_dict())
    return model


def train_config(config: ConfigRecord) -> TrainConfig:
    return TrainConfig(
        epochs=int(config["epochs"]),
        batch_size=int(config["batch-size"]),
        lr=float(config["lr"]),
        optimizer=str(config["optimizer"]),
        momentum=float(config["momentum"]),
        weight_decay=float(config["weight-decay"]),
        seed=int(config["seed"]) * 100_003 + int(config["server-round"]),
        max_steps=int(config.get("max-steps", 0)),  # the server's local work cap for this miner (0 = none)
    )


def checked_plan(config: ConfigRecord, context: Context) -> RoundPlan:
    """The round plan, pinned to the task spec this miner trusts (every crypto parameter equal to the
    spec's) and for an epoch above the last one it encrypted for; raises ProtocolError naming why."""
    plan = RoundPlan.from_config(config)
    folder = data_folder(config, context)
    pinned_plan(plan, trusted_task_hashes(folder, context.node_config))
    MinerState(folder, plan.task_key).check_epoch(plan)
    return plan


def secure_reply(msg: Message, context: Context, model: torch.nn.Module, global_flat: np.ndarray) -> RecordDict:
    """DGC + quantize + commit + encrypt + sign the update; the reply holds no plaintext weights."""
    config = msg.content["config"]
    plan = checked_plan(config, context)
    folder = data_folder(config, context)
    identity = load_identity(folder, keys_folder(folder, context))
    store = MinerState(folder, plan.task_key)
    store.claim_epoch(plan)  # durable before any ciphertext of this epoch exists
    state = store.load_dgc(plan)
    delta = flatten_state(model.state_dict()) - global_flat
    t0 = time.perf_counter()
    masker = secaggplus_client.masker(msg, context, plan) if plan.backend == "secaggplus" else None
    result = build_submission(delta, plan, identity, state, np.random.default_rng(), encrypt=masker)
    store.save_dgc(state)
    store.save_opening(plan.round, result.opening)
    metrics = {
        "k": result.k,
        "upload-bytes": result.submission.wire_bytes,
        "dense-bytes": result.dense_bytes,
        "protect-seconds": time.perf_counter() - t0,
    }
    return RecordDict(
        {
            "submission": ConfigRecord(result.submission.to_config()),
            "binding": ConfigRecord(node_binding(identity, plan, context.node_id)),  # type: ignore[arg-type]
            "metrics": MetricRecord(metrics),
        }
    )


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    _threads(context)
    config = msg.content["config"]
    data = local_data(config, context)
    model = received_model(msg)
    global_flat = flatten_state(model.state_dict())
    cfg = train_config(config)
    masks = None
    if "mm-version" in config:
        mask = checked_plan(config, context).grad_mask()
        if mask is not None:
            masks = unflatten_like(mask, model.state_dict())
    result = train(model, make_loader(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed), cfg, grad_masks=masks)
    train_metrics = {
        "num-examples": result.num_examples,
        "train-loss": result.loss,
        "train-accuracy": result.accuracy,
        "train-seconds": result.seconds,
        "train-steps": result.steps,
    }
    if "mm-version" in config:
        content = secure_reply(msg, context, model, global_flat)
        content["metrics"] = MetricRecord({**dict(content["metrics"]), **train_metrics})
    else:  # dense plaintext FedAvg (baselines)
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(train_metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    """Evaluate the received model on the local validation split; with ``mm-vote`` also vote on it
    (signed) and reveal this round's score (signed), as a participant of the round."""
    _threads(context)
    config = msg.content["config"]
    data = local_data(config, context)
    model = received_model(msg)
    loss, accuracy, n = evaluate(model, make_loader(data.val, 256, shuffle=False))
    metrics = MetricRecord({"num-examples": n, "eval-loss": loss, "eval-accuracy": accuracy})
    content = RecordDict({"metrics": metrics})
    if "mm-vote" in config:
        folder = data_folder(config, context)
        request = VoteRequest.from_config(config)
        weights_hash = model_hash(state_to_bytes(msg.content["arrays"].to_torch_state_dict()))
        signed = cast_vote(request, weights_hash, accuracy, load_identity(folder, keys_folder(folder, context)), MinerState(folder, request.task_key))
        content["vote"] = ConfigRecord(signed.to_config())
    return Message(content=content, reply_to=msg)


@app.query("secaggplus")
def secaggplus_handler(msg: Message, context: Context) -> Message:
    """SecAgg+ stages (advertise keys, share keys, unmask; fl_client/secaggplus_client.py) on a checked plan."""
    config = msg.content["config"]
    folder = data_folder(config, context)
    unmask = str(config["sap-stage"]) == "unmask"  # after the train stage claimed the epoch
    plan = RoundPlan.from_config(config) if unmask else checked_plan(config, context)
    return secaggplus_client.handle(msg, context, plan, lambda: load_identity(folder, keys_folder(folder, context)).eth_key)


@app.query("register")
def register_handler(msg: Message, context: Context) -> Message:
    """Sign this miner's registration (address, secure-aggregation key) with its own key, for the chain
    and contract the server names. In simulation the keys are created in the miner's folder the first
    time; a deployed miner must already have them (``fl-miner keys create``)."""
    config = msg.content["config"]
    folder = data_folder(config, context)
    keys = keys_folder(folder, context)
    simulated = "partition-id" in context.node_config and "data-dir" not in context.node_config
    identity = load_or_create_identity(folder, keys) if simulated else load_identity(folder, keys)
    reg = sign_registration(identity.eth_key, identity.secagg_public, int(config["mm-chain-id"]), str(config["mm-contract"]))
    return Message(content=RecordDict({"registration": ConfigRecord(reg.to_config())}), reply_to=msg)


@app.query("register_tx")
def register_tx_handler(msg: Message, context: Context) -> Message:
    """Sign this miner's own ``register(publicKey)`` transaction with its stake; the server only relays it."""
    config = msg.content["config"]
    folder = data_folder(config, context)
    identity = load_identity(folder, keys_folder(folder, context))
    raw = sign_register_tx(
        identity.eth_key, identity.secagg_public, chain_id=int(config["mm-chain-id"]),
        contract=str(config["mm-contract"]), stake_wei=int(str(config["mm-stake-wei"])),
        nonce=int(config["mm-nonce"]), gas=int(config["mm-gas"]), max_fee_per_gas=int(str(config["mm-max-fee"])),
        max_priority_fee_per_gas=int(str(config["mm-max-priority-fee"])),
    )
    return Message(content=RecordDict({"registration": ConfigRecord({"raw-tx": raw.hex()})}), reply_to=msg)
