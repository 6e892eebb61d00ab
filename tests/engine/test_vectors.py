"""Row lengths: numpy's own norm to a unit in the last place, for float32 and float64 rows, zeros included."""

from __future__ import annotations

import numpy as np
import pytest

from engine.vectors import row_norms


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
