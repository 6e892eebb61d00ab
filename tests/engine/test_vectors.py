"""Row lengths: numpy's own norm to a unit in the last place, for float32 and float64 rows, zeros included; column
bounds and rows' any: numpy's own, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from engine.vectors import any_in_row, column_bounds, row_norms


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_norms_are_numpys(dtype: type) -> None:
    rng = np.random.default_rng(0)
    a = (rng.normal(size=(1000, 3)) * 10.0 ** rng.integers(-6, 6, size=(1000, 1))).astype(dtype)
    a[:3] = 0.0
    expected = np.linalg.norm(a, axis=1)
    got = row_norms(a)
    assert got.dtype == dtype and got.shape == (1000,)
    assert np.all(got[:3] == 0.0)
    np.testing.assert_allclose(got, expected, rtol=2 * np.finfo(dtype).eps)
    assert row_norms(a, keepdims=True).shape == (1000, 1)
    assert np.array_equal(row_norms(a, keepdims=True)[:, 0], got)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_column_bounds_are_numpys(dtype: type) -> None:
    rng = np.random.default_rng(1)
    a = (rng.normal(size=(500, 3)) * 1000.0).astype(dtype)
    for rows in (a, a[:1], a[::7], np.asfortranarray(a)):
        low, high = column_bounds(rows)
        assert low.dtype == dtype and np.array_equal(low, rows.min(axis=0))
        assert np.array_equal(high, rows.max(axis=0))


def test_any_in_row_is_numpys() -> None:
    rng = np.random.default_rng(2)
    for columns in (1, 3, 8):
        m = rng.random((400, columns)) < 0.2
        assert np.array_equal(any_in_row(m), m.any(axis=1))
    m = rng.random((400, 3)) < 0.5
    before = m.copy()
    any_in_row(m)
    assert np.array_equal(m, before)  # the input is left as it was
