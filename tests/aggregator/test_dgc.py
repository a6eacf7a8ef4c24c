"""DGC: mass conservation, momentum correction/masking, clipping, warm-up, serialization, sparse bytes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.dgc import DGCConfig, DGCError, DGCState, SparseUpdate, k_for_density, warmup_density


def test_warmup_schedule() -> None:
    got = [warmup_density(r, 0.001) for r in range(1, 7)]
    assert got == pytest.approx([0.25, 0.0625, 0.015625, 0.00390625, 0.001, 0.001])
    assert warmup_density(1, 0.5) == 0.5  # never below target
    assert warmup_density(3, 0.01, warmup_rounds=0) == 0.01
    with pytest.raises(DGCError):
        warmup_density(0, 0.01)
    with pytest.raises(DGCError):
        warmup_density(1, 0.0)
    assert k_for_density(1000, 0.01) == 10 and k_for_density(10, 1e-6) == 1 and k_for_density(10, 1.0) == 10


@settings(max_examples=30, deadline=None)
@given(
    st.integers(min_value=1, max_value=200),
    st.sampled_from(["shared", "local"]),
    st.floats(min_value=0.0, max_value=0.95),
    st.integers(min_value=0, max_value=2**31),
)
def test_mass_conservation(d: int, mode: str, momentum: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cfg = DGCConfig(density=0.1, momentum=momentum, support=mode)  # type: ignore[arg-type]
    state = DGCState(d, cfg)
    for rnd in range(1, 5):
        g = rng.normal(size=d).astype(np.float32)
        before = state.velocity.copy()
        mom_before = state.momentum.copy()
        support = None
        if mode == "shared":
            k = int(rng.integers(0, d + 1))
            support = np.sort(rng.choice(d, size=k, replace=False))
        accumulated = copy.deepcopy(state).accumulate(g).copy()
        sent = state.step(g, rnd, support)
        # sent + residual == accumulated, exactly coordinate-wise
        assert np.array_equal(sent.to_dense() + state.residual, accumulated)
        # and the accumulation itself is v + (m*u + g)
        assert np.allclose(accumulated, before + np.float32(momentum) * mom_before + g, rtol=1e-5, atol=1e-5)
        assert np.all(state.residual[sent.indices] == 0)
        assert np.all(state.momentum[sent.indices] == 0)  # momentum factor masking
        if mode == "local":
            assert sent.k == k_for_density(d, cfg.density_at(rnd))


def test_sent_plus_residual_exact_without_momentum() -> None:
    rng = np.random.default_rng(0)
    state = DGCState(100, DGCConfig(support="local", density=0.05))
    total_in = np.zeros(100, dtype=np.float64)
    total_sent = np.zeros(100, dtype=np.float64)
    for rnd in range(1, 8):
        g = rng.normal(size=100).astype(np.float32)
        total_in += g
        total_sent += state.step(g, rnd).to_dense()
    # error feedback: everything that went in was either sent or is still in the residual
    assert np.allclose(total_sent + state.residual, total_in, atol=1e-5)


def test_local_topk_picks_largest() -> None:
    state = DGCState(10, DGCConfig(support="local", density=0.2, warmup_rounds=0))
    g = np.array([0, 5, -9, 1, 0, 0, 2, 0, 0, 0.5], dtype=np.float32)
    sent = state.step(g, 1)
    assert sent.indices.tolist() == [1, 2] and sent.values.tolist() == [5, -9]


def test_clipping() -> None:
    state = DGCState(4, DGCConfig(clip_norm=1.0, support="shared"))
    sent = state.step(np.array([3.0, 4.0, 0.0, 0.0]), 1, np.arange(4))
    assert np.linalg.norm(sent.values) == pytest.approx(1.0, rel=1e-6)


def test_momentum_correction_accumulates() -> None:
    state = DGCState(2, DGCConfig(momentum=0.5, support="shared", momentum_masking=False))
    state.step(np.array([1.0, 1.0]), 1, np.array([], dtype=np.int64))
    state.step(np.array([1.0, 1.0]), 2, np.array([], dtype=np.int64))
    # u1 = 1, v1 = 1; u2 = 0.5 + 1 = 1.5, v2 = 2.5
    assert state.momentum.tolist() == [1.5, 1.5] and state.velocity.tolist() == [2.5, 2.5]


def test_state_round_trip_safetensors() -> None:
    rng = np.random.default_rng(1)
    a = DGCState(50, DGCConfig(momentum=0.9, support="local"))
    for rnd in range(1, 4):
        a.step(rng.normal(size=50), rnd)
    blob = a.to_bytes()
    assert b"pickle" not in blob and blob[8:9] == b"{"  # safetensors: u64 header length + JSON
    b = DGCState.from_bytes(blob, a.config)
    assert np.array_equal(a.momentum, b.momentum) and np.array_equal(a.velocity, b.velocity)
    assert b.steps == 3 and b.d == 50
    g = rng.normal(size=50)
    assert np.array_equal(a.step(g, 4).values, b.step(g, 4).values)


@pytest.mark.parametrize("blob", [b"", b"garbage", b"\x80\x04\x95" + b"\x00" * 20])
def test_state_rejects_garbage(blob: bytes) -> None:
    with pytest.raises(DGCError):
        DGCState.from_bytes(blob)


def test_bad_step_inputs() -> None:
    s = DGCState(5, DGCConfig(support="shared"))
    with pytest.raises(DGCError, match="NaN"):
        s.step(np.array([1, np.nan, 0, 0, 0]), 1, np.arange(2))
    with pytest.raises(DGCError, match="d=5"):
        s.step(np.ones(4), 1, np.arange(2))
    with pytest.raises(DGCError, match="support"):
        s.step(np.ones(5), 1)
    with pytest.raises(DGCError):
        s.step(np.ones(5), 1, np.array([3, 1]))
    with pytest.raises(DGCError):
        DGCState(5, DGCConfig(support="local")).step(np.ones(5), 1, np.arange(2))
    with pytest.raises(DGCError):
        DGCConfig(momentum=1.0)
    with pytest.raises(DGCError):
        DGCConfig(support="global")  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=1, max_value=100), st.booleans(), st.integers(min_value=0, max_value=1000))
def test_sparse_encoding_exact_size(d: int, with_idx: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(0, d + 1))
    idx = np.sort(rng.choice(d, size=k, replace=False)).astype(np.int64)
    up = SparseUpdate(idx, rng.normal(size=k).astype(np.float32), d)
    blob = up.to_bytes(with_idx)
    assert len(blob) == up.nbytes(with_idx) == 13 + 4 * k * (2 if with_idx else 1)
    back = SparseUpdate.from_bytes(blob, None if with_idx else idx)
    assert np.array_equal(back.indices, idx) and np.array_equal(back.values, up.values) and back.d == d


def test_sparse_decode_errors() -> None:
    up = SparseUpdate(np.array([1, 3]), np.array([1.0, 2.0], dtype=np.float32), 5)
    blob = up.to_bytes(False)
    with pytest.raises(DGCError, match="support"):
        SparseUpdate.from_bytes(blob)
    with pytest.raises(DGCError):
        SparseUpdate.from_bytes(blob[:-1], np.array([1, 3]))
    with pytest.raises(DGCError):
        SparseUpdate.from_bytes(b"XXXX" + blob[4:], np.array([1, 3]))
    with pytest.raises(DGCError):
        SparseUpdate.from_bytes(up.to_bytes(True)[:13] + np.array([3, 1], "<u4").tobytes() + blob[13:])
