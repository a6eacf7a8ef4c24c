"""Centralized evaluation of the global model on the server's held-out test set."""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import ArrayRecord, MetricRecord
from torch.utils.data import TensorDataset

from aggregator.datasets import get_spec, normalize
from aggregator.models import ModelSpec, build_model, load_state_checked
from fl_client.data import load_npz, make_loader
from fl_client.train import evaluate


class ServerEvaluator:
    """Callable for ``Strategy.start(evaluate_fn=...)``: (round, arrays) -> loss and accuracy."""

    def __init__(self, test_path: Path, dataset: str, spec: ModelSpec, batch_size: int = 1000) -> None:
        images, labels = load_npz(test_path)
        data = TensorDataset(torch.from_numpy(normalize(images, get_spec(dataset))), torch.from_numpy(labels))
        self.loader = make_loader(data, batch_size, shuffle=False)
        self.spec = spec

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = build_model(self.spec)
        load_state_checked(model, arrays.to_torch_state_dict())
        loss, accuracy, n = evaluate(model, self.loader)
        return MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": n})
