"""BSGS recovery of bounded discrete logs: baby steps, giant steps, identity, range errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.bsgs import (
    BabyStepTable,
    DecryptionRangeError,
    PointError,
    baby_step_table,
    parse_point,
    point_mul_bytes,
    serialize_point,
    solve,
)
from aggregator.nddfe import KeyPair

BASE = KeyPair.from_secret((0xB0B).to_bytes(32, "big")).public


def points_for(values: list[int]) -> tuple[np.ndarray, np.ndarray]:
    comp = np.zeros((len(values), 33), dtype=np.uint8)
    ident = np.zeros(len(values), dtype=bool)
    for p, v in enumerate(values):
        if v == 0:
            ident[p] = True
            comp[p, 0] = 2
        else:
            comp[p] = np.frombuffer(point_mul_bytes(BASE, v), dtype=np.uint8)
    return comp, ident


@settings(max_examples=30, deadline=None)
@given(
    st.integers(min_value=1, max_value=5000),
    st.sampled_from([1, 7, 64, 1000]),
    st.data(),
)
def test_recovers_values_in_range(bound: int, max_table: int, data: st.DataObject) -> None:
    values = data.draw(st.lists(st.integers(min_value=-bound, max_value=bound), max_size=8))
    values += [bound, -bound]  # always include the edges
    comp, ident = points_for(values)
    got = solve(comp, ident, BASE, bound, max_table=max_table)
    assert got.tolist() == values


def test_identity_hit_during_giant_steps() -> None:
    m = 10
    step = 2 * m + 1
    values = [step, -step, 2 * step, 3 * step + m, -(3 * step + m)]
    comp, ident = points_for(values)
    assert solve(comp, ident, BASE, 10 * step, max_table=m).tolist() == values


@pytest.mark.parametrize("max_table", [5, 1000])
def test_out_of_range_raises_not_zero(max_table: int) -> None:
    comp, ident = points_for([3, 101, -102, 0])
    with pytest.raises(DecryptionRangeError) as err:
        solve(comp, ident, BASE, 100, max_table=max_table)
    assert err.value.positions.tolist() == [1, 2]


def test_random_point_is_a_range_error() -> None:
    junk = np.frombuffer(KeyPair.generate().public, dtype=np.uint8).reshape(1, 33)
    with pytest.raises(DecryptionRangeError):
        solve(junk, np.zeros(1, dtype=bool), BASE, 1000, max_table=64)


def test_bound_zero() -> None:
    comp, ident = points_for([0, 0])
    assert solve(comp, ident, BASE, 0).tolist() == [0, 0]
    comp, ident = points_for([1])
    with pytest.raises(DecryptionRangeError):
        solve(comp, ident, BASE, 0)


def test_hit_is_verified_on_full_x() -> None:
    table = baby_step_table(BASE, 50)
    comp, _ = points_for([17])
    forged = comp.copy()
    forged[0, 20] ^= 1  # same 64-bit key, different x
    vals, found = table.lookup(forged)
    assert not found[0] and vals[0] == 0
    vals, found = table.lookup(comp)
    assert found[0] and vals[0] == 17


def test_table_is_cached_and_sign_from_parity() -> None:
    assert baby_step_table(BASE, 50) is baby_step_table(BASE, 50)
    t = BabyStepTable(BASE, 20)
    comp, _ = points_for([5, -5, 20, -20])
    vals, found = t.lookup(comp)
    assert found.all() and vals.tolist() == [5, -5, 20, -20]


@pytest.mark.parametrize(
    "bad",
    [b"\x02" + b"\x00" * 31, b"\x04" + b"\x00" * 32, b"\x02" + b"\x00" * 32, "02" * 33, None],
)
def test_parse_point_errors(bad: object) -> None:
    with pytest.raises(PointError):
        parse_point(bad)  # type: ignore[arg-type]


def test_parse_round_trip() -> None:
    assert serialize_point(parse_point(BASE)) == BASE
