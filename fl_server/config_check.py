"""Bad configuration fails before any work starts: one line ``error: ...`` naming the fix.

``check_config(cfg)`` raises :class:`ConfigError` with the first problem found; ``python -m fl_server``
prints it as ``error: <message>`` and exits with status 2 before partitions are written, a chain is
touched or a task is published. The ServerApp runs the same check (``flwr run`` path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SECAGG_BACKENDS = ("none", "masked", "nddfe", "secaggplus")
CHAIN_BACKENDS = ("none", "embedded", "rpc")
DATASETS = ("mnist", "fashion_mnist", "digits")
PARTITIONS = ("iid", "dirichlet")
OPTIMIZERS = ("sgd", "adam")


class ConfigError(ValueError):
    """A setting that cannot work; the message says which and how to fix it."""


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        try:
            node = node.get(part) if hasattr(node, "get") else getattr(node, part)
        except Exception:  # noqa: BLE001 - a missing group reads as default
            return default
        if node is None:
            return default
    return node


def _int(cfg: Any, dotted: str) -> int:
    value = _get(cfg, dotted)
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{dotted}={value!r} is not an integer") from exc


def _float(cfg: Any, dotted: str) -> float:
    value = _get(cfg, dotted)
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{dotted}={value!r} is not a number") from exc


def _one_of(cfg: Any, dotted: str, allowed: tuple[str, ...]) -> str:
    value = str(_get(cfg, dotted))
    if value not in allowed:
        raise ConfigError(f"{dotted}={value!r} is unknown; use one of {', '.join(allowed)}")
    return value


def check_config(cfg: Any) -> None:
    """Raise ConfigError for the first setting that cannot work; return silently otherwise."""
    miners = _int(cfg, "num_miners")
    if miners <= 0:
        raise ConfigError(f"num_miners={miners} must be at least 1")
    rounds = _int(cfg, "rounds")
    if rounds <= 0:
        raise ConfigError(f"rounds={rounds} must be at least 1 (e.g. rounds=3)")
    _one_of(cfg, "dataset.name", DATASETS)
    _one_of(cfg, "dataset.partition", PARTITIONS)
    if str(_get(cfg, "dataset.partition")) == "dirichlet" and _float(cfg, "dataset.alpha") <= 0:
        raise ConfigError(f"dataset.alpha={_get(cfg, 'dataset.alpha')} must be > 0 for a Dirichlet partition")
    if _int(cfg, "dataset.max_samples_per_miner") < 0:
        raise ConfigError("dataset.max_samples_per_miner must be >= 0 (0 = all)")
    per_round = _int(cfg, "selection.per_round")
    if per_round < 0 or per_round > miners:
        raise ConfigError(
            f"selection.per_round={per_round} is outside 0..num_miners={miners} "
            f"(0 selects every miner; e.g. selection.per_round={miners})"
        )
    min_available = _int(cfg, "selection.min_available")
    if min_available < 0 or min_available > miners:
        raise ConfigError(
            f"selection.min_available={min_available} is outside 0..num_miners={miners}: the task would wait "
            f"for miners that do not exist (e.g. selection.min_available={miners})"
        )
    min_replies = _int(cfg, "strategy.min_replies")
    if min_replies < 1 or min_replies > miners:
        raise ConfigError(f"strategy.min_replies={min_replies} is outside 1..num_miners={miners}")
    if _float(cfg, "strategy.round_timeout_s") <= 0:
        raise ConfigError("strategy.round_timeout_s must be > 0")
    if _float(cfg, "strategy.server_lr") <= 0:
        raise ConfigError("strategy.server_lr must be > 0")
    if not 0 <= _float(cfg, "strategy.server_momentum") < 1:
        raise ConfigError("strategy.server_momentum must be in [0, 1)")
    _one_of(cfg, "task.train.optimizer", OPTIMIZERS)
    if _int(cfg, "task.train.epochs") <= 0 or _int(cfg, "task.train.batch_size") <= 0:
        raise ConfigError("task.train.epochs and task.train.batch_size must be at least 1")
    if _float(cfg, "task.train.lr") <= 0:
        raise ConfigError("task.train.lr must be > 0")
    if not 0 < _float(cfg, "task.target_accuracy") <= 1:
        raise ConfigError("task.target_accuracy must be in (0, 1]")
    secagg = _one_of(cfg, "secagg.backend", SECAGG_BACKENDS)
    bits = _int(cfg, "secagg.bits")
    if not 2 <= bits <= 31:
        raise ConfigError(f"secagg.bits={bits} must be in 2..31")
    if _float(cfg, "secagg.clip") <= 0:
        raise ConfigError("secagg.clip must be > 0")
    dgc_on = bool(_get(cfg, "dgc.enabled", False))
    if dgc_on:
        density = _float(cfg, "dgc.density")
        if not 0 < density <= 1:
            raise ConfigError(f"dgc.density={density} must be in (0, 1] (e.g. dgc.density=0.01)")
        _one_of(cfg, "dgc.support", ("shared", "local"))
        _one_of(cfg, "dgc.allocation", ("layer", "global"))
    chain = _one_of(cfg, "chain.backend", CHAIN_BACKENDS)
    if chain != "none" and secagg == "none" and not dgc_on:
        raise ConfigError(
            "on-chain rounds need commitments: use chain=none for plain FedAvg, or enable a secure round "
            "(secagg=masked|nddfe or dgc.enabled=true)"
        )
    if chain == "rpc" and not str(_get(cfg, "chain.rpc_url", "") or "") and not bool(_get(cfg, "chain.start_anvil", False)):
        raise ConfigError("chain=anvil needs chain.rpc_url=http://HOST:PORT or chain.start_anvil=true")
    if chain != "none":
        for key in ("stake_wei", "reward_pool_wei"):
            if _int(cfg, f"chain.{key}") < 0:
                raise ConfigError(f"chain.{key} must be >= 0")
        quorum = _int(cfg, "chain.quorum_bps")
        if not 0 < quorum <= 10_000:
            raise ConfigError(f"chain.quorum_bps={quorum} must be in 1..10000")
        for key in ("deployer_key_file",):
            path = str(_get(cfg, f"chain.{key}", "") or "")
            if path and not Path(path).is_file():
                raise ConfigError(f"chain.{key}={path} does not exist")
    resume = bool(_get(cfg, "resume", False))
    if resume and chain == "embedded":
        raise ConfigError(
            "resume=true needs a chain that outlives the server: the embedded EVM dies with it. "
            "Use chain=anvil chain.rpc_url=http://HOST:PORT (or chain=none)"
        )
    if resume and chain == "rpc" and not str(_get(cfg, "chain.rpc_url", "") or ""):
        raise ConfigError("resume=true with chain=anvil needs chain.rpc_url= of the node the task lives on")
    checkpoint = str(_get(cfg, "checkpoint", "") or "")
    if checkpoint and not (Path(checkpoint) / "checkpoint.safetensors").is_file():
        raise ConfigError(f"checkpoint={checkpoint} holds no checkpoint.safetensors")
    if _int(cfg, "debug.crash_after_round") < 0:
        raise ConfigError("debug.crash_after_round must be >= 0 (0 = off)")
    sim = _get(cfg, "simulation")
    if sim is not None and _float(cfg, "simulation.cpus_per_miner") <= 0:
        raise ConfigError("simulation.cpus_per_miner must be > 0")
    if _get(cfg, "selection") is not None and _get(cfg, "network") is not None:
        from fl_server.selection import check_selection_config

        try:
            check_selection_config(cfg)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
