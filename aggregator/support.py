"""Round support selection for ``dgc.support=shared`` (DESIGN.md section 3, step 1).

The support ``S_t`` is the set of ``k`` coordinates every selected miner sends in round ``t``:
the top coordinates of the previous aggregate's magnitude plus an exploration slice drawn from a
public seed (e.g. the previous block hash). Everything here is deterministic given its inputs, so a
miner or a voter can recompute ``S_t`` and its hash.

Determinism rules:
- top part: the ``k_top`` largest ``|prev_aggregate|`` among its non-zero entries, ties broken by the
  smaller index; zero entries are never "top" (they carry no information), their slots go to exploration;
- exploration: every index ``i`` gets the priority ``u64_le(AES-256-CTR(key, nonce=0)[8i:8i+8])``
  with ``key = sha256(b"modelmine/support/explore" || seed)``; the remaining indices with the
  smallest priorities (ties by index) fill the support.
- result: sorted, unique ``int64`` indices.

``support_hash`` is ``keccak256`` of the indices as **uint32 little-endian** bytes, concatenated in
ascending order (so supports are limited to models with fewer than 2^32 parameters).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from eth_utils import keccak

EXPLORE_LABEL = b"modelmine/support/explore"
DEFAULT_EXPLORE_FRACTION = 0.1


class SupportError(ValueError):
    """Bad support input: k out of range, non-finite aggregate, unsorted or duplicate indices..."""


def _smallest_k(priority: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest entries of ``priority``, ties broken by smaller index; sorted."""
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k >= priority.size:
        return np.arange(priority.size, dtype=np.int64)
    threshold = np.partition(priority, k - 1)[k - 1]
    below = np.flatnonzero(priority < threshold)
    equal = np.flatnonzero(priority == threshold)[: k - below.size]
    return np.sort(np.concatenate([below, equal])).astype(np.int64)


def exploration_priorities(seed: bytes, d: int) -> np.ndarray:
    """Public pseudo-random ``uint64`` priority for each of ``d`` indices, derived from ``seed``."""
    if not isinstance(seed, bytes | bytearray):
        raise SupportError(f"seed must be bytes, got {type(seed).__name__}")
    key = hashlib.sha256(EXPLORE_LABEL + bytes(seed)).digest()
    enc = Cipher(algorithms.AES(key), modes.CTR(b"\x00" * 16)).encryptor()
    stream = enc.update(b"\x00" * (8 * d)) + enc.finalize()
    return np.frombuffer(stream, dtype="<u8").copy()


def select_support(
    prev_aggregate: np.ndarray | None,
    k: int,
    seed: bytes,
    d: int | None = None,
    explore_fraction: float = DEFAULT_EXPLORE_FRACTION,
) -> np.ndarray:
    """Choose the round's shared support of ``k`` coordinates out of ``d``.

    ``prev_aggregate`` is the previous round's (dense, length ``d``) aggregate update, or None in the
    first round (then the whole support is exploration). ``explore_fraction`` of ``k`` (rounded up,
    at least 1 when ``0 < fraction`` and ``k > 0``) is drawn from ``seed``; the rest is top-k by magnitude.
    Returns sorted unique ``int64`` indices of length ``k``. Raises SupportError on bad input.
    """
    if prev_aggregate is not None:
        agg = np.asarray(prev_aggregate).ravel()
        if d is not None and d != agg.size:
            raise SupportError(f"d={d} does not match the aggregate's length {agg.size}")
        d = agg.size
        if not np.all(np.isfinite(agg)):
            raise SupportError("previous aggregate contains NaN or Inf")
    if d is None:
        raise SupportError("d is required when there is no previous aggregate")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= d:
        raise SupportError(f"k must be an int in [0, d={d}], got {k!r}")
    if d >= 2**32:
        raise SupportError("supports are limited to d < 2^32 (uint32 support hash)")
    if not 0.0 <= explore_fraction <= 1.0:
        raise SupportError(f"explore_fraction must be in [0, 1], got {explore_fraction}")

    top = np.empty(0, dtype=np.int64)
    if prev_aggregate is not None and k > 0:
        k_explore = int(np.ceil(k * explore_fraction))
        k_top = k - k_explore
        mag = np.abs(agg.astype(np.float64))
        nonzero = int(np.count_nonzero(mag))
        k_top = min(k_top, nonzero)
        # k largest magnitudes == k smallest of -mag (ties by smaller index)
        top = _smallest_k(-mag, k_top)
    k_rest = k - top.size
    if k_rest == 0:
        return top
    prio = exploration_priorities(seed, d)
    if top.size:
        mask = np.zeros(d, dtype=bool)
        mask[top] = True
        rest_idx = np.flatnonzero(~mask)
        chosen = rest_idx[_smallest_k(prio[rest_idx], k_rest)]
    else:
        chosen = _smallest_k(prio, k_rest)
    return np.sort(np.concatenate([top, chosen])).astype(np.int64)


def validate_indices(indices: np.ndarray, d: int | None = None) -> np.ndarray:
    """Return ``indices`` as a 1-D int64 array; raise SupportError unless strictly increasing,
    non-negative, below ``d`` (when given) and below 2^32."""
    arr = np.asarray(indices)
    if arr.ndim != 1:
        raise SupportError(f"indices must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise SupportError(f"indices must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size:
        if int(arr[0]) < 0:
            raise SupportError("indices must be non-negative")
        if np.any(np.diff(arr) <= 0):
            raise SupportError("indices must be strictly increasing (sorted, no duplicates)")
        top = int(arr[-1])
        if top >= 2**32:
            raise SupportError("indices must be below 2^32")
        if d is not None and top >= d:
            raise SupportError(f"index {top} out of range for d={d}")
    return arr


def support_hash(indices: np.ndarray) -> bytes:
    """``keccak256`` of the sorted indices encoded as uint32 little-endian bytes (32-byte digest)."""
    arr = validate_indices(indices)
    return keccak(arr.astype("<u4").tobytes())


def layer_budgets(k: int, sizes: Sequence[int]) -> list[int]:
    """Split ``k`` coordinates among layers of ``sizes`` in proportion to sqrt(size) (at least 1 per
    layer, at most its size), so small layers (convolutions, biases) are not starved by one huge
    dense layer. The budgets sum to ``min(k, sum(sizes))``."""
    sizes = [int(s) for s in sizes]
    if not sizes or any(s < 1 for s in sizes):
        raise SupportError("layer sizes must be positive")
    total = min(int(k), sum(sizes))
    weights = np.sqrt(np.asarray(sizes, dtype=np.float64))
    budgets = np.minimum(np.maximum(1, np.floor(total * weights / weights.sum())), sizes).astype(np.int64)
    # hand out what rounding and caps left over (or take back an excess), largest layers first
    order = np.argsort(-np.asarray(sizes), kind="stable")
    while budgets.sum() != total:
        step = 1 if budgets.sum() < total else -1
        for i in order:
            if budgets.sum() == total:
                break
            if (step > 0 and budgets[i] < sizes[i]) or (step < 0 and budgets[i] > 1):
                budgets[i] += step
    return budgets.tolist()


def select_support_layered(
    prev_aggregate: np.ndarray | None,
    k: int,
    seed: bytes,
    sizes: Sequence[int],
    explore_fraction: float = DEFAULT_EXPLORE_FRACTION,
) -> np.ndarray:
    """:func:`select_support` per layer with :func:`layer_budgets`; ``sizes`` are the layers' lengths
    in the flattened order. Each layer's exploration uses ``seed`` extended by its offset."""
    d = int(sum(sizes))
    if prev_aggregate is not None and np.asarray(prev_aggregate).size != d:
        raise SupportError(f"aggregate has {np.asarray(prev_aggregate).size} values, layers sum to {d}")
    parts, offset = [], 0
    for size, budget in zip(sizes, layer_budgets(k, sizes), strict=True):
        prev = None if prev_aggregate is None else np.asarray(prev_aggregate).ravel()[offset : offset + size]
        local = select_support(prev, int(budget), seed + offset.to_bytes(8, "big"), int(size), explore_fraction)
        parts.append(local + offset)
        offset += size
    return np.sort(np.concatenate(parts)).astype(np.int64)
