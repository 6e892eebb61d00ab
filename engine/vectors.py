"""Row- and column-wise reductions of (N, D) arrays with short rows, which the cloud, the mesh, the solver and the
readers share (numpy only).

numpy reduces along a short axis row by row, paying a loop's set-up for each: ``np.linalg.norm(a, axis=1)``
squares into a fresh (N, 3) array and sums it along its rows (75-120 ms on 1M rows here, twice per cloud with
normals) where one ``einsum`` pass takes 8-10 ms and agrees to a unit in the last place; ``a.min(axis=0)`` of
1.7M vertices takes 48 ms, a column at a time 10 ms, the same values; ``m.any(axis=1)`` of a (3.5M, 3) mask 74 ms,
its columns ORed 11 ms.
"""

from __future__ import annotations

import numpy as np


def row_norms(a: np.ndarray, keepdims: bool = False) -> np.ndarray:
    """The Euclidean length of each row of ``a`` (N, D): (N,), or (N, 1) with ``keepdims``."""
    length = np.sqrt(np.einsum("ij,ij->i", a, a))
    return length[:, None] if keepdims else length


def column_bounds(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The least and greatest value of each column of ``a`` (N >= 1, D): two (D,) arrays of its dtype."""
    return (np.array([a[:, j].min() for j in range(a.shape[1])], a.dtype),
            np.array([a[:, j].max() for j in range(a.shape[1])], a.dtype))


def any_in_row(m: np.ndarray) -> np.ndarray:
    """Whether each row of the boolean ``m`` (N, D >= 1) holds a True: (N,)."""
    out = m[:, 0].copy()
    for j in range(1, m.shape[1]):
        out |= m[:, j]
    return out
