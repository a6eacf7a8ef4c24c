"""Centralized evaluation of the global model on the server's held-out test set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord
from torch.utils.data import TensorDataset

from aggregator.datasets import DatasetError, get_spec, normalize
from aggregator.models import ModelSpec, build_model, load_state_checked
from aggregator.torch_eval import evaluate, make_loader


def load_test_set(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the server's test set; never unpickles."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["images"], z["labels"].astype(np.int64)
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, OSError) as exc:
        raise DatasetError(f"{path} is not a valid test set: {exc}") from exc


class ServerEvaluator:
    """Callable for ``Strategy.start(evaluate_fn=...)``: (round, arrays) -> loss and accuracy."""

    def __init__(self, test_path: Path, dataset: str, spec: ModelSpec, batch_size: int = 1000) -> None:
        images, labels = load_test_set(test_path)
        data = TensorDataset(torch.from_numpy(normalize(images, get_spec(dataset))), torch.from_numpy(labels))
        self.loader = make_loader(data, batch_size, shuffle=False)
        self.spec = spec

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = build_model(self.spec)
        load_state_checked(model, arrays.to_torch_state_dict())
        loss, accuracy, n = evaluate(model, self.loader)
        return MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": n})
