import numpy as np
import pytest

from aggregator.partition import PartitionError, dirichlet_partition, iid_partition, label_skew


def _check_disjoint_complete(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n and len(np.unique(joined)) == n


def test_iid_is_disjoint_complete_and_balanced():
    parts = iid_partition(1003, 10, seed=1)
    _check_disjoint_complete(parts, 1003)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_dirichlet_is_disjoint_complete_and_skewed():
    labels = np.random.default_rng(0).integers(0, 10, size=5000)
    skewed = dirichlet_partition(labels, 10, alpha=0.1, seed=3)
    _check_disjoint_complete(skewed, 5000)
    iid = iid_partition(5000, 10, seed=3)
    skew_dir = label_skew([labels[p] for p in skewed], 10)
    skew_iid = label_skew([labels[p] for p in iid], 10)
    assert skew_iid < 0.1 < skew_dir
    mild = label_skew([labels[p] for p in dirichlet_partition(labels, 10, alpha=100.0, seed=3)], 10)
    assert mild < skew_dir


def test_partitions_are_seeded():
    labels = np.random.default_rng(0).integers(0, 10, size=2000)
    a = dirichlet_partition(labels, 5, 0.5, seed=9)
    b = dirichlet_partition(labels, 5, 0.5, seed=9)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_bad_parameters():
    with pytest.raises(PartitionError):
        iid_partition(3, 10, seed=0)
    with pytest.raises(PartitionError):
        dirichlet_partition(np.zeros(100, dtype=int), 2, alpha=0, seed=0)
