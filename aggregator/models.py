"""Model architecture registry and safetensors (de)serialization with a stable content hash.

A task names its model as ``(architecture, kwargs)``; both sides rebuild the same ``nn.Module`` from
that and exchange weights only as safetensors bytes, never as pickles.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from eth_utils import keccak
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn


class ModelError(ValueError):
    """An unknown architecture, bad kwargs, or weights that do not fit the architecture."""


@dataclass(frozen=True)
class ModelSpec:
    """What a task says about its model: an architecture name and its keyword arguments."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "kwargs": self.kwargs}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            raw = json.loads(text)
            return cls(name=str(raw["name"]), kwargs=dict(raw.get("kwargs", {})))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ModelError(f"malformed model spec {text!r}: {exc}") from exc


class CnnSmall(nn.Module):
    """Two 5x5 conv blocks (16, 32 channels, 'same' padding, 2x2 max-pool) and a 128-unit head.

    For 28x28 single-channel inputs this has 215,370 parameters.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10, hidden: int = 128):
        super().__init__()
        if image_size % 4:
            raise ModelError(f"cnn_small needs image_size divisible by 4, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = 32 * (image_size // 4) ** 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Mlp(nn.Module):
    """A fully connected network over flattened images."""

    def __init__(
        self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10, hidden: tuple[int, ...] = (200, 200)
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size * image_size
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"cnn_small": CnnSmall, "mlp": Mlp}


def build_model(spec: ModelSpec, seed: int | None = None) -> nn.Module:
    """Instantiate ``spec``; with ``seed`` the initial weights are reproducible."""
    if spec.name not in ARCHITECTURES:
        raise ModelError(f"unknown model {spec.name!r}; known: {sorted(ARCHITECTURES)}")
    if seed is not None:
        torch.manual_seed(seed)
    try:
        return ARCHITECTURES[spec.name](**spec.kwargs)
    except TypeError as exc:
        raise ModelError(f"bad kwargs for {spec.name}: {exc}") from exc


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_to_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """Serialize a state dict to safetensors bytes; identical states give identical bytes."""
    ordered = {k: state[k].detach().cpu().contiguous() for k in sorted(state)}
    return st_save(ordered)


def state_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes; anything else (a pickle, junk, truncation) raises ModelError."""
    if not isinstance(data, bytes | bytearray):
        raise ModelError(f"model weights must be bytes, got {type(data).__name__}")
    if data[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or data[:2] == b"PK":
        raise ModelError("weights look like a pickle/torch.save archive; only safetensors is accepted")
    try:
        return st_load(bytes(data))
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelError(f"not a valid safetensors blob: {exc}") from exc


def model_hash(data: bytes) -> bytes:
    """The 32-byte keccak256 of the safetensors bytes: the model's identity on chain."""
    return keccak(bytes(data))


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``model``; missing/unexpected keys or shape mismatches raise ModelError."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelError(f"weights do not fit the model: missing={missing} unexpected={unexpected}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise ModelError(f"shape of {key}: got {tuple(tensor.shape)}, model has {tuple(own[key].shape)}")
        if not torch.isfinite(tensor).all():
            raise ModelError(f"weights {key} contain NaN or Inf")
    model.load_state_dict(state)


def flatten_state(state: dict[str, torch.Tensor]) -> np.ndarray:
    """Concatenate all tensors (sorted by key) into one float32 vector."""
    return np.concatenate([state[k].detach().cpu().numpy().ravel().astype(np.float32) for k in sorted(state)])


def unflatten_like(vector: np.ndarray, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`flatten_state` with the shapes of ``like``."""
    total = sum(like[k].numel() for k in like)
    if vector.shape != (total,):
        raise ModelError(f"flat vector has shape {vector.shape}, expected ({total},)")
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for key in sorted(like):
        n = like[key].numel()
        out[key] = torch.from_numpy(np.ascontiguousarray(vector[offset : offset + n])).reshape(like[key].shape).to(
            like[key].dtype
        )
        offset += n
    return out
