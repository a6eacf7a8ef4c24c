"""Shared fixtures: small real data sets written to temporary folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from fl_server.data_prep import PartitionConfig, prepare


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn digits split IID among 3 miners (the tiny real data set for fast tests)."""
    root = tmp_path_factory.mktemp("local_data")
    prepare(root, PartitionConfig(dataset="digits", num_miners=3, partition="iid", seed=7))
    return root


@pytest.fixture(scope="session")
def digits_cfg() -> PartitionConfig:
    return PartitionConfig(dataset="digits", num_miners=3, partition="iid", seed=7)
