"""Data set metadata both sides agree on: shapes, classes and input normalization (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DatasetError(ValueError):
    """An unknown data set, or local data that does not match what the task expects."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    image_size: int
    in_channels: int
    num_classes: int
    max_pixel: float  # raw pixel range is [0, max_pixel]
    mean: float  # of pixels scaled to [0, 1]
    std: float


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", 28, 1, 10, 255.0, 0.1307, 0.3081),
    "fashion_mnist": DatasetSpec("fashion_mnist", 28, 1, 10, 255.0, 0.2860, 0.3530),
    "digits": DatasetSpec("digits", 8, 1, 10, 16.0, 0.3050, 0.3800),
}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name]


def normalize(images: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """uint8/float images (N, H, W) -> float32 (N, C, H, W), standardized."""
    if images.ndim != 3 or images.shape[1:] != (spec.image_size, spec.image_size):
        raise DatasetError(
            f"{spec.name} images must be (N, {spec.image_size}, {spec.image_size}), got {images.shape}"
        )
    x = images.astype(np.float32) / spec.max_pixel
    x = (x - spec.mean) / spec.std
    return x[:, None, :, :]
