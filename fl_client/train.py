"""Local training and evaluation of a model on a miner's data (plain PyTorch)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader


class TrainingError(RuntimeError):
    """Training diverged (NaN/Inf loss) or was configured with impossible settings."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"  # sgd | adam
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    max_steps: int = 0  # > 0: stop after this many optimizer steps (server's local work cap); 0 = no cap


@dataclass(frozen=True)
class TrainResult:
    num_examples: int
    loss: float  # mean training loss over the last epoch
    accuracy: float  # training accuracy over the last epoch
    seconds: float
    steps: int = 0  # optimizer steps taken (all epochs)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise TrainingError(f"unknown optimizer {cfg.optimizer!r}; use 'sgd' or 'adam'")


def train(
    model: nn.Module,
    loader: DataLoader,
    cfg: TrainConfig,
    device: torch.device | None = None,
    grad_masks: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``cfg.epochs`` epochs; raises TrainingError if the loss diverges.

    ``grad_masks`` (parameter name -> 0/1 tensor) freezes every coordinate whose mask is 0: the
    update then lives exactly on the round's shared support (support-restricted training).
    """
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0 or cfg.max_steps < 0:
        raise TrainingError(f"epochs, batch_size and lr must be positive: {cfg}")
    device = device or default_device()
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    optimizer = make_optimizer(model, cfg)
    criterion = nn.CrossEntropyLoss()
    params = dict(model.named_parameters())
    masks = {k: v.to(device) for k, v in (grad_masks or {}).items() if k in params}
    start = time.perf_counter()
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    for _ in range(cfg.epochs):
        if cfg.max_steps and steps >= cfg.max_steps:
            break
        total_loss, correct, seen = 0.0, 0, 0
        for x, y in loader:
            if cfg.max_steps and steps >= cfg.max_steps:
                break
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            out = model(x)
            loss = criterion(out, y)
            if not math.isfinite(loss.item()):
                raise TrainingError("training loss became NaN/Inf; lower the learning rate")
            loss.backward()
            for name, mask in masks.items():
                grad = params[name].grad
                if grad is not None:
                    grad.mul_(mask)
            optimizer.step()
            total_loss += loss.item() * len(y)
            correct += int((out.argmax(1) == y).sum())
            seen += len(y)
            steps += 1
    model.to("cpu")
    return TrainResult(seen, total_loss / max(seen, 1), correct / max(seen, 1), time.perf_counter() - start, steps)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | None = None) -> tuple[float, float, int]:
    """(mean loss, accuracy, examples) of ``model`` on ``loader``."""
    device = device or default_device()
    model.to(device).eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = model(x)
        total_loss += float(criterion(out, y))
        correct += int((out.argmax(1) == y).sum())
        seen += len(y)
    model.to("cpu")
    return total_loss / max(seen, 1), correct / max(seen, 1), seen
