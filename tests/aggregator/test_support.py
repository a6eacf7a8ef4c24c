"""Round support selection: deterministic, top-k + exploration, hash format."""

from __future__ import annotations

import numpy as np
import pytest
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.support import SupportError, select_support, support_hash, validate_indices


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=1, max_value=300),
    st.data(),
    st.binary(min_size=0, max_size=40),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_shape_and_determinism(d: int, data: st.DataObject, seed: bytes, frac: float) -> None:
    k = data.draw(st.integers(min_value=0, max_value=d))
    agg = np.random.default_rng(d).normal(size=d)
    agg[::3] = 0.0
    s1 = select_support(agg, k, seed, explore_fraction=frac)
    s2 = select_support(agg.copy(), k, bytes(seed), explore_fraction=frac)
    assert np.array_equal(s1, s2)
    assert s1.dtype == np.int64 and s1.size == k
    assert np.all(np.diff(s1) > 0) and (k == 0 or (s1[0] >= 0 and s1[-1] < d))


def test_top_part_is_largest_magnitudes() -> None:
    d, k = 1000, 50
    agg = np.zeros(d)
    big = np.arange(0, 1000, 25)  # 40 big coordinates
    agg[big] = np.linspace(1, 2, big.size) * np.where(big % 2, 1, -1)
    s = select_support(agg, k, b"seed", explore_fraction=0.2)  # 10 explore, 40 top
    assert set(big.tolist()) <= set(s.tolist())


def test_zero_entries_go_to_exploration_and_seed_matters() -> None:
    d, k = 500, 20
    agg = np.zeros(d)
    agg[7] = 3.0
    a = select_support(agg, k, b"block-a", explore_fraction=0.1)
    b = select_support(agg, k, b"block-b", explore_fraction=0.1)
    assert 7 in a and 7 in b and a.size == b.size == k
    assert not np.array_equal(a, b)


def test_ties_broken_by_index() -> None:
    agg = np.ones(10)
    s = select_support(agg, 4, b"x", explore_fraction=0.0)
    assert s.tolist() == [0, 1, 2, 3]


def test_first_round_is_pure_exploration() -> None:
    s = select_support(None, 10, b"genesis", d=100)
    assert s.size == 10
    assert np.array_equal(s, select_support(None, 10, b"genesis", d=100))


def test_support_hash_is_keccak_of_uint32_le() -> None:
    idx = np.array([0, 1, 256, 2**32 - 1])
    expected = keccak(b"".join(int(i).to_bytes(4, "little") for i in idx))
    assert support_hash(idx) == expected
    assert len(support_hash(np.array([], dtype=np.int64))) == 32
    # known vector
    assert support_hash(np.array([1, 2, 3])).hex() == keccak(bytes.fromhex("010000000200000003000000")).hex()


@pytest.mark.parametrize(
    "bad",
    [np.array([2, 1]), np.array([1, 1]), np.array([-1, 2]), np.array([0, 2**32]), np.array([[1, 2]]), np.array([0.5])],
)
def test_bad_indices(bad: np.ndarray) -> None:
    with pytest.raises(SupportError):
        support_hash(bad)


def test_bad_selection_inputs() -> None:
    with pytest.raises(SupportError):
        select_support(np.array([1.0, np.nan]), 1, b"s")
    with pytest.raises(SupportError):
        select_support(np.ones(5), 6, b"s")
    with pytest.raises(SupportError):
        select_support(None, 1, b"s")
    with pytest.raises(SupportError):
        select_support(np.ones(5), 1, "seed")  # type: ignore[arg-type]
    with pytest.raises(SupportError):
        select_support(np.ones(5), 2, b"s", d=6)
    with pytest.raises(SupportError):
        validate_indices(np.array([0, 5]), d=5)


def test_layer_budgets_favour_small_layers_and_sum_to_k():
    from aggregator.support import layer_budgets

    sizes = [400, 16, 12800, 32, 200704, 128, 1280, 10]
    budgets = layer_budgets(2154, sizes)
    assert sum(budgets) == 2154 and all(1 <= b <= s for b, s in zip(budgets, sizes, strict=True))
    assert budgets[2] / sizes[2] > budgets[4] / sizes[4]  # conv2 gets a larger share than fc1
    assert layer_budgets(10**9, sizes) == sizes  # capped at each layer's size


def test_layered_support_is_deterministic_and_within_layers():
    from aggregator.support import select_support_layered

    sizes = [50, 5, 500]
    prev = np.random.default_rng(0).normal(size=555)
    a = select_support_layered(prev, 60, b"seed", sizes, 0.5)
    b = select_support_layered(prev, 60, b"seed", sizes, 0.5)
    assert np.array_equal(a, b) and a.size == 60 and len(np.unique(a)) == 60
    assert ((a >= 50) & (a < 55)).sum() >= 1  # the tiny layer is never starved
    with pytest.raises(SupportError):
        select_support_layered(prev[:-1], 60, b"seed", sizes)
