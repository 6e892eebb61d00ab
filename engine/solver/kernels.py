"""Compiled CPU loops of the system assembly (numba): the matrix built straight into CSR, with no (M, 125) stencil.

On the CPU, the torch assembly of :mod:`engine.solver.system` spends most of
its time, and sets the run's peak memory, in passes over (N, 125) and (M, 125)
temporaries: the cells' monomial moments, the float32 stencil that the cell
matrices are scattered into (957 MB on the finest level of the 1M-point
bunny), and its compaction into CSR.  Here the CSR structure comes first,
from the neighbour table, with each row's rank of every offset (one byte per
offset); cell matrices and smoothness stencils are then added straight into
the CSR values.  Moments are summed a batch of cells at a time over points
sorted by cell, so no (C, 125) table is held either.  The cell matrices
themselves stay one BLAS product per batch (torch).

The torch assembly stays the reference and the CUDA path;
tests/engine/test_system.py checks both against the point-by-point reference and each other.

The kernels are serial: numba's thread pools are either unsafe to enter from
two threads at once (workqueue; the engine solves chunks in threads) or need
an OpenMP or TBB library beside torch's own.  They are compiled once per
install and cached (``cache=True``: beside this file, or numba's per-user
cache where this folder is read-only).
"""

from __future__ import annotations

import numpy as np
from numba import njit

ABSENT = 255  # rank of an offset whose voxel does not exist


@njit(cache=True, nogil=True)
def csr_structure(nbr: np.ndarray, first: np.ndarray, second: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row starts (M + 1,) int64, columns (nnz,) int32 and ranks (M, 125) uint8 of the level's matrix.

    Offset o of row r is voxel nbr[nbr[r, first[o]], second[o]] (two steps through the (M, 27) neighbour
    table, as :func:`engine.solver.system._csr_columns`); a row lists its existing offsets in order, and
    ranks[r, o] is o's place in row r (``ABSENT`` where the voxel does not exist).
    """
    m = nbr.shape[0]
    crow = np.zeros(m + 1, np.int64)
    ranks = np.empty((m, 125), np.uint8)
    for r in range(m):
        count = 0
        for o in range(125):
            via = nbr[r, first[o]]
            if via >= 0 and nbr[via, second[o]] >= 0:
                ranks[r, o] = count
                count += 1
            else:
                ranks[r, o] = ABSENT
        crow[r + 1] = crow[r] + count
    cols = np.empty(crow[m], np.int32)
    for r in range(m):
        k = crow[r]
        for o in range(125):
            if ranks[r, o] != ABSENT:
                cols[k] = nbr[nbr[r, first[o]], second[o]]
                k += 1
    return crow, cols, ranks


@njit(cache=True, nogil=True)
def batch_moments(order: np.ndarray, cell_start: np.ndarray, u: np.ndarray, trust: np.ndarray, scale: float,
                  lo: int, hi: int) -> np.ndarray:
    """(hi - lo, 125) float64: scale * sum over the points of cells lo:hi of trust * u_x^i u_y^j u_z^k.

    Column i*25 + j*5 + k (x power slowest, as ``engine.solver.system._monomials``).  ``order`` (N,) lists
    the points cell by cell, cell c's from ``cell_start[c]`` to ``cell_start[c + 1]``; ``trust`` (N,) or
    empty (all 1).
    """
    out = np.zeros((hi - lo, 125))
    px, py, pz = np.empty(5), np.empty(5), np.empty(5)
    weighted = trust.shape[0] > 0
    for c in range(lo, hi):
        row = out[c - lo]
        for q in range(cell_start[c], cell_start[c + 1]):
            p = order[q]
            px[0] = trust[p] if weighted else 1.0  # the weight rides on the x powers
            py[0] = pz[0] = 1.0
            ux, uy, uz = np.float64(u[p, 0]), np.float64(u[p, 1]), np.float64(u[p, 2])
            for e in range(1, 5):
                px[e], py[e], pz[e] = px[e - 1] * ux, py[e - 1] * uy, pz[e - 1] * uz
            for i in range(5):
                for j in range(5):
                    a = px[i] * py[j]
                    base = i * 25 + j * 5
                    for k in range(5):
                        row[base + k] += a * pz[k]
    for c in range(hi - lo):
        for k in range(125):
            out[c, k] *= scale
    return out


@njit(cache=True, nogil=True)
def add_cell_matrices(upper: np.ndarray, taps: np.ndarray, place: np.ndarray, pair_offset: np.ndarray,
                      crow: np.ndarray, ranks: np.ndarray, values: np.ndarray) -> None:
    """Add each cell's 27 x 27 matrix into the CSR ``values``: pair (a, b) of cell c goes to row taps[c, a].

    ``upper`` (C, 378) the matrices' entries a <= b, ``place`` (729,) each pair's column there,
    ``pair_offset`` (729,) the offset of tap b seen from tap a, ``taps`` (C, 27) (all present).
    """
    for c in range(upper.shape[0]):
        for a in range(27):
            row = taps[c, a]
            start = crow[row]
            for b in range(27):
                rank = ranks[row, pair_offset[a * 27 + b]]
                if rank != ABSENT:
                    values[start + rank] += upper[c, place[a * 27 + b]]


@njit(cache=True, nogil=True)
def add_smoothness(nbr: np.ndarray, supports: np.ndarray, term: np.ndarray, column: np.ndarray,
                   offsets: np.ndarray, weights: np.ndarray, scale: np.ndarray, alpha: float,
                   crow: np.ndarray, ranks: np.ndarray, values: np.ndarray) -> None:
    """Add the smoothness stencils whose term has its whole support, as ``engine.solver.system._smoothness_stencil``.

    Stencil s (term ``term[s]``, non-zeros ``weights[s]`` at ``offsets[s]``) enters row r when the voxel
    c = nbr[r, column[s]] exists and all of term t's neighbours ``supports[t]`` (-1: padding) exist around
    c, times alpha and c's factor ``scale[c]`` (empty: 1).
    """
    m = nbr.shape[0]
    whole = np.zeros(m, np.uint8)  # bit t: term t's support exists around the voxel
    for v in range(m):
        bits = 0
        for t in range(supports.shape[0]):
            ok = True
            for k in range(supports.shape[1]):
                if supports[t, k] >= 0 and nbr[v, supports[t, k]] < 0:
                    ok = False
                    break
            if ok:
                bits |= 1 << t
        whole[v] = bits
    scaled = scale.shape[0] > 0
    for r in range(m):
        start = crow[r]
        for s in range(term.shape[0]):
            c = nbr[r, column[s]]
            if c < 0 or not (whole[c] >> term[s]) & 1:
                continue
            f = alpha * scale[c] if scaled else alpha
            for k in range(offsets.shape[1]):
                rank = ranks[r, offsets[s, k]]
                if rank != ABSENT:
                    values[start + rank] += np.float32(f * weights[s, k])


@njit(cache=True, nogil=True)
def diagonal(crow: np.ndarray, ranks: np.ndarray, centre: int, values: np.ndarray) -> np.ndarray:
    """Each row's entry at offset ``centre`` (its own voxel, always present)."""
    m = crow.shape[0] - 1
    out = np.empty(m, values.dtype)
    for r in range(m):
        out[r] = values[crow[r] + ranks[r, centre]]
    return out


@njit(cache=True, nogil=True)
def add_diagonal(crow: np.ndarray, ranks: np.ndarray, centre: int, value: float, values: np.ndarray) -> None:
    """Add ``value`` to every row's entry at offset ``centre``."""
    for r in range(crow.shape[0] - 1):
        values[crow[r] + ranks[r, centre]] += value


def warm() -> None:
    """Call each kernel once on empty input, with the argument types of the assembly, so that their cached
    machine code is loaded (compiled, the first time after an install)."""
    nbr = np.full((1, 27), -1, np.int32)
    nbr[0, 13] = 0
    steps = np.full(125, 13, np.int64)
    crow, cols, ranks = csr_structure(nbr, steps, steps)
    values = np.zeros(cols.shape[0], np.float32)
    empty = np.zeros(0, np.float32)
    batch_moments(np.zeros(0, np.int64), np.zeros(2, np.int64), np.zeros((0, 3), np.float32), empty, 1.0, 0, 0)
    add_cell_matrices(np.zeros((0, 378), np.float32), np.zeros((0, 27), np.int32), np.zeros(729, np.int64),
                      np.zeros(729, np.int64), crow, ranks, values)
    add_smoothness(nbr, np.full((1, 9), -1, np.int64), np.zeros(1, np.int64), np.full(1, 13, np.int64),
                   np.full((1, 4), 62, np.int64), np.zeros((1, 4), np.float32), empty, 1.0, crow, ranks, values)
    diagonal(crow, ranks, 62, values)
    add_diagonal(crow, ranks, 62, 0.0, values)
