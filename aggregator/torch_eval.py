"""Evaluation of a model on in-memory tensors: shared by the server (test set) and miners (validation).

Pure computation: no file or network access.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_loader(data: TensorDataset, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """A DataLoader whose shuffling depends only on ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> tuple[float, float, int]:
    """(mean cross-entropy loss, accuracy, examples) of ``model`` on ``loader``, on the CPU."""
    model.to("cpu").eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in loader:
        out = model(x)
        total_loss += float(criterion(out, y))
        correct += int((out.argmax(1) == y).sum())
        seen += len(y)
    return total_loss / max(seen, 1), correct / max(seen, 1), seen
