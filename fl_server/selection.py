"""Which miners train in a round. ``random`` is the baseline; adaptive policies plug in here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class SelectionError(RuntimeError):
    """Not enough miners connected to run a round."""


@dataclass
class RandomSelector:
    """Uniform sample of ``per_round`` miners (all when ``per_round`` <= 0), seeded per round."""

    per_round: int = 0
    min_available: int = 1
    seed: int = 0

    def select(self, node_ids: Sequence[int], server_round: int) -> list[int]:
        nodes = sorted(int(n) for n in node_ids)
        if len(nodes) < self.min_available:
            raise SelectionError(f"{len(nodes)} miners connected, need at least {self.min_available}")
        k = len(nodes) if self.per_round <= 0 else min(self.per_round, len(nodes))
        rng = np.random.default_rng([self.seed, server_round])
        # Node ids are uint64; sample positions so they never pass through a numpy dtype.
        picks = rng.choice(len(nodes), size=k, replace=False)
        return sorted(nodes[int(i)] for i in picks)
