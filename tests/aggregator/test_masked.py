"""Masked backend: exact sums mod 2^64, dropouts, wrong keys detected, malformed bytes, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator import masked, nddfe
from aggregator.bsgs import DecryptionRangeError
from aggregator.masked import MaskedError

TASK, ROUND = 5, 9


def _idx(x) -> np.ndarray:
    """Support 0..k-1 for a test vector."""
    return np.arange(np.asarray(x).size)


@settings(max_examples=30, deadline=None)
@given(
    n_all=st.integers(min_value=1, max_value=6),
    k=st.integers(min_value=0, max_value=64),
    bits=st.integers(min_value=2, max_value=31),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    data=st.data(),
)
def test_sum_of_any_subset(n_all: int, k: int, bits: int, seed: int, data: st.DataObject, publisher, miners) -> None:
    rng = np.random.default_rng(seed)
    max_abs = (1 << (bits - 1)) - 1
    xs = [rng.integers(-max_abs, max_abs + 1, size=k) for _ in range(n_all)]
    ys = [masked.encrypt(x, _idx(x), TASK, ROUND, m.secret, publisher.public, max_abs=max_abs)
          for x, m in zip(xs, miners, strict=False)]
    subset = data.draw(st.lists(st.integers(0, n_all - 1), min_size=1, max_size=n_all, unique=True))
    key = masked.functional_key(publisher.secret, [miners[i].public for i in subset], TASK, ROUND, np.arange(k))
    wire = [masked.ciphertext_from_bytes(masked.ciphertext_to_bytes(ys[i]), k) for i in subset]
    key = masked.key_from_bytes(masked.key_to_bytes(key), k)
    got = masked.decrypt_sum(wire, key, len(subset) * max_abs)
    assert got.dtype == np.int64
    assert np.array_equal(got, np.sum([xs[i] for i in subset], axis=0) if k else np.zeros(0))


def test_ciphertext_hides_value_and_masks_are_fresh(publisher, miners) -> None:
    x = np.zeros(1000, dtype=np.int64)
    y = masked.encrypt(x, _idx(x), TASK, ROUND, miners[0].secret, publisher.public)
    assert len(np.unique(y)) == 1000  # zero vector -> uniformly random words
    y2 = masked.encrypt(x, _idx(x), TASK, ROUND + 1, miners[0].secret, publisher.public)
    assert not np.any(y == y2)
    dh = nddfe.dh_point(publisher.secret, miners[0].public)
    assert np.array_equal(masked.mask_vector(dh, TASK, ROUND, np.arange(1000)), y)


def test_wrong_key_or_set_is_a_range_error(publisher, miners) -> None:
    rng = np.random.default_rng(1)
    xs = [rng.integers(-100, 101, size=20) for _ in range(3)]
    ys = [masked.encrypt(x, _idx(x), TASK, ROUND, m.secret, publisher.public) for x, m in zip(xs, miners, strict=False)]
    key01 = masked.functional_key(publisher.secret, [m.public for m in miners[:2]], TASK, ROUND, np.arange(20))
    with pytest.raises(DecryptionRangeError) as err:
        masked.decrypt_sum([ys[0], ys[2]], key01, 2 * 16383)
    assert err.value.positions.size == 20
    with pytest.raises(DecryptionRangeError):
        masked.decrypt_sum(ys, key01, 3 * 16383)
    other_round = masked.functional_key(publisher.secret, [m.public for m in miners[:2]], TASK, ROUND + 1, np.arange(20))
    with pytest.raises(DecryptionRangeError):
        masked.decrypt_sum(ys[:2], other_round, 2 * 16383)


def test_out_of_range_and_int64_min(publisher, miners) -> None:
    y = masked.encrypt(np.array([50, -50]), _idx(np.array([50, -50])), TASK, ROUND, miners[0].secret, publisher.public)
    key = masked.functional_key(publisher.secret, [miners[0].public], TASK, ROUND, np.arange(2))
    assert masked.decrypt_sum([y], key, 50).tolist() == [50, -50]
    with pytest.raises(DecryptionRangeError):
        masked.decrypt_sum([y], key, 49)
    # a forged ciphertext decrypting to INT64_MIN must not slip through abs()
    forged = key + np.array([2**63, 0], dtype=np.uint64)
    with pytest.raises(DecryptionRangeError):
        masked.decrypt_sum([forged], key, 100)


def test_malformed(publisher, miners) -> None:
    y = masked.encrypt(np.array([1, 2, 3]), _idx(np.array([1, 2, 3])), TASK, ROUND, miners[0].secret, publisher.public)
    blob = masked.ciphertext_to_bytes(y)
    for bad in (blob[:-1], b"MMQ1" + blob[4:], b"", 123):
        with pytest.raises(MaskedError):
            masked.ciphertext_from_bytes(bad)  # type: ignore[arg-type]
    with pytest.raises(MaskedError):
        masked.ciphertext_from_bytes(blob, expected_k=4)
    with pytest.raises(MaskedError):
        masked.key_from_bytes(blob)
    with pytest.raises(MaskedError):
        masked.encrypt(np.array([1.5]), _idx(np.array([1.5])), TASK, ROUND, miners[0].secret, publisher.public)
    with pytest.raises(MaskedError):
        masked.encrypt(np.array([1 << 14]), _idx(np.array([1 << 14])), TASK, ROUND, miners[0].secret, publisher.public)
    key = masked.functional_key(publisher.secret, [miners[0].public], TASK, ROUND, np.arange(3))
    with pytest.raises(MaskedError):
        masked.decrypt_sum([y[:2]], key, 10)
    with pytest.raises(MaskedError):
        masked.decrypt_sum([], key, 10)
    with pytest.raises(MaskedError):
        masked.functional_key(publisher.secret, [miners[0].public] * 2, TASK, ROUND, np.arange(3))


def test_speed_n10_k10000(publisher, miners) -> None:
    n, k = 8, 10_000
    rng = np.random.default_rng(0)
    xs = [rng.integers(-16383, 16384, size=k) for _ in range(n)]
    t = time.perf_counter()
    ys = [masked.encrypt(x, _idx(x), TASK, ROUND, m.secret, publisher.public) for x, m in zip(xs, miners, strict=True)]
    enc = (time.perf_counter() - t) / n
    t = time.perf_counter()
    key = masked.functional_key(publisher.secret, [m.public for m in miners], TASK, ROUND, np.arange(k))
    key_s = time.perf_counter() - t
    t = time.perf_counter()
    got = masked.decrypt_sum(ys, key, n * 16383)
    dec = time.perf_counter() - t
    assert np.array_equal(got, np.sum(xs, axis=0))
    assert max(enc, key_s, dec) < 0.5  # targets are 50 ms; generous for a loaded CI box


def test_same_epoch_two_plans_attack_fails(publisher, miners) -> None:
    """Defect 4 (repeated epoch, positional masks): the aggregator sends one miner two plans of the
    same epoch with shifted supports. With positional masks y_A - y_B = q_A - q_B leaked the update;
    masks bound to the global coordinate and the support hash share nothing between the two plans."""
    rng = np.random.default_rng(3)
    support_a = np.arange(0, 200, 2)
    support_b = support_a + 1  # same size, other coordinates: positions line up, coordinates do not
    q_a = rng.integers(-1000, 1001, size=support_a.size)
    q_b = rng.integers(-1000, 1001, size=support_b.size)
    y_a = masked.encrypt(q_a, support_a, TASK, ROUND, miners[0].secret, publisher.public, word_bits=32)
    y_b = masked.encrypt(q_b, support_b, TASK, ROUND, miners[0].secret, publisher.public, word_bits=32)
    diff = (y_a - y_b).view(np.int32).astype(np.int64)
    assert np.count_nonzero(diff == q_a - q_b) <= 1  # the old leak was equality on every position
    # overlapping supports of one epoch: the shared coordinate gets unrelated masks too
    dh = nddfe.dh_point(publisher.secret, miners[0].public)
    m1 = masked.mask_vector(dh, TASK, ROUND, np.array([3, 5, 7]))
    m2 = masked.mask_vector(dh, TASK, ROUND, np.array([5, 7, 9]))
    assert not set(m1.tolist()) & set(m2.tolist())
    # and the masks are per global coordinate: a coordinate's mask does not move with its position
    m3 = masked.mask_vector(dh, TASK, ROUND, np.array([5, 7, 9]))
    assert np.array_equal(m2, m3) and m2[0] != m2[1]


def test_defect5_one_miner_amplification_is_bounded_by_the_sum_range(publisher, miners) -> None:
    """No per-miner range proof: a malicious miner can encrypt any word, and decryption only checks
    |sum| <= n*max. The documented bound (docs/crypto.md, "Malicious values"): one miner can put up to
    n*max - sum(others) on a coordinate (n*max when the others send 0), so it moves the mean by up to
    max instead of max/n; anything beyond the sum range fails the whole round, never silently."""
    n, max_abs, idx = 3, 16383, np.arange(2)
    honest = [np.array([0, 0]) for _ in range(n - 1)]
    evil = np.array([n * max_abs, n * max_abs + 1])  # coordinate 0 at the bound, coordinate 1 just past it
    ys = [masked.encrypt(x, idx, TASK, ROUND, m.secret, publisher.public) for x, m in zip(honest, miners, strict=False)]
    ys.append(masked.encrypt(evil, idx, TASK, ROUND, miners[n - 1].secret, publisher.public, max_abs=n * max_abs + 1))
    key = masked.functional_key(publisher.secret, [m.public for m in miners[:n]], TASK, ROUND, idx)
    with pytest.raises(DecryptionRangeError) as err:
        masked.decrypt_sum(ys, key, n * max_abs)
    assert err.value.positions.tolist() == [1]  # only the coordinate past n*max is caught
    ys[-1] = masked.encrypt(evil - [0, 1], idx, TASK, ROUND, miners[n - 1].secret, publisher.public, max_abs=n * max_abs)
    assert masked.decrypt_sum(ys, key, n * max_abs).tolist() == [n * max_abs, n * max_abs]  # n x an honest maximum
