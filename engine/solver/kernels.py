"""Compiled CPU loops (numba): the system assembly straight into CSR, with no (M, 125) stencil; field evaluation;
box dilation of voxel sets on a bit grid; the occupied-cell test of :meth:`engine.solver.knn.PointTree.within`,
the all-points neighbour search of :func:`engine.solver.knn.cell_knn`, and normal estimation's planes
(:func:`plane_normals`) and the spanning forest along which it orients them (:func:`spanning_signs`).

On the CPU, the torch assembly of :mod:`engine.solver.system` spends most of
its time, and sets the run's peak memory, in passes over (N, 125) and (M, 125)
temporaries: the cells' monomial moments, the float32 stencil that the cell
matrices are scattered into (957 MB on the finest level of the 1M-point
bunny), and its compaction into CSR.  Here the CSR structure comes first,
from the neighbour table, with each row's rank of every stored offset (one byte
each: all 125, or the upper triangle's 63); cell matrices and smoothness stencils are then added straight into
the CSR values.  Moments are summed a batch of cells at a time over points
sorted by cell, so no (C, 125) table is held either.  The cell matrices
themselves stay one BLAS product per batch (torch).

The right-hand side is summed over the same cells (each cell's 27 voxel rows looked up once).  The field's
evaluation at points (:func:`evaluate_taps`) and on the lattices of meshing's cells (:func:`add_grid`)
replace torch's three einsums over (N, 3, 3, 3) per level.

Box dilation (:func:`engine.solver.voxels.dilate`) sets one bit per voxel in a dense grid of 64-bit words
along x over the result's bounding box, ORs shifted copies one axis at a time, and reads the bits back in
(z, y, x) order, which is the order of the sort it replaces (the 1M-point bunny's finest level: 0.56 -> 0.06 s).
The same grid ranks a set's voxels (:func:`engine.solver.voxels.unique_voxels_inverse`): each row's rank is the
set bits before its own (:func:`word_ranks`, :func:`bit_ranks`), which is its row among the unique voxels in
that order; and the assembly's points are grouped by cell in a counting sort (:func:`group_rows`), where torch's
sorts run on one thread.  The outlier test's verdicts (:func:`outlier_rows`) run on the threads too.

The torch assembly and evaluation stay the reference and the CUDA path; tests/engine/test_system.py and
tests/engine/test_meshing.py check both against the point-by-point reference and each other.

Each kernel is serial and releases the GIL (``nogil``); :func:`engine.solver.system._assemble_compiled`
runs them on torch's thread count of Python threads over disjoint rows or cells (each thread writes
only its own), because numba's thread pools are either unsafe to enter from two threads at once
(workqueue; the engine solves chunks in threads) or need an OpenMP or TBB library beside torch's own.
They are compiled once per install and cached (``cache=True``: beside this file, or numba's per-user
cache where this folder is read-only).
"""

from __future__ import annotations

import numpy as np
from numba import njit

ABSENT = 255  # rank of an offset whose voxel does not exist
# Indices known to be non-negative are cast to unsigned before indexing: numba wraps a signed index around
# (x[-1] is the last element), a compare and select per access that LLVM cannot drop for an index loaded
# from an array.  Measured on a CSR product (13M non-zeros, 1 thread): 11.5 -> 5.8-6.9 ms, torch's own 5.8-7.5.
_U = np.uint32
_U64 = np.uint64


@njit(cache=True, nogil=True)
def csr_ranks(nbr: np.ndarray, first: np.ndarray, second: np.ndarray, lowest: int, lo: int, hi: int,
              ranks: np.ndarray, counts: np.ndarray) -> None:
    """Ranks (M, 125 - lowest) uint8 and non-zero counts (M,) of rows lo:hi of the level's matrix.

    Offset o of row r is voxel nbr[nbr[r, first[o]], second[o]] (two steps through the (M, 27) neighbour
    table, as :func:`engine.solver.system._csr_columns`); a row lists its existing offsets from ``lowest`` on
    in order (0: all; the centre's index: the upper triangle, where the voxels are in (z, y, x) order), and
    ranks[r, o - lowest] is o's place in row r (``ABSENT`` where the voxel does not exist).
    """
    for r in range(_U(lo), _U(hi)):
        count = 0
        for o in range(_U(lowest), _U(125)):
            via = nbr[r, _U(first[o])]
            if via >= 0 and nbr[_U(via), _U(second[o])] >= 0:
                ranks[r, o - _U(lowest)] = count
                count += 1
            else:
                ranks[r, o - _U(lowest)] = ABSENT
        counts[r] = count


@njit(cache=True, nogil=True)
def csr_columns(nbr: np.ndarray, first: np.ndarray, second: np.ndarray, lowest: int, lo: int, hi: int,
                crow: np.ndarray, ranks: np.ndarray, cols: np.ndarray) -> None:
    """Columns (nnz,) int32 of rows lo:hi, from the row starts ``crow`` and the ranks of :func:`csr_ranks`."""
    for r in range(_U(lo), _U(hi)):
        k = _U64(crow[r])
        for o in range(_U(lowest), _U(125)):
            if ranks[r, o - _U(lowest)] != ABSENT:
                cols[k] = nbr[_U(nbr[r, _U(first[o])]), _U(second[o])]
                k += _U64(1)


@njit(cache=True, nogil=True)
def increasing_voxels(ijk: np.ndarray) -> bool:
    """Whether voxels (M, 3) are in strictly increasing (z, y, x) order (one pass, no temporaries)."""
    for i in range(1, ijk.shape[0]):
        for axis in (2, 1, 0):
            if ijk[i, axis] != ijk[i - 1, axis]:
                if ijk[i, axis] < ijk[i - 1, axis]:
                    return False
                break
        else:
            return False  # a voxel twice
    return True


@njit(cache=True, nogil=True)
def batch_moments(order: np.ndarray, cell_start: np.ndarray, u: np.ndarray, trust: np.ndarray, scale: float,
                  lo: int, hi: int, out: np.ndarray) -> None:
    """Into ``out`` (hi - lo, 125) float64: scale * sum over the points of cells lo:hi of trust * u_x^i u_y^j u_z^k.

    Column i*25 + j*5 + k (x power slowest, as ``engine.solver.system._monomials``).  ``order`` (N,) lists
    the points cell by cell, cell c's from ``cell_start[c]`` to ``cell_start[c + 1]``; ``trust`` (N,) or
    empty (all 1).
    """
    out[:] = 0.0
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


@njit(cache=True, nogil=True)
def cell_rhs(order: np.ndarray, cell_start: np.ndarray, u: np.ndarray, value: np.ndarray, grad: np.ndarray,
             trust: np.ndarray, lo: int, hi: int, out: np.ndarray) -> None:
    """Into ``out`` (hi - lo, 27) float64: each cell's share of the data term's right-hand side at its 27 taps,
    as :func:`engine.solver.system._rhs`: value[p] B(p) + grad[p] . dB/du(p) summed over the cell's points.

    ``value`` (N,) and ``grad`` (N, 3) are the targets already scaled (point and normal weights, 1/N, and for
    the gradient 1/voxel size); ``trust`` (N,) or empty (all 1); points by cell as :func:`batch_moments`.
    """
    w = np.empty((3, 3))
    d = np.empty((3, 3))
    weighted = trust.shape[0] > 0
    for c in range(lo, hi):
        acc = out[c - lo]
        acc[:] = 0.0
        for q in range(cell_start[c], cell_start[c + 1]):
            p = order[q]
            for axis in range(3):
                t = np.float64(u[p, axis])
                w[axis, 0], w[axis, 1], w[axis, 2] = spline_weights(t)
                d[axis, 0], d[axis, 1], d[axis, 2] = spline_slopes(t)
            s = np.float64(trust[p]) if weighted else 1.0
            v, gx, gy, gz = s * value[p], s * grad[p, 0], s * grad[p, 1], s * grad[p, 2]
            for z in range(3):
                for y in range(3):
                    wzy = w[2, z] * w[1, y]
                    yz = gy * w[2, z] * d[1, y] + gz * d[2, z] * w[1, y]
                    for x in range(3):
                        acc[9 * z + 3 * y + x] += wzy * (v * w[0, x] + gx * d[0, x]) + yz * w[0, x]


@njit(cache=True, nogil=True)
def add_rows(taps: np.ndarray, sums: np.ndarray, rhs: np.ndarray) -> None:
    """rhs[taps[c, k]] += sums[c, k] for cells (C, 27) in order."""
    for c in range(taps.shape[0]):
        for k in range(27):
            rhs[taps[c, k]] += sums[c, k]


@njit(cache=True, nogil=True)
def add_cell_matrices(upper: np.ndarray, taps: np.ndarray, place: np.ndarray, pair_offset: np.ndarray,
                      crow: np.ndarray, ranks: np.ndarray, lowest: int, values: np.ndarray, row_lo: int,
                      row_hi: int) -> None:
    """Add each cell's 27 x 27 matrix into the CSR ``values``: pair (a, b) of cell c goes to row taps[c, a],
    for the rows in row_lo:row_hi only (so that threads given disjoint rows never write the same entry).

    ``upper`` (C, 378) the matrices' entries a <= b, ``place`` (729,) each pair's column there,
    ``pair_offset`` (729,) the offset of tap b seen from tap a, ``taps`` (C, 27) (all present).
    ``lowest`` as :func:`csr_ranks`; above 0 (the upper triangle) only the pairs b >= a are added (the taps
    are in (z, y, x) order, as the voxels, so those are the pairs whose offset is from the centre on).
    """
    for c in range(upper.shape[0]):
        for a in range(_U(27)):
            row = taps[c, a]
            if row < row_lo or row >= row_hi:
                continue
            row = _U(row)
            start = _U64(crow[row])
            for b in range(a if lowest > 0 else _U(0), _U(27)):
                rank = ranks[row, _U(pair_offset[a * _U(27) + b]) - _U(lowest)]
                if rank != ABSENT:
                    values[start + _U64(rank)] += upper[c, _U(place[a * _U(27) + b])]


@njit(cache=True, nogil=True)
def smoothness_support(nbr: np.ndarray, supports: np.ndarray, lo: int, hi: int, whole: np.ndarray) -> None:
    """Bit t of ``whole[v]`` (uint8), v in lo:hi: all of term t's neighbours ``supports[t]`` (-1: padding)
    exist around voxel v."""
    for v in range(lo, hi):
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


@njit(cache=True, nogil=True)
def add_smoothness(nbr: np.ndarray, whole: np.ndarray, term: np.ndarray, column: np.ndarray,
                   offsets: np.ndarray, weights: np.ndarray, scale: np.ndarray, alpha: float, lo: int, hi: int,
                   crow: np.ndarray, ranks: np.ndarray, lowest: int, values: np.ndarray) -> None:
    """Add to rows lo:hi the smoothness stencils whose term has its whole support, as
    ``engine.solver.system._smoothness_stencil``.

    Stencil s (term ``term[s]``, non-zeros ``weights[s]`` at ``offsets[s]``) enters row r when the voxel
    c = nbr[r, column[s]] exists and term t's support exists around c (bit t of ``whole[c]``,
    :func:`smoothness_support`), times alpha and c's factor ``scale[c]`` (empty: 1); offsets below ``lowest``
    are not stored (:func:`csr_ranks`).
    """
    scaled = scale.shape[0] > 0
    for r in range(_U(lo), _U(hi)):
        start = _U64(crow[r])
        for s in range(term.shape[0]):
            c = nbr[r, _U(column[s])]
            if c < 0 or not (whole[_U(c)] >> term[s]) & 1:
                continue
            f = alpha * scale[_U(c)] if scaled else alpha
            for k in range(offsets.shape[1]):
                o = offsets[s, k]
                if o < lowest:
                    continue
                rank = ranks[r, _U(o) - _U(lowest)]
                if rank != ABSENT:
                    values[start + _U64(rank)] += np.float32(f * weights[s, k])


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


@njit(cache=True, nogil=True)
def spline_weights(t: float) -> tuple[float, float, float]:
    """The quadratic B-spline's weights of taps -1, 0, +1 at local coordinate t (as
    :func:`engine.solver.basis.weights_1d`)."""
    return 0.5 * t * t - 0.5 * t + 0.125, 0.75 - t * t, 0.5 * t * t + 0.5 * t + 0.125


@njit(cache=True, nogil=True)
def spline_slopes(t: float) -> tuple[float, float, float]:
    """Their derivatives in t."""
    return t - 0.5, -2.0 * t, t + 0.5


@njit(cache=True, nogil=True)
def evaluate_taps(a: np.ndarray, u: np.ndarray, inv_size: float, values: np.ndarray, grads: np.ndarray) -> None:
    """Values (N,) and, where ``grads`` has rows, gradients (N, 3) of one level's field at N points.

    ``a`` (N, 27) float32 the coefficients of the voxels touching each point (tap order of
    :mod:`engine.solver.basis`, x fastest), ``u`` (N, 3) its local coordinates; ``inv_size`` scales the
    gradients to finest-voxel units.  Contracted x, then y, then z, in the order and precision of
    :func:`add_grid`, so that a lattice point gets the same float from either (chunked meshing needs
    neighbouring cores to agree bit for bit on shared corners; tests/engine/test_chunks.py).
    """
    with_grad = grads.shape[0] > 0
    w = np.empty((3, 3))
    d = np.empty((3, 3))
    for p in range(a.shape[0]):
        for axis in range(3):
            t = np.float64(u[p, axis])
            w[axis, 0], w[axis, 1], w[axis, 2] = spline_weights(t)
            d[axis, 0], d[axis, 1], d[axis, 2] = spline_slopes(t)
        v = gx = gy = gz = 0.0
        for z in range(3):
            t2 = t2x = t2y = 0.0
            for y in range(3):
                t1 = t1x = 0.0
                for x in range(3):
                    c = np.float64(a[p, 9 * z + 3 * y + x])
                    t1 += c * w[0, x]
                    t1x += c * d[0, x]
                t2 += t1 * w[1, y]
                t2x += t1x * w[1, y]
                t2y += t1 * d[1, y]
            v += t2 * w[2, z]
            gx += t2x * w[2, z]
            gy += t2y * w[2, z]
            gz += t2 * d[2, z]
        values[p] = v
        if with_grad:
            grads[p, 0], grads[p, 1], grads[p, 2] = gx * inv_size, gy * inv_size, gz * inv_size


@njit(cache=True, nogil=True)
def add_grid(a: np.ndarray, u: np.ndarray, out: np.ndarray) -> None:
    """Add one level's field on an n^3 lattice over each of P cells to ``out`` (P, n, n, n) [z, y, x].

    ``a`` (P, 27) float32 the coefficients of the voxels touching each cell (all its lattice points lie in
    one cell of the level), ``u`` (P, 3 axes, n) the lattice's local coordinates along each axis, as
    :func:`engine.solver.hierarchy.evaluate_grid`.
    """
    n = u.shape[2]
    w = np.empty((3, n, 3))
    t1 = np.empty((3, 3, n))  # [z, y, i]: summed over x
    t2 = np.empty((3, n, n))  # [z, j, i]: and over y
    for p in range(a.shape[0]):
        for axis in range(3):
            for i in range(n):
                w[axis, i, 0], w[axis, i, 1], w[axis, i, 2] = spline_weights(np.float64(u[p, axis, i]))
        for z in range(3):
            for y in range(3):
                for i in range(n):
                    s = 0.0
                    for x in range(3):
                        s += np.float64(a[p, 9 * z + 3 * y + x]) * w[0, i, x]
                    t1[z, y, i] = s
        for z in range(3):
            for j in range(n):
                for i in range(n):
                    s = 0.0
                    for y in range(3):
                        s += t1[z, y, i] * w[1, j, y]
                    t2[z, j, i] = s
        for k in range(n):
            for j in range(n):
                for i in range(n):
                    s = 0.0
                    for z in range(3):
                        s += t2[z, j, i] * w[2, k, z]
                    out[p, k, j, i] += np.float32(s)  # rounded first, as evaluate_taps' values


@njit(cache=True, nogil=True)
def set_bits(ijk: np.ndarray, origin: np.ndarray, rows_y: int, words: int, grid: np.ndarray) -> None:
    """Voxels ijk (M, 3), none below ``origin``, into a bit grid of rows (z, y) of ``words`` 64-bit words along x."""
    for i in range(ijk.shape[0]):
        x, y, z = ijk[i, 0] - origin[0], ijk[i, 1] - origin[1], ijk[i, 2] - origin[2]
        grid[(z * rows_y + y) * words + (x >> 6)] |= np.uint64(1) << np.uint64(x & 63)


@njit(cache=True, nogil=True)
def _popcount(w: np.uint64) -> np.int64:
    """Set bits of one 64-bit word (the SWAR sum: a fixed dozen operations, however many bits are set), as int64
    (numba would make int64 plus uint64 a float)."""
    w = w - ((w >> np.uint64(1)) & np.uint64(0x5555555555555555))
    w = (w & np.uint64(0x3333333333333333)) + ((w >> np.uint64(2)) & np.uint64(0x3333333333333333))
    w = (w + (w >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((w * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit(cache=True, nogil=True)
def word_ranks(grid: np.ndarray, ranks: np.ndarray) -> int:
    """``ranks``: the set bits before each word of ``grid`` (an exclusive running count); returns all set bits."""
    n = np.int64(0)
    for i in range(grid.shape[0]):
        ranks[i] = n
        n += _popcount(grid[i])
    return int(n)


@njit(cache=True, nogil=True)
def bit_ranks(ijk: np.ndarray, origin: np.ndarray, rows_y: int, words: int, grid: np.ndarray, ranks: np.ndarray,
              out: np.ndarray) -> None:
    """Each voxel's rank among the set bits of ``grid`` (:func:`set_bits`' layout, ``ranks`` its
    :func:`word_ranks`): its row among the grid's voxels read in (z, y, x) order, as :func:`grid_voxels` lists them."""
    for i in range(ijk.shape[0]):
        x, y, z = ijk[i, 0] - origin[0], ijk[i, 1] - origin[1], ijk[i, 2] - origin[2]
        w = (z * rows_y + y) * words + (x >> 6)
        below = (np.uint64(1) << np.uint64(x & 63)) - np.uint64(1)
        out[i] = ranks[w] + _popcount(grid[w] & below)


@njit(cache=True, nogil=True)
def group_rows(group: np.ndarray, start: np.ndarray, order: np.ndarray) -> None:
    """A counting sort of rows by ``group`` (M,) in 0..G-1: ``start`` (G + 1) where each group's rows begin in
    ``order`` (M), which lists them group by group, in their own order within a group (a stable argsort)."""
    start[:] = 0
    for i in range(group.shape[0]):
        start[group[i] + 1] += 1
    for g in range(start.shape[0] - 1):
        start[g + 1] += start[g]
    fill = start[:-1].copy()
    for i in range(group.shape[0]):
        g = group[i]
        order[fill[g]] = i
        fill[g] += 1


@njit(cache=True, nogil=True)
def shift_x(grid: np.ndarray, words: int, shifts: np.ndarray, out: np.ndarray) -> None:
    """``out``: the OR of ``grid`` shifted along x by each of ``shifts`` (each below 64 in size), row by row."""
    for r in range(grid.shape[0] // words):
        base = r * words
        for i in range(words):
            acc = np.uint64(0)
            for s in shifts:
                if s == 0:
                    acc |= grid[base + i]
                elif s > 0:
                    acc |= grid[base + i] << np.uint64(s)
                    if i > 0:
                        acc |= grid[base + i - 1] >> np.uint64(64 - s)
                else:
                    acc |= grid[base + i] >> np.uint64(-s)
                    if i + 1 < words:
                        acc |= grid[base + i + 1] << np.uint64(64 + s)
            out[base + i] = acc


@njit(cache=True, nogil=True)
def shift_rows(grid: np.ndarray, words: int, length: int, stride: int, shifts: np.ndarray, out: np.ndarray) -> None:
    """``out``: the OR of ``grid`` shifted by each of ``shifts`` along the axis whose step is ``stride`` rows
    (y: 1, z: the rows per slice) and which has ``length`` positions."""
    for r in range(grid.shape[0] // words):
        at = (r // stride) % length
        base = r * words
        for i in range(words):
            out[base + i] = 0
        for s in shifts:
            src = at - s
            if 0 <= src < length:
                from_row = (r + (src - at) * stride) * words
                for i in range(words):
                    out[base + i] |= grid[from_row + i]


@njit(cache=True, nogil=True)
def count_bits(grid: np.ndarray) -> int:
    n = np.int64(0)
    for i in range(grid.shape[0]):
        n += _popcount(grid[i])
    return int(n)


@njit(cache=True, nogil=True)
def grid_voxels(grid: np.ndarray, rows_y: int, words: int, origin: np.ndarray, out: np.ndarray) -> None:
    """The set bits of a bit grid as voxels (K, 3) plus ``origin``, in (z, y, x) order."""
    k = 0
    for r in range(grid.shape[0] // words):
        z = r // rows_y
        y = r - z * rows_y
        for i in range(words):
            w = grid[r * words + i]
            while w:
                low = w & (~w + np.uint64(1))
                out[k, 0] = i * 64 + _popcount(low - np.uint64(1)) + origin[0]
                out[k, 1] = y + origin[1]
                out[k, 2] = z + origin[2]
                k += 1
                w ^= low


@njit(cache=True, nogil=True)
def mark_cells(points: np.ndarray, origin: np.ndarray, inv_cell: float, dims: np.ndarray, grid: np.ndarray) -> None:
    """Set the bit of each point's cell (cells of 1 / ``inv_cell`` from ``origin``, ``dims`` of them, x fastest)."""
    for i in range(points.shape[0]):
        x = int(np.floor((points[i, 0] - origin[0]) * inv_cell))
        y = int(np.floor((points[i, 1] - origin[1]) * inv_cell))
        z = int(np.floor((points[i, 2] - origin[2]) * inv_cell))
        if 0 <= x < dims[0] and 0 <= y < dims[1] and 0 <= z < dims[2]:
            k = (z * dims[1] + y) * dims[0] + x
            grid[k >> 6] |= np.uint64(1) << np.uint64(k & 63)


@njit(cache=True, nogil=True)
def cells_marked(queries: np.ndarray, origin: np.ndarray, inv_cell: float, dims: np.ndarray, grid: np.ndarray,
                 lo: int, hi: int, out: np.ndarray) -> None:
    """``out[i]``: whether query i's cell (as in :func:`mark_cells`) is marked, for queries lo:hi."""
    for i in range(lo, hi):
        x = int(np.floor((queries[i, 0] - origin[0]) * inv_cell))
        y = int(np.floor((queries[i, 1] - origin[1]) * inv_cell))
        z = int(np.floor((queries[i, 2] - origin[2]) * inv_cell))
        hit = False
        if 0 <= x < dims[0] and 0 <= y < dims[1] and 0 <= z < dims[2]:
            k = (z * dims[1] + y) * dims[0] + x
            hit = (grid[k >> 6] >> np.uint64(k & 63)) & np.uint64(1) == np.uint64(1)
        out[i] = hit


@njit(cache=True, nogil=True)
def outlier_rows(own: np.ndarray, idx: np.ndarray, ratio: float, start: int, stop: int, out: np.ndarray) -> None:
    """The outlier test's verdicts on rows start:stop (:func:`engine.solver.outliers.outlier_mask`): ``own`` (N,)
    each point's mean neighbour distance, ``idx`` (N, k + 1) its neighbours (the first itself, skipped); ``out[i]``
    whether ``own[i]`` is over ``ratio`` times its k neighbours' median, where that median is above zero.  The two
    middle values come from a sort of the row's k (insertion: k is small): the values numpy's partition picks."""
    k = idx.shape[1] - 1
    lo, hi = (k - 1) // 2, k // 2
    row = np.empty(k, np.float64)
    for i in range(start, stop):
        for j in range(k):
            v = own[np.uint64(idx[i, j + 1])]
            m = j
            while m > 0 and row[m - 1] > v:
                row[m] = row[m - 1]
                m -= 1
            row[m] = v
        local = 0.5 * (row[lo] + row[hi])
        out[i] = local > 0 and own[i] > ratio * local


@njit(cache=True, nogil=True)
def cell_knn(points: np.ndarray, keys: np.ndarray, cell_keys: np.ndarray, cell_start: np.ndarray, dims: np.ndarray,
             origin: np.ndarray, size: float, reach: int, queries: np.ndarray, lo: int, hi: int, dist: np.ndarray,
             idx: np.ndarray, exact: np.ndarray) -> None:
    """Rows lo:hi of a k-nearest search (k = ``dist.shape[1]``) among points sorted by cell, for the points
    ``queries[lo:hi]`` (rows of ``points``, ascending), nearest first.

    Cells are cubes of edge ``size`` from ``origin``; ``keys`` (N,) each point's cell key
    (x dims[1] + y) dims[2] + z, ascending; ``cell_keys`` the occupied ones, cell c's points are rows
    cell_start[c]:cell_start[c + 1].  Candidates are the points of the occupied cells among the
    (2 reach + 1)^3 around the query's, listed once for the queries of one cell (one binary search per (x, y)
    column: along z a column's cells are consecutive), nearest cells first; a cell farther than the k-th
    distance so far is skipped.  ``exact[i]``: the k-th distance is within ``reach`` cell edges, so nothing
    outside the cells searched can be nearer; where fewer than k candidates exist, the rest is inf and index -1.
    """
    k = dist.shape[1]
    ny, nz = dims[1], dims[2]
    width = 2 * reach + 1
    slack = 1e-6 * size  # a point's cell and the cell's faces computed here may disagree by rounding
    best = np.empty(k)
    near = np.empty(k, np.int64)
    around = np.empty(width ** 3, np.int64)  # the occupied cells around the current one, nearest first
    corner = np.empty((width ** 3, 3))  # each one's lower corner
    count = 0
    current = -1
    for r in range(lo, hi):
        p = queries[r]
        key = keys[p]
        if key != current:
            current = key
            z = key % nz
            y = (key // nz) % ny
            x = key // (nz * ny)
            count = 0
            for ring in range(reach + 1):  # the cell itself, then its faces' neighbours, ...: by Chebyshev ring
                for dx in range(-reach, reach + 1):
                    xx = x + dx
                    if xx < 0 or xx >= dims[0]:
                        continue
                    for dy in range(-reach, reach + 1):
                        yy = y + dy
                        if yy < 0 or yy >= ny:
                            continue
                        flat = max(abs(dx), abs(dy))
                        if flat > ring:
                            continue
                        base = (xx * ny + yy) * nz
                        first = np.searchsorted(cell_keys, base + max(z - ring, 0))
                        last = np.searchsorted(cell_keys, base + min(z + ring, nz - 1) + 1)
                        for c in range(first, last):
                            zz = cell_keys[c] - base
                            if max(flat, abs(zz - z)) == ring:
                                around[count] = c
                                corner[count, 0] = origin[0] + xx * size
                                corner[count, 1] = origin[1] + yy * size
                                corner[count, 2] = origin[2] + zz * size
                                count += 1
        px, py, pz = points[p, 0], points[p, 1], points[p, 2]
        filled = 0
        worst = np.inf
        for a in range(count):
            if filled == k:
                gx = max(corner[a, 0] - px, px - corner[a, 0] - size, 0.0)
                gy = max(corner[a, 1] - py, py - corner[a, 1] - size, 0.0)
                gz = max(corner[a, 2] - pz, pz - corner[a, 2] - size, 0.0)
                if max(gx - slack, 0.0) ** 2 + max(gy - slack, 0.0) ** 2 + max(gz - slack, 0.0) ** 2 > worst:
                    continue
            c = around[a]
            for q in range(cell_start[c], cell_start[c + 1]):
                ex, ey, ez = points[q, 0] - px, points[q, 1] - py, points[q, 2] - pz
                d = ex * ex + ey * ey + ez * ez
                if filled < k:
                    j = filled
                    filled += 1
                elif d < worst:
                    j = k - 1
                else:
                    continue
                while j > 0 and best[j - 1] > d:
                    best[j] = best[j - 1]
                    near[j] = near[j - 1]
                    j -= 1
                best[j] = d
                near[j] = q
                if filled == k:
                    worst = best[k - 1]
        for j in range(k):
            if j < filled:
                dist[r, j] = np.sqrt(best[j])
                idx[r, j] = near[j]
            else:
                dist[r, j] = np.inf
                idx[r, j] = -1
        exact[r] = filled == k and np.sqrt(best[k - 1]) <= reach * size - slack


@njit(cache=True, nogil=True)
def neighbour_rows(ijk: np.ndarray, origin: np.ndarray, bdims: np.ndarray, grid: np.ndarray, table: np.ndarray,
                   lo: int, hi: int, out: np.ndarray) -> None:
    """Rows lo:hi of :meth:`engine.solver.voxels.VoxelIndex.neighbour_table`: each voxel's 27 neighbours
    (offset (x, y, z) in [-1, 1]^3 at column (x + 1) + 3 (y + 1) + 9 (z + 1)) looked up in the index's brick
    grid and brick tables, -1 where absent."""
    for v in range(lo, hi):
        for t in range(27):
            out[v, t] = _row_of(ijk[v, 0] + t % 3 - 1, ijk[v, 1] + (t // 3) % 3 - 1, ijk[v, 2] + t // 9 - 1,
                                origin, bdims, grid, table)


@njit(cache=True, nogil=True)
def _row_of(i: int, j: int, k: int, origin: np.ndarray, bdims: np.ndarray, grid: np.ndarray,
            table: np.ndarray) -> int:
    """Row of voxel (i, j, k) in a :class:`engine.solver.voxels.VoxelIndex` (its origin, brick grid and brick
    tables), -1 where absent."""
    x, y, z = i - origin[0], j - origin[1], k - origin[2]
    if x < 0 or y < 0 or z < 0:
        return -1
    bx, by, bz = x >> 3, y >> 3, z >> 3
    if bx >= bdims[0] or by >= bdims[1] or bz >= bdims[2]:
        return -1
    b = grid[(bz * bdims[1] + by) * bdims[0] + bx]
    if b < 0:
        return -1
    return table[b, (((z & 7) << 3) + (y & 7) << 3) + (x & 7)]


@njit(cache=True, nogil=True)
def cell_taps(cells: np.ndarray, origin: np.ndarray, bdims: np.ndarray, grid: np.ndarray, table: np.ndarray,
              tap_coeffs: np.ndarray, padded: np.ndarray, lo: int, hi: int, out: np.ndarray) -> None:
    """Rows lo:hi of :meth:`engine.solver.hierarchy.Level.tap_coeffs`: the 27 coefficients around each cell
    (N, 3), its row of ``tap_coeffs`` (M, 27) where the cell is a voxel of the level, else 27 lookups into
    ``padded`` (M + 1,; an absent voxel picks its trailing 0).  One pass instead of torch's lookup (several
    passes over the cells) and gather."""
    for i in range(lo, hi):
        row = _row_of(cells[i, 0], cells[i, 1], cells[i, 2], origin, bdims, grid, table)
        if row >= 0:
            for t in range(27):
                out[i, t] = tap_coeffs[row, t]
        else:
            for t in range(27):
                out[i, t] = padded[_row_of(cells[i, 0] + t % 3 - 1, cells[i, 1] + (t // 3) % 3 - 1,
                                           cells[i, 2] + t // 9 - 1, origin, bdims, grid, table)]


@njit(cache=True, nogil=True)
def gather_taps(padded: np.ndarray, nbr: np.ndarray, lo: int, hi: int, out: np.ndarray) -> None:
    """Rows lo:hi of each voxel's 27 neighbours' coefficients: ``out[i, k] = padded[nbr[i, k]]``.

    ``padded`` (M + 1,) the coefficients and a trailing 0, which an absent neighbour (-1) picks.  torch's
    ``padded[nbr]`` with the (M, 27) int32 table took 0.9 s on the 1M-point bunny's finest level (1.9M
    voxels; 0.46 s on the next, 0.85M) against 0.04 s here on two threads.
    """
    for i in range(lo, hi):
        for k in range(nbr.shape[1]):
            out[i, k] = padded[nbr[i, k]]


@njit(cache=True, nogil=True)
def _smallest_eigenvector(cxx: float, cxy: float, cxz: float, cyy: float, cyz: float, czz: float
                          ) -> tuple[float, float, float, float]:
    """The unit eigenvector of the smallest eigenvalue of a symmetric 3 x 3 matrix, by the closed form of
    :func:`engine.solver.normals.smallest_eigenvectors` (zero where the matrix is zero), and the middle eigenvalue
    over the largest (:func:`engine.solver.normals.line_ratios`)."""
    q = (cxx + cyy + czz) / 3.0
    a, d, f = cxx - q, cyy - q, czz - q
    p = max(np.sqrt((a * a + d * d + f * f + 2.0 * (cxy * cxy + cxz * cxz + cyz * cyz)) / 6.0), 1e-300)
    a, b, c, d, e, f = a / p, cxy / p, cxz / p, d / p, cyz / p, f / p
    det = a * (d * f - e * e) - b * (b * f - e * c) + c * (b * e - d * c)
    r = min(max(det / 2.0, -1.0), 1.0)
    phi = np.arccos(r) / 3.0
    lam = q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)
    largest = q + 2.0 * p * np.cos(phi)
    line = max(q + 2.0 * p * np.cos(phi + 4.0 * np.pi / 3.0), 0.0) / largest if q > 0.0 else 1.0
    x0, y0, z0 = cxx - lam, cxy, cxz  # the rows of cov - lam I
    x1, y1, z1 = cxy, cyy - lam, cyz
    x2, y2, z2 = cxz, cyz, czz - lam
    bx, by, bz = y0 * z1 - z0 * y1, z0 * x1 - x0 * z1, x0 * y1 - y0 * x1  # row 0 x row 1, then 0 x 2, 1 x 2
    best = bx * bx + by * by + bz * bz
    ux, uy, uz = y0 * z2 - z0 * y2, z0 * x2 - x0 * z2, x0 * y2 - y0 * x2
    size = ux * ux + uy * uy + uz * uz
    if size > best:
        bx, by, bz, best = ux, uy, uz, size
    ux, uy, uz = y1 * z2 - z1 * y2, z1 * x2 - x1 * z2, x1 * y2 - y1 * x2
    size = ux * ux + uy * uy + uz * uz
    if size > best:
        bx, by, bz, best = ux, uy, uz, size
    length = max(np.sqrt(best), 1e-300)
    return bx / length, by / length, bz / length, line


@njit(cache=True, nogil=True)
def plane_normals(points: np.ndarray, idx: np.ndarray, lo: int, hi: int, out: np.ndarray, line: np.ndarray
                  ) -> None:
    """Rows lo:hi of ``out`` (N, 3): the unit normal of the plane through each row's neighbours
    ``points[idx[i]]`` (``idx`` (N, k)), the direction of their least spread (covariance in float64); of ``line``
    (N,) their middle spread over their largest (left alone where ``line`` is empty)."""
    k = idx.shape[1]
    for i in range(lo, hi):
        mx = my = mz = 0.0
        for j in range(k):
            q = idx[i, j]
            mx += points[q, 0]
            my += points[q, 1]
            mz += points[q, 2]
        mx, my, mz = mx / k, my / k, mz / k
        cxx = cxy = cxz = cyy = cyz = czz = 0.0
        for j in range(k):
            q = idx[i, j]
            dx, dy, dz = points[q, 0] - mx, points[q, 1] - my, points[q, 2] - mz
            cxx += dx * dx
            cxy += dx * dy
            cxz += dx * dz
            cyy += dy * dy
            cyz += dy * dz
            czz += dz * dz
        out[i, 0], out[i, 1], out[i, 2], ratio = _smallest_eigenvector(cxx, cxy, cxz, cyy, cyz, czz)
        if line.shape[0] > 0:
            line[i] = ratio


@njit(cache=True, nogil=True)
def radix_order(keys: np.ndarray, low: np.ndarray, out: np.ndarray) -> None:
    """``out`` (N,): the order of 32-bit unsigned ``keys`` (N,), ties by position; two counting passes of 16 bits
    each, ``low`` (N,) the order after the first.

    Positive float32 values sort as their bit patterns, so this orders the spanning forest's edge costs: 32M
    edges (4M points) in a fraction of the 2.0 s NumPy's radix sorts and gathers took.
    """
    n = keys.shape[0]
    count = np.zeros(65537, np.int64)
    for i in range(n):
        count[(keys[i] & 0xFFFF) + 1] += 1
    for b in range(65536):
        count[b + 1] += count[b]
    for i in range(n):
        b = keys[i] & 0xFFFF
        low[count[b]] = i
        count[b] += 1
    count[:] = 0
    for i in range(n):
        count[(keys[i] >> 16) + 1] += 1
    for b in range(65536):
        count[b + 1] += count[b]
    for j in range(n):
        i = low[j]
        b = keys[i] >> 16
        out[count[b]] = i
        count[b] += 1


@njit(cache=True, nogil=True)
def _root_parity(parent: np.ndarray, flip: np.ndarray, v: int) -> tuple[int, int]:
    """v's tree root and v's sign relative to it (1: opposite); the path is pointed at the root on the way."""
    root = v
    parity = 0
    while parent[root] != root:
        parity ^= flip[root]
        root = parent[root]
    own = parity
    while parent[v] != root:  # v's parity to the root is ``parity``; its parent's is parity ^ flip[v]
        up = parent[v]
        step = flip[v]
        parent[v] = root
        flip[v] = parity
        parity ^= step
        v = up
    return root, own


@njit(cache=True, nogil=True)
def spanning_signs(order: np.ndarray, nbr: np.ndarray, same: np.ndarray, roots: np.ndarray,
                   flips: np.ndarray) -> None:
    """Kruskal's minimum spanning forest of a neighbour graph, and each point's sign along it.

    Edge e (of N g) joins point e // g and ``nbr.flat[e]`` (``nbr`` (N, g)); ``order`` (N g,) lists the edges
    by increasing cost, ``same`` (N g,) whether an edge's two normals point the same way.  Union-find whose
    links carry a flip (the sign of a point relative to its parent): an edge that joins two trees links their
    roots with the flip that makes its ends agree (``same``) or differ.  Out: ``roots`` (N,) each point's tree
    (a point of it), ``flips`` (N,) 1 where a point's sign is opposite its root's.
    """
    n, g = nbr.shape
    parent = np.arange(n)
    flip = np.zeros(n, np.uint8)
    size = np.ones(n, np.int64)
    for e in order:
        a = e // g
        b = nbr[a, e - a * g]
        if a == b:
            continue
        ra, pa = _root_parity(parent, flip, a)
        rb, pb = _root_parity(parent, flip, b)
        if ra == rb:
            continue
        link = pa ^ pb ^ (0 if same[e] else 1)
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        parent[rb] = ra
        flip[rb] = link
        size[ra] += size[rb]
    for v in range(n):
        roots[v], flips[v] = _root_parity(parent, flip, v)


def warm() -> None:
    """Call each kernel once on empty input, with the argument types of the assembly and the evaluation, so
    that their cached machine code is loaded (compiled, the first time after an install)."""
    one = np.zeros(1, np.int64)  # the outlier test's search first: cleaning, the first stage, waits for it
    cell_knn(np.zeros((1, 3)), one, one, np.array([0, 1]), np.ones(3, np.int64), np.zeros(3), 1.0, 1, one, 0, 1,
             np.empty((1, 1), np.float32), np.empty((1, 1), np.int32), np.empty(1, np.bool_))
    outlier_rows(np.zeros(1), np.zeros((1, 2), np.int32), 2.0, 0, 1, np.empty(1, np.bool_))
    nbr = np.full((1, 27), -1, np.int32)
    nbr[0, 13] = 0
    steps = np.full(125, 13, np.int64)
    ranks = np.empty((1, 63), np.uint8)
    crow = np.zeros(2, np.int64)
    csr_ranks(nbr, steps, steps, 62, 0, 1, ranks, crow[1:])
    np.cumsum(crow, out=crow)
    cols = np.empty(int(crow[-1]), np.int32)
    csr_columns(nbr, steps, steps, 62, 0, 1, crow, ranks, cols)
    increasing_voxels(np.zeros((1, 3), np.int64))
    values = np.zeros(cols.shape[0], np.float32)
    empty = np.zeros(0, np.float32)
    none = np.zeros(0, np.int64)
    batch_moments(none, np.zeros(2, np.int64), np.zeros((0, 3), np.float32), empty, 1.0, 0, 0, np.zeros((0, 125)))
    add_cell_matrices(np.zeros((0, 378), np.float32), np.zeros((0, 27), np.int32), np.zeros(729, np.int64),
                      np.zeros(729, np.int64), crow, ranks, 62, values, 0, 1)
    whole = np.zeros(1, np.uint8)
    smoothness_support(nbr, np.full((1, 9), -1, np.int64), 0, 1, whole)
    add_smoothness(nbr, whole, np.zeros(1, np.int64), np.full(1, 13, np.int64), np.full((1, 4), 62, np.int64),
                   np.zeros((1, 4), np.float32), empty, 1.0, 0, 1, crow, ranks, 62, values)
    diagonal(crow, ranks, 0, values)
    add_diagonal(crow, ranks, 0, 0.0, values)
    cell_rhs(none, np.zeros(2, np.int64), np.zeros((0, 3), np.float32), empty, np.zeros((0, 3), np.float32),
             empty, 0, 0, np.zeros((0, 27)))
    add_rows(np.zeros((0, 27), np.int32), np.zeros((0, 27)), empty)
    grid = np.zeros(1, np.uint64)
    voxel, low = np.zeros((1, 3), np.int64), np.zeros(3, np.int64)
    set_bits(voxel, low, 1, 1, grid)
    word_ranks(grid, one)
    bit_ranks(voxel, low, 1, 1, grid, one, np.empty(1, np.int64))
    group_rows(one, np.zeros(2, np.int64), np.empty(1, np.int64))
    other = np.empty_like(grid)
    shift_x(grid, 1, np.zeros(1, np.int64), other)
    shift_rows(other, 1, 1, 1, np.zeros(1, np.int64), grid)
    grid_voxels(grid, 1, 1, np.zeros(3, np.int64), np.empty((count_bits(grid), 3), np.int64))
    box = np.ones(3, np.int64)
    neighbour_rows(np.zeros((1, 3), np.int64), np.zeros(3, np.int64), box, np.zeros(1, np.int32),
                   np.full((1, 512), -1, np.int32), 0, 1, np.empty((1, 27), np.int32))
    mark_cells(np.zeros((1, 3)), np.zeros(3), 1.0, box, grid)
    cells_marked(np.zeros((1, 3)), np.zeros(3), 1.0, box, grid, 0, 1, np.empty(1, np.bool_))
    spline_weights(0.0)  # compiled into the kernels that call them; called here so that none is left cold
    spline_slopes(0.0)
    evaluate_taps(np.zeros((0, 27), np.float32), np.zeros((0, 3), np.float32), 1.0, empty,
                  np.zeros((0, 3), np.float32))
    add_grid(np.zeros((0, 27), np.float32), np.zeros((0, 3, 2), np.float32), np.zeros((0, 2, 2, 2), np.float32))
    gather_taps(np.zeros(1, np.float32), nbr, 0, 1, np.empty((1, 27), np.float32))
    plane_normals(np.zeros((1, 3), np.float32), np.zeros((1, 1), np.int64), 0, 1, np.empty((1, 3), np.float32),
                  np.empty(1, np.float32))
    radix_order(np.zeros(1, np.uint32), np.empty(1, np.int32), np.empty(1, np.int32))
    spanning_signs(np.zeros(0, np.int32), np.zeros((1, 1), np.int64), np.zeros(1, np.bool_), np.empty(1, np.int64),
                   np.empty(1, np.uint8))
    cell_taps(np.zeros((2, 3), np.int64), np.zeros(3, np.int64), box, np.zeros(1, np.int32),
              np.full((1, 512), -1, np.int32), np.zeros((1, 27), np.float32), np.zeros(1, np.float32), 0, 2,
              np.empty((2, 27), np.float32))
