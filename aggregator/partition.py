"""Splitting a labelled data set among miners: IID or Dirichlet(alpha) label skew. Pure and seeded."""

from __future__ import annotations

import numpy as np


class PartitionError(ValueError):
    """Partition parameters that cannot be honoured (too few samples, alpha <= 0, ...)."""


def iid_partition(num_samples: int, num_parts: int, seed: int) -> list[np.ndarray]:
    """Shuffle ``range(num_samples)`` and cut it into ``num_parts`` near-equal index arrays."""
    if num_parts < 1 or num_samples < num_parts:
        raise PartitionError(f"cannot split {num_samples} samples into {num_parts} parts")
    order = np.random.default_rng(seed).permutation(num_samples)
    return [np.sort(part) for part in np.array_split(order, num_parts)]


def dirichlet_partition(
    labels: np.ndarray, num_parts: int, alpha: float, seed: int, min_size: int = 10, max_tries: int = 100
) -> list[np.ndarray]:
    """Label-skewed split: for every class, its samples go to parts in Dirichlet(alpha) proportions.

    Small ``alpha`` means strong skew. Redraws (up to ``max_tries``) until every part holds at least
    ``min_size`` samples, so no miner is left with nothing to train on.
    """
    if alpha <= 0:
        raise PartitionError(f"dirichlet alpha must be > 0, got {alpha}")
    if num_parts < 1 or len(labels) < num_parts * min_size:
        raise PartitionError(f"cannot give {num_parts} parts at least {min_size} of {len(labels)} samples")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_parts)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_parts, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for p, chunk in enumerate(np.split(idx, cuts)):
                parts[p].append(chunk)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(r) for r in result) >= min_size:
            return result
    raise PartitionError(f"no Dirichlet({alpha}) draw gave every part >= {min_size} samples in {max_tries} tries")


def label_histogram(labels: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(labels.astype(np.int64), minlength=num_classes).tolist()


def label_skew(parts_labels: list[np.ndarray], num_classes: int) -> float:
    """Mean total-variation distance between each part's label distribution and the global one.

    0 for a perfectly IID split; approaches 1 when every part holds a single class.
    """
    hists = np.array([label_histogram(p, num_classes) for p in parts_labels], dtype=np.float64)
    global_dist = hists.sum(0) / hists.sum()
    local = hists / hists.sum(1, keepdims=True)
    return float(0.5 * np.abs(local - global_dist).sum(1).mean())
