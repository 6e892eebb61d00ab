"""Symmetric Gauss-Seidel sweeps over a CSR matrix in row blocks (numba): the CPU solve's preconditioner.

:func:`engine.solver.cg.sgs_pcg` runs conjugate gradients on the split system
(I + L)^-1 S A S (I + U)^-1, where S = diag(A)^-1/2 scales A to a unit
diagonal and L, U (= L^T) are its strict lower and upper triangles kept
inside each thread's block of rows.  One product with that operator is one
backward sweep of each block's upper triangle and one forward sweep of its
lower triangle plus the couplings that leave the block (Eisenstat's trick):
a single pass over the matrix, as one product with A, where applying the
preconditioner beside a product would cost two.

Nothing is copied: the scaling is applied on the fly (S A S entry ij is
s_i a_ij s_j, so each sweep reads s * its vector) and each row's triangles are
ranges of its sorted columns, found once per matrix (:func:`row_positions`).
Rows and entries of a backward sweep run in decreasing order and a forward
sweep's in increasing order, so that memory is read in one direction and the
entry that waits for the row just solved (the voxel next to it) comes last.

Indices are cast to unsigned before indexing (see :mod:`engine.solver.kernels`).

Measured (issue 12, session 18) on the sphere scan's two finest levels (89k and 152k unknowns, 8.7M and 13M
non-zeros, matrices from a run, to the run's tolerances 1e-2 and 1e-3, two threads): Jacobi 68 and 58
iterations in 225-276 and 272-369 ms, these sweeps 27 and 23 iterations in 174-217 and 226-279 ms.  A sweep
pair costs 1.5-2x torch's product (5.5-8 against 3.3-4 ms on 13M non-zeros): the sweeps scale worse over two
threads than MKL's product.  In the pipeline (fresh processes alternating with the Jacobi solve, medians of
four) the solve stage went 0.61 -> 0.42 s on the torus scan without normals, 0.56 -> 0.49 s on the sphere scan.
Where few iterations are needed they do not pay: the 1M clean bunny's finest level (165M non-zeros) took 7
iterations against Jacobi's 15, a sweep pair 85-90 ms against a 46 ms product, 0.74-0.96 s against 0.70-0.84 s.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_U = np.uint32


UNSORTED, NO_DIAGONAL = 1, 2  # what :func:`row_positions` found wrong (0: nothing)


@njit(cache=True, nogil=True)
def row_positions(crow: np.ndarray, cols: np.ndarray, lo: int, hi: int, first: np.ndarray, diag: np.ndarray,
                  last: np.ndarray) -> int:
    """For rows lo:hi of a CSR matrix, the entries of the block lo:hi: columns below the row from ``first`` to
    ``diag`` (the diagonal's place), above it from ``diag + 1`` to ``last``; entries before ``first`` and from
    ``last`` on leave the block.  0, or ``UNSORTED`` where a row's columns do not increase (the assembly's do
    when the level's voxels are in (z, y, x) order; watertight mode's added voxels are not) or
    ``NO_DIAGONAL`` where a row lacks its diagonal entry.

    The order check reads every column once (88-93 ms on the 1M bunny's finest level, 165M non-zeros: about
    two of torch's products there); the diagonal is then found by bisection and the block's ends from the row's
    ends inwards, since most rows have no entry outside their block (27-34 ms there).
    """
    for i in range(_U(lo), _U(hi)):
        start, end = _U(crow[i]), _U(crow[i + _U(1)])
        for e in range(start + _U(1), end):
            if cols[e] <= cols[e - _U(1)]:
                return UNSORTED
    for i in range(_U(lo), _U(hi)):
        start, end = _U(crow[i]), _U(crow[i + _U(1)])
        a, b = start, end
        while a < b:
            mid = (a + b) >> _U(1)
            if cols[mid] < i:
                a = mid + _U(1)
            else:
                b = mid
        if a == end or cols[a] != i:
            return NO_DIAGONAL
        diag[i] = a
        k = start
        while k < a and cols[k] < lo:
            k += _U(1)
        first[i] = k
        k = end
        while k > a + _U(1) and cols[k - _U(1)] >= hi:
            k -= _U(1)
        last[i] = k
    return 0


@njit(cache=True, nogil=True)
def backward_sweep(cols: np.ndarray, vals: np.ndarray, diag: np.ndarray, last: np.ndarray, s: np.ndarray,
                   v: np.ndarray, lo: int, hi: int, t: np.ndarray, st: np.ndarray) -> None:
    """t = (I + U)^-1 v on rows lo:hi (U the block's strict upper triangle of S A S), and st = s * t."""
    for back in range(_U(hi - lo)):
        i = _U(hi - 1) - back
        a0 = a1 = a2 = a3 = np.float32(0.0)
        stop = _U(diag[i] + 1)
        k = _U(last[i])
        while k >= stop + _U(4):
            a0 += vals[k - _U(1)] * st[_U(cols[k - _U(1)])]
            a1 += vals[k - _U(2)] * st[_U(cols[k - _U(2)])]
            a2 += vals[k - _U(3)] * st[_U(cols[k - _U(3)])]
            a3 += vals[k - _U(4)] * st[_U(cols[k - _U(4)])]
            k -= _U(4)
        while k > stop:
            k -= _U(1)
            a0 += vals[k] * st[_U(cols[k])]
        ti = v[i] - s[i] * ((a0 + a1) + (a2 + a3))
        t[i] = ti
        st[i] = s[i] * ti


@njit(cache=True, nogil=True)
def forward_sweep(crow: np.ndarray, cols: np.ndarray, vals: np.ndarray, first: np.ndarray, diag: np.ndarray,
                  last: np.ndarray, s: np.ndarray, v: np.ndarray, t: np.ndarray, st: np.ndarray, lo: int, hi: int,
                  out: np.ndarray, sz: np.ndarray) -> None:
    """out = t + (I + L)^-1 (v - t + R t) on rows lo:hi, after :func:`backward_sweep` gave t and st = s * t
    for every block (R: the couplings of S A S that leave the block); ``sz`` is scratch.

    With t = st = 0 it is the plain forward solve (I + L)^-1 v.
    """
    for i in range(_U(lo), _U(hi)):
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for e in range(_U(crow[i]), _U(first[i])):  # the couplings that leave the block, to t
            a0 += vals[e] * st[_U(cols[e])]
        for e in range(_U(last[i]), _U(crow[i + _U(1)])):
            a1 += vals[e] * st[_U(cols[e])]
        k = _U(first[i])
        stop = _U(diag[i])
        while k + _U(4) <= stop:
            a0 -= vals[k] * sz[_U(cols[k])]
            a1 -= vals[k + _U(1)] * sz[_U(cols[k + _U(1)])]
            a2 -= vals[k + _U(2)] * sz[_U(cols[k + _U(2)])]
            a3 -= vals[k + _U(3)] * sz[_U(cols[k + _U(3)])]
            k += _U(4)
        while k < stop:
            a0 -= vals[k] * sz[_U(cols[k])]
            k += _U(1)
        zi = v[i] - t[i] + s[i] * ((a0 + a1) + (a2 + a3))
        sz[i] = s[i] * zi
        out[i] = t[i] + zi


@njit(cache=True, nogil=True)
def lower_product(cols: np.ndarray, vals: np.ndarray, first: np.ndarray, diag: np.ndarray, s: np.ndarray,
                  v: np.ndarray, lo: int, hi: int, out: np.ndarray) -> None:
    """out = S^-1 (I + L) v on rows lo:hi: the true residual of the split system's residual v."""
    for i in range(_U(lo), _U(hi)):
        acc = np.float32(0.0)
        for k in range(_U(first[i]), _U(diag[i])):
            j = _U(cols[k])
            acc += vals[k] * (s[j] * v[j])
        out[i] = v[i] / s[i] + acc


@njit(cache=True, nogil=True)
def leaving_couplings(crow: np.ndarray, cols: np.ndarray, vals: np.ndarray, last: np.ndarray, rows: np.ndarray,
                      st: np.ndarray, g: np.ndarray) -> None:
    """g[k] -= a_jk st_j for the entries of the upper triangle that leave row j's block (rows ``rows``, k in a
    later block): the couplings to earlier blocks that :func:`forward_sweep_upper` finds in ``g``.  Serial:
    two blocks may reach the same row."""
    for q in range(rows.shape[0]):
        j = _U(rows[q])
        sj = st[j]
        for e in range(_U(last[j]), _U(crow[j + _U(1)])):
            g[_U(cols[e])] -= vals[e] * sj


@njit(cache=True, nogil=True)
def forward_sweep_upper(crow: np.ndarray, cols: np.ndarray, vals: np.ndarray, last: np.ndarray, s: np.ndarray,
                        v: np.ndarray, t: np.ndarray, st: np.ndarray, lo: int, hi: int, out: np.ndarray,
                        g: np.ndarray) -> None:
    """:func:`forward_sweep` for a matrix that stores its upper triangle only: each row's lower triangle is
    the column above it, so a solved row scatters its share to the rows below it in the block, through ``g``
    (zeros, or what :func:`leaving_couplings` put there; each row's entry is read and set back to zero)."""
    for i in range(_U(lo), _U(hi)):
        a0 = a1 = np.float32(0.0)
        k, end = _U(last[i]), _U(crow[i + _U(1)])
        while k + _U(2) <= end:  # the couplings that leave the block, to t
            a0 += vals[k] * st[_U(cols[k])]
            a1 += vals[k + _U(1)] * st[_U(cols[k + _U(1)])]
            k += _U(2)
        if k < end:
            a0 += vals[k] * st[_U(cols[k])]
        zi = v[i] - t[i] + s[i] * ((a0 + a1) - g[i])
        g[i] = np.float32(0.0)
        szi = s[i] * zi
        out[i] = t[i] + zi
        for e in range(_U(crow[i]) + _U(1), _U(last[i])):
            g[_U(cols[e])] += vals[e] * szi


@njit(cache=True, nogil=True)
def lower_product_upper(crow: np.ndarray, cols: np.ndarray, vals: np.ndarray, last: np.ndarray, s: np.ndarray,
                        v: np.ndarray, lo: int, hi: int, out: np.ndarray) -> None:
    """:func:`lower_product` for a matrix that stores its upper triangle only (column scatter within the block)."""
    for i in range(_U(lo), _U(hi)):
        out[i] = v[i] / s[i]
    for i in range(_U(lo), _U(hi)):
        svi = s[i] * v[i]
        for e in range(_U(crow[i]) + _U(1), _U(last[i])):
            out[_U(cols[e])] += vals[e] * svi


def warm() -> None:
    """Load (or compile) each sweep once, on a 1 x 1 matrix, with the argument types of the solve."""
    crow, cols = np.array([0, 1], np.int32), np.zeros(1, np.int32)
    vals, one = np.ones(1, np.float32), np.ones(1, np.float32)
    first, diag, last = (np.zeros(1, np.int32) for _ in range(3))
    row_positions(crow, cols, 0, 1, first, diag, last)
    t, st, out, sz = (np.zeros(1, np.float32) for _ in range(4))
    backward_sweep(cols, vals, diag, last, one, one, 0, 1, t, st)
    forward_sweep(crow, cols, vals, first, diag, last, one, one, t, st, 0, 1, out, sz)
    lower_product(cols, vals, first, diag, one, one, 0, 1, out)
    leaving_couplings(crow, cols, vals, last, np.zeros(0, np.int64), st, sz)
    forward_sweep_upper(crow, cols, vals, last, one, one, t, st, 0, 1, out, sz)
    lower_product_upper(crow, cols, vals, last, one, one, 0, 1, out)
