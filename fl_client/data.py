"""A miner's private data: its partition folder, checked against its manifest and the task.

The data never leaves this process: only model weights (or encrypted updates) and metrics do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from aggregator.datasets import DatasetError, get_spec, normalize


@dataclass(frozen=True)
class LocalData:
    train: TensorDataset
    val: TensorDataset
    manifest: dict


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) from an npz written by the data preparation; never unpickles."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["images"], z["labels"].astype(np.int64)
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, OSError) as exc:
        raise DatasetError(f"{path} is not a valid data file: {exc}") from exc


def _tensors(images: np.ndarray, labels: np.ndarray, dataset: str) -> TensorDataset:
    spec = get_spec(dataset)
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= spec.num_classes:
        raise DatasetError(f"labels outside [0, {spec.num_classes}) in {dataset} data")
    return TensorDataset(torch.from_numpy(normalize(images, spec)), torch.from_numpy(labels))


def load_local_data(folder: Path, expected_dataset: str, verify_hashes: bool = True) -> LocalData:
    """Load ``folder/{train,val}.npz`` after checking ``manifest.json`` against the task's data set.

    Raises DatasetError naming the fix when the folder is missing, belongs to another data set, or
    its files do not match the manifest's hashes.
    """
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise DatasetError(
            f"no private data at {folder} (missing manifest.json). "
            f"Fix: python scripts/prepare_data.py --dataset {expected_dataset} ..."
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if manifest.get("dataset") != expected_dataset:
        raise DatasetError(
            f"task needs dataset {expected_dataset!r} but {folder} holds {manifest.get('dataset')!r}"
        )
    splits = {}
    for name in ("train", "val"):
        path = folder / f"{name}.npz"
        if not path.exists():
            raise DatasetError(f"{path} is missing; re-run scripts/prepare_data.py")
        if verify_hashes:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != manifest.get("sha256", {}).get(f"{name}.npz"):
                raise DatasetError(f"{path} does not match its manifest hash; re-run scripts/prepare_data.py")
        splits[name] = _tensors(*load_npz(path), expected_dataset)
    return LocalData(train=splits["train"], val=splits["val"], manifest=manifest)


def make_loader(data: TensorDataset, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)
