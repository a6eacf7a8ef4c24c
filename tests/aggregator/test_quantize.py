"""Quantization: range, unbiasedness, exact scores, dequantization of sums."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.quantize import (
    QuantizationError,
    dequantize,
    dequantize_sum,
    max_abs,
    max_score,
    quantize,
    scale,
    score,
)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=2, max_value=20),
    st.floats(min_value=1e-3, max_value=10.0),
    st.lists(st.floats(min_value=-100, max_value=100, allow_nan=False), min_size=0, max_size=50),
)
def test_range_and_error_bound(bits: int, clip: float, values: list[float]) -> None:
    x = np.array(values, dtype=np.float64)
    q = quantize(x, clip, bits, rng=np.random.default_rng(0))
    assert q.dtype == np.int64
    assert np.all(np.abs(q) <= max_abs(bits))
    # dequantized value is within one step of the clipped input
    err = np.abs(dequantize(q, clip, bits) - np.clip(x, -clip, clip))
    assert np.all(err <= 1.0 / scale(clip, bits) + 1e-9)


def test_extremes_map_to_symmetric_range() -> None:
    q = quantize(np.array([-5.0, -1.0, 0.0, 1.0, 5.0]), 1.0, 15, rng=np.random.default_rng(1))
    assert q.tolist() == [-16383, -16383, 0, 16383, 16383]


def test_unbiased_stochastic_rounding() -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=64)
    clip, bits = 1.0, 4  # coarse grid: 7 steps per unit, so rounding matters
    trials = 4000
    mean = np.zeros_like(x)
    for _ in range(trials):
        mean += dequantize(quantize(x, clip, bits, rng=rng), clip, bits)
    mean /= trials
    step = 1.0 / scale(clip, bits)
    # std of one rounding <= step/2; of the mean <= step / (2 sqrt(trials)); allow 5 sigma
    assert np.max(np.abs(mean - x)) < 5 * step / (2 * np.sqrt(trials))


def test_dequantize_sum_mean() -> None:
    rng = np.random.default_rng(3)
    xs = [rng.uniform(-0.5, 0.5, size=100) for _ in range(5)]
    qs = [quantize(x, 1.0, 15, rng=rng) for x in xs]
    total = np.sum(qs, axis=0)
    avg = dequantize_sum(total, 5, 1.0, 15)
    assert np.allclose(avg, np.mean(xs, axis=0), atol=1.0 / scale(1.0, 15))
    assert np.allclose(dequantize_sum(total, 5, 1.0, 15, mean=False), avg * 5)
    with pytest.raises(QuantizationError):
        dequantize_sum(total, 0, 1.0, 15)
    with pytest.raises(QuantizationError):
        dequantize_sum(np.array([6 * 16383]), 5, 1.0, 15)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=-(2**30) + 1, max_value=2**30 - 1), max_size=40))
def test_score_exact(values: list[int]) -> None:
    assert score(np.array(values, dtype=np.int64)) == sum(v * v for v in values)


def test_score_no_overflow_and_max_score() -> None:
    q = np.full(100, 2**30 - 1, dtype=np.int64)  # each square ~2^60: int64 sum would overflow
    assert score(q) == 100 * (2**30 - 1) ** 2
    assert max_score(10_000, 15) == 10_000 * 16383**2
    q15 = np.full(7, -16383, dtype=np.int64)
    assert score(q15) == max_score(7, 15)
    assert score(np.zeros(0, dtype=np.int64)) == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda: quantize(np.array([np.nan]), 1.0),
        lambda: quantize(np.array([np.inf]), 1.0),
        lambda: quantize(np.array([1.0]), 0.0),
        lambda: quantize(np.array([1.0]), float("nan")),
        lambda: quantize(np.array([1.0]), 1.0, bits=1),
        lambda: quantize(np.array([1.0]), 1.0, bits=64),
        lambda: score(np.array([1.5])),
        lambda: max_score(-1),
    ],
)
def test_bad_input(call: object) -> None:
    with pytest.raises(QuantizationError):
        call()  # type: ignore[operator]
