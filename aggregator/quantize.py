"""Quantization of sparse updates to small signed integers (DESIGN.md section 3, step 3).

A float vector is clipped to ``[-clip, clip]`` and mapped to ``b``-bit signed integers in
``[-(2^(b-1)-1), 2^(b-1)-1]`` (the symmetric range: ``-2^(b-1)`` is never produced) with unbiased
stochastic rounding: ``E[dequantize(quantize(x))] = clip(x)``. Integers, not floats, are what the
secure-aggregation backends add up, so a sum of ``n`` quantized vectors dequantizes exactly.

Pure functions, no I/O.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_BITS = 15
MIN_BITS = 2
MAX_BITS = 31


class QuantizationError(ValueError):
    """Bad quantization input: non-finite values, bad clip, unsupported bit width, out-of-range ints."""


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise QuantizationError(f"bits must be an int, got {type(bits).__name__}")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise QuantizationError(f"bits={bits} outside the supported range [{MIN_BITS}, {MAX_BITS}]")


def _check_clip(clip: float) -> float:
    clip = float(clip)
    if not math.isfinite(clip) or clip <= 0.0:
        raise QuantizationError(f"clip must be a finite positive number, got {clip!r}")
    return clip


def max_abs(bits: int = DEFAULT_BITS) -> int:
    """Largest magnitude a ``bits``-bit quantized value can take: ``2^(bits-1) - 1``."""
    _check_bits(bits)
    return (1 << (bits - 1)) - 1


def scale(clip: float, bits: int = DEFAULT_BITS) -> float:
    """Integer steps per unit: ``x_int ~= x * scale(clip, bits)``."""
    return max_abs(bits) / _check_clip(clip)


def quantize(
    x: np.ndarray, clip: float, bits: int = DEFAULT_BITS, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Clip ``x`` to ``[-clip, clip]`` and stochastically round to ``bits``-bit signed ints.

    Returns an ``int64`` array of the same shape with values in ``[-max_abs(bits), max_abs(bits)]``.
    Rounding is unbiased: each value rounds up with probability equal to its fractional part.
    ``rng`` defaults to a fresh OS-seeded generator. Raises QuantizationError on NaN/Inf input.
    """
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise QuantizationError("cannot quantize NaN or Inf values")
    s = scale(clip, bits)
    q_max = max_abs(bits)
    y = np.clip(arr, -clip, clip) * s
    y = np.clip(y, -q_max, q_max)  # guard against rounding past the range at |x| == clip
    lo = np.floor(y)
    gen = rng if rng is not None else np.random.default_rng()
    up = gen.random(size=y.shape) < (y - lo)
    out = lo.astype(np.int64) + up.astype(np.int64)
    return out


def check_range(q: np.ndarray, bits: int = DEFAULT_BITS, n: int = 1) -> None:
    """Raise QuantizationError unless every entry of ``q`` is within ``n * max_abs(bits)``."""
    arr = np.asarray(q)
    if arr.dtype.kind not in "iu":
        raise QuantizationError(f"quantized values must be integers, got dtype {arr.dtype}")
    bound = n * max_abs(bits)
    if arr.size and int(np.max(np.abs(arr.astype(np.int64)))) > bound:
        raise QuantizationError(f"quantized value outside [-{bound}, {bound}] for bits={bits}, n={n}")


def dequantize(q: np.ndarray, clip: float, bits: int = DEFAULT_BITS) -> np.ndarray:
    """Map integers (one vector, or a sum of vectors) back to floats: ``q / scale`` as float64."""
    return np.asarray(q, dtype=np.float64) / scale(clip, bits)


def dequantize_sum(
    total: np.ndarray, n: int, clip: float, bits: int = DEFAULT_BITS, mean: bool = True
) -> np.ndarray:
    """Dequantize the integer sum of ``n`` quantized vectors.

    With ``mean=True`` (default) returns the average update ``total / (n * scale)``, else the sum.
    Raises QuantizationError when ``n < 1`` or when ``total`` cannot be a sum of ``n`` valid vectors.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise QuantizationError(f"n must be a positive int, got {n!r}")
    check_range(total, bits, n)
    out = dequantize(total, clip, bits)
    return out / n if mean else out


def score(q: np.ndarray) -> int:
    """Exact integer score ``sum(x^2)`` of a quantized vector, as a Python int (never overflows)."""
    arr = np.asarray(q)
    if arr.dtype.kind not in "iu":
        raise QuantizationError(f"score needs an integer vector, got dtype {arr.dtype}")
    flat = arr.astype(np.int64).ravel()
    if flat.size == 0:
        return 0
    biggest = int(np.max(np.abs(flat)))
    if biggest == 0:
        return 0
    chunk = max(1, (2**63 - 1) // (biggest * biggest))
    total = 0
    for start in range(0, flat.size, chunk):
        part = flat[start : start + chunk]
        total += int(np.dot(part, part))
    return total


def max_score(k: int, bits: int = DEFAULT_BITS) -> int:
    """Largest score a ``k``-coordinate quantized vector can have: ``k * (2^(bits-1) - 1)^2``."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise QuantizationError(f"k must be a non-negative int, got {k!r}")
    return k * max_abs(bits) ** 2
