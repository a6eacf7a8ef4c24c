#!/usr/bin/env python
"""Write per-miner private partitions (IID or Dirichlet label skew) into local_data/.

    python scripts/prepare_data.py                                  # MNIST, 10 miners, IID
    python scripts/prepare_data.py --dataset mnist --partition dirichlet --alpha 0.5
    python scripts/prepare_data.py --dataset digits --miners 3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregator.datasets import DatasetError  # noqa: E402
from aggregator.partition import PartitionError  # noqa: E402
from fl_server.data_prep import REPO_ROOT, PartitionConfig, prepare  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist", "digits"])
    parser.add_argument("--miners", type=int, default=10)
    parser.add_argument("--partition", default="iid", choices=["iid", "dirichlet"])
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (smaller = more skew)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-samples-per-miner", type=int, default=0, help="0 = use every sample")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "local_data")
    args = parser.parse_args(argv)
    cfg = PartitionConfig(
        dataset=args.dataset,
        num_miners=args.miners,
        partition=args.partition,
        alpha=args.alpha,
        seed=args.seed,
        max_samples_per_miner=args.max_samples_per_miner,
    )
    try:
        summary = prepare(args.out, cfg)
    except (DatasetError, PartitionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
