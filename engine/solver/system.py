"""Step 5: the gradient-fitting energy of one level, assembled as a CSR matrix.

For level d (voxel size s, M voxels) and N points p with normals n, the level's
coefficients a minimise

    w_p/N  sum_p (f(p) - t_p)^2  +  w_n/N  sum_p |grad f(p) - g_p|^2  +  lam/M  sum_v |D2 a|_v^2

where t_p, g_p are what the coarser levels left to fit (0 and n at the
coarsest) and D2 are second differences of the coefficients (xx, yy, zz and
twice the mixed ones), counted only where all their taps exist.  Dividing by N
and M keeps the balance independent of the point count and the voxel count (M is
:attr:`~engine.solver.hierarchy.Level.smooth_voxels`: for a coarse level built
without its bridging ring, the count it would have with it).
Each point's two data terms may carry a weight of mean 1 (``trust``,
:mod:`engine.solver.trust`: less for points seen edge-on).

Assembly never loops over point pairs: every product of two basis functions
inside one cell is a polynomial of degree <= 4 per axis in the local
coordinate, so the 27 x 27 cell matrix is (cell moments, 125) @ (125, 729).
Cell matrices are scattered into a stencil array (M, 125 offsets in
[-2, 2]^3) and that becomes the CSR matrix, int32 indices (a CSR matvec is ~1
ns per non-zero on this CPU; matrix-free gathers over points cost 20x more).

Speed (issue 12): every step is a few whole-array torch passes, valid on any
device.  The cell matrices come from their 378 symmetric entries; scatter
indices are a broadcast add, not a (C, 729) gather; the smoothness term is 21
constant stencils times 0/1 presence flags (one matrix product); the CSR
columns are one gather per entry, compacted in one pass with row starts by
binary search; the neighbour table is read from rimmed brick blocks
(:meth:`engine.solver.voxels.VoxelIndex.neighbour_table`); the rhs is built one
axis at a time.  Measured on the 100k-point bunny scan (3 levels, 465k
unknowns) on the shared 2-core machine, loaded 3-5 by others (the old
assembly took 14-32 s here against 6.3 s on an idle machine), old and new
alternating: the CLI's ``system`` stage with 2 threads, 2 runs each, 31.9 +
14.5 s -> 11.2 + 6.6 s (2.6x); the assembly inputs captured from a real run,
in one script, 2 threads, wall, 3 repeats 72.7 s -> 32.4 s (2.2x); 1 thread,
CPU time, 2 repeats 18.9 s -> 9.3 s (2.0x).  The old implementation is the
tests' reference (tests/engine/system_reference.py).

On the CPU the matrix is built by :mod:`engine.solver.kernels` instead (numba,
straight into CSR: no (M, 125) stencil, no (C, 125) moments table).  The
three levels of the 1M-point clean bunny (1.9M, 852k and 213k voxels),
inputs captured from a real run, 2 threads, second run each: 11.8 + 4.6 + 1.5
s -> 3.7 + 1.8 + 0.7 s (rhs included), the same sparsity and values within 2e-7
of the largest; the pipeline's ``system`` stage 16-20 s -> 7.9 s and the run's
peak memory 3.8 -> 3.4 GB.  The matrix is symmetric, and where the level's voxels
are in (z, y, x) order (as :func:`engine.solver.hierarchy.build_levels` makes
them) a row's columns increase with the offset's index, so its entries from the
centre on are its upper triangle: only those are stored (``LevelSystem.upper``),
half the columns and values to write and hold (the 1M bunny's finest level: 83M
of 165M non-zeros; ``add_cell_matrices`` 2.8 -> 1.6 s and ``csr_columns``
1.1 -> 0.65 s there; issue 12, session 21).  A fresh process pays about 0.55 s to import numba
and load the cached kernels (the 100k clean bunny's stage still went 1.6-1.9 s
-> 1.0 s).  The torch path below is the CUDA path.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from .basis import product_polynomials, split_points, weights_1d
from .hierarchy import BATCH, Level
from .threads import chunks, compiled_on, run_parts, thread_count
from .voxels import unique_voxels_inverse

N_OFFSETS = 125
CENTRE = 62  # index of offset (0, 0, 0)
CELL_TAP = 13  # tap of offset (0, 0, 0) (engine.solver.basis.TAP_OFFSETS): a cell's own voxel
# cells whose (729-wide) local matrices are formed at once: cache-sized batches (2^11) were 20% faster with one
# thread but 2x slower with two on the loaded 2-core machine (each torch call wakes the thread pool)
ASSEMBLY_BATCH = 1 << 13


@dataclass(frozen=True)
class Weights:
    point: float = 1.0  # w_p, fit of f(p) to its target
    normal: float = 1.0  # w_n, fit of grad f(p) to its target
    smooth: float = 1.0  # lam, second-difference regulariser


NOISE_WEIGHT = 6.0


def point_weight(noise: float, voxel_size: float) -> float:
    """Weight of f(p) = 0 against grad f(p) = n, from the measured noise relative to the voxel.

    Noisy positions pull the zero level toward every outlier, while the normals
    still say which way the surface faces: with noise near half a voxel (where
    the automatic resolution puts it) the positions get ~0.1 of the normals'
    weight, on clean scans ~1 (both measured on the bunny: 0.5% noise, Chamfer
    0.51e-3 -> 0.35e-3; clean scans lose accuracy below 1).
    """
    return 1.0 / (1.0 + (NOISE_WEIGHT * noise / voxel_size) ** 2)


@dataclass
class LevelSystem:
    matrix: torch.Tensor  # (M, M) sparse CSR float32, or its upper triangle only (``upper``)
    rhs: torch.Tensor  # (M,)
    diagonal: torch.Tensor  # (M,)
    # The matrix is symmetric; the compiled assembly stores only its upper triangle (each row's own column
    # first) where the level's voxels are in (z, y, x) order: half the entries to write and hold.
    upper: bool = False

    def full(self) -> torch.Tensor:
        """The whole matrix (CSR): :attr:`matrix`, or its upper triangle completed by its mirror."""
        from .cg import symmetric_from_upper

        return symmetric_from_upper(self.matrix) if self.upper else self.matrix


def offset_index(delta: np.ndarray) -> np.ndarray:
    """Index in [0, 125) of offsets (..., 3) in [-2, 2]^3, x fastest."""
    d = delta + 2
    return d[..., 0] + 5 * d[..., 1] + 25 * d[..., 2]


def _pair_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tables of the 729 (a, b) tap pairs, a*27 + b, and of the 378 pairs a <= b.

    Returns the offset index of b - a of each pair, the 378 pairs a <= b (the
    cell matrix is symmetric, so only they are computed), and for each of the
    729 pairs its place among the 378.
    """
    from .basis import TAP_OFFSETS

    a, b = np.meshgrid(np.arange(27), np.arange(27), indexing="ij")
    upper_a, upper_b = np.triu_indices(27)
    place = np.zeros((27, 27), dtype=np.int64)
    place[upper_a, upper_b] = place[upper_b, upper_a] = np.arange(upper_a.size)
    return (offset_index(TAP_OFFSETS[b.reshape(-1)] - TAP_OFFSETS[a.reshape(-1)]), upper_a * 27 + upper_b,
            place.reshape(-1))


PAIR_OFFSET, UPPER_PAIRS, PAIR_PLACE = _pair_tables()


def moment_operator(weights: Weights, size: float) -> torch.Tensor:
    """(125, 729): maps a cell's monomial moments sum u_x^i u_y^j u_z^k to its 27 x 27 matrix."""
    cv, cd = product_polynomials()
    value = np.einsum("xXi,yYj,zZk->ijkzyxZYX", cv, cv, cv)
    grad = (np.einsum("xXi,yYj,zZk->ijkzyxZYX", cd, cv, cv) + np.einsum("xXi,yYj,zZk->ijkzyxZYX", cv, cd, cv)
            + np.einsum("xXi,yYj,zZk->ijkzyxZYX", cv, cv, cd))
    k = weights.point * value + weights.normal / size**2 * grad
    return torch.from_numpy(k.reshape(125, 729))


def _monomials(u: torch.Tensor) -> torch.Tensor:
    """(N, 125) products u_x^i u_y^j u_z^k, i, j, k in 0..4, i slowest."""
    powers = torch.stack([torch.ones_like(u), u, u * u, u * u * u, (u * u) ** 2], dim=-1)  # (N, 3, 5)
    yz = (powers[:, 1, :, None] * powers[:, 2, None, :]).view(-1, 1, 25)
    return (powers[:, 0, :, None] * yz).view(-1, 125)


def _data_stencil(level: Level, x: torch.Tensor, weights: Weights, stencil: torch.Tensor,
                  trust: torch.Tensor | None = None) -> None:
    """Add the data term's matrix to ``stencil`` (M * 125,) in place; ``trust`` (N,) weighs each point."""
    n = x.shape[0]
    cell, u = split_points(x / level.size)
    cells, inverse = unique_voxels_inverse(cell)
    moments = torch.zeros(cells.shape[0], 125, dtype=torch.float64, device=x.device)
    for start in range(0, n, BATCH):
        mono = _monomials(u[start:start + BATCH].double())
        if trust is not None:
            mono *= trust[start:start + BATCH, None].double()
        moments.index_add_(0, inverse[start:start + BATCH], mono)
    moments /= n
    # the cell matrix is symmetric: its 378 entries a <= b come from the product, the 729 from a gather
    op = moment_operator(weights, level.size)[:, UPPER_PAIRS].to(x.device, stencil.dtype)
    place = torch.from_numpy(PAIR_PLACE).to(x.device)
    # pair (a, b) lands in row taps[a] at offset PAIR_OFFSET[a * 27 + b]: a broadcast add, not a (C, 729) gather
    index_type = torch.int32 if stencil.numel() < 2**31 else torch.int64  # int32 halves the index traffic
    pair_offset = torch.from_numpy(PAIR_OFFSET.reshape(27, 27)).to(x.device, index_type)
    moments32 = moments.to(stencil.dtype)  # accumulated in float64, multiplied in float32
    for start in range(0, cells.shape[0], ASSEMBLY_BATCH):
        upper = moments32[start:start + ASSEMBLY_BATCH] @ op
        local = torch.gather(upper, 1, place.expand(upper.shape[0], -1))  # (C, 729)
        taps = level.taps(cells[start:start + ASSEMBLY_BATCH]).to(index_type)  # (C, 27), all present
        flat = (taps * N_OFFSETS)[:, :, None] + pair_offset  # (C, 27, 27)
        stencil.index_add_(0, flat.view(-1), local.view(-1))


def _tap_column(offset: np.ndarray) -> int:
    """Column of an offset in [-1, 1]^3 in the 27-neighbour table."""
    return int(offset[0] + 1 + 3 * (offset[1] + 1) + 9 * (offset[2] + 1))


def _smoothness_terms() -> list[tuple[np.ndarray, np.ndarray, float, np.ndarray]]:
    """Second differences: (tap offsets, coefficients, weight, offsets that must exist), xx yy zz then mixed.

    A mixed term needs its whole 3 x 3 plane, so that every pair of its taps is
    joined through an existing voxel (which :func:`_csr_columns` relies on).
    """
    eye = np.eye(3, dtype=np.int64)
    terms = []
    for i in range(3):
        taps = np.stack([-eye[i], 0 * eye[i], eye[i]])
        terms.append((taps, np.array([1.0, -2.0, 1.0]), 1.0, taps))
    for i in range(3):
        for j in range(i + 1, 3):
            taps = np.stack([eye[i] + eye[j], eye[i] - eye[j], -eye[i] + eye[j], -eye[i] - eye[j]])
            plane = np.array([a * eye[i] + b * eye[j] for a in (-1, 0, 1) for b in (-1, 0, 1)])
            terms.append((taps, np.array([0.25, -0.25, -0.25, 0.25]), 2.0, plane))
    return terms


def _smoothness_table() -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
    """The smoothness term as 21 constant stencils, one per (term, tap p) of :func:`_smoothness_terms`.

    Term t centred on voxel v adds c_p c_q w_t to row v + o_p at offset o_q - o_p.
    Seen from the row r = v + o_p, that is a constant 125-wide stencil, present
    when the voxel at -o_p from r exists and has term t's whole support.
    Returns each stencil's term t and the neighbour column of -o_p (two
    contiguous (21,) arrays: column views of one array are strided, and the
    compiled assembly then needed a second signature, loaded into every fresh
    run), each term's support columns, and the (21, 125) stencils (without the
    lam/M factor).
    """
    terms, columns, supports, stencils = [], [], [], []
    for t, (taps, coeffs, w, support) in enumerate(_smoothness_terms()):
        supports.append(np.array([_tap_column(o) for o in support]))
        for p in range(len(taps)):
            row = np.zeros(N_OFFSETS)
            row[offset_index(taps - taps[p])] = w * coeffs[p] * coeffs
            terms.append(t)
            columns.append(_tap_column(-taps[p]))
            stencils.append(row)
    return np.array(terms), np.array(columns), supports, np.array(stencils)


_SMOOTH_TERMS, _SMOOTH_COLUMNS, _SMOOTH_SUPPORTS, _SMOOTH_STENCILS = _smoothness_table()


def _smoothness_factors(level: Level, scale: torch.Tensor | None) -> torch.Tensor:
    """(M, 21) weight of each of :func:`_smoothness_table`'s stencils in each row: 0/1 presence flags (times the
    centre voxel's factor s_v, ``scale`` (M,), where given: the learned prior's)."""
    nbr = level.neighbours
    device = nbr.device
    exists = nbr >= 0
    # whole[t, 1 + v]: term t's support exists around v; column 0 stands for an absent voxel (-1)
    whole = torch.zeros(len(_SMOOTH_SUPPORTS), len(level) + 1, dtype=torch.bool, device=device)
    for t, support in enumerate(_SMOOTH_SUPPORTS):
        whole[t, 1:] = exists.index_select(1, torch.from_numpy(support).to(device)).all(dim=1)
    term = torch.from_numpy(_SMOOTH_TERMS).to(device)
    centre = nbr.index_select(1, torch.from_numpy(_SMOOTH_COLUMNS).to(device))  # (M, 21), -1: the False column
    present = whole.view(-1).index_select(0, (centre + 1 + (term * (len(level) + 1))[None, :]).view(-1))
    factor = present.view(-1, len(term)).to(torch.float32)
    if scale is not None:  # term t centred on voxel v weighs s_v; an absent centre (-1) is already 0
        padded = torch.cat((scale.new_zeros(1), scale)).to(torch.float32)
        factor *= padded.index_select(0, (centre + 1).view(-1)).view_as(factor)
    return factor


def _smoothness_stencil(level: Level, weight: float, stencil: torch.Tensor,
                        scale: torch.Tensor | None = None) -> None:
    """Add lam/M * sum_v s_v |D2 a|_v^2 to ``stencil`` (M * 125,) in place, for stencils whose taps all exist.

    One (M, 21) @ (21, 125) product of :func:`_smoothness_factors` by the constant
    stencils of :func:`_smoothness_table` (3x faster than scattering each tap pair).
    """
    factor = _smoothness_factors(level, scale).to(stencil.dtype)
    stencils = torch.from_numpy(_SMOOTH_STENCILS).to(stencil.device, stencil.dtype)
    stencil.view(len(level), N_OFFSETS).addmm_(factor, stencils, alpha=weight / level.smooth_voxels)


def _csr_columns(level: Level, start: int = 0, stop: int | None = None,
                 padded: torch.Tensor | None = None) -> torch.Tensor:
    """(rows, 125) int32 rows of the voxels at offsets [-2, 2]^3 (x fastest) of voxels start:stop, -1 if absent.

    Offset d is reached in two steps through the neighbour table: first
    clamp(d, -1, 1), then the rest.  Every pair of voxels that shares a cell
    with data, or a smoothness stencil, is joined through an existing voxel
    this way, so no non-zero of the matrix is lost.  The table is read with a
    leading row of -1 (``padded``, :func:`_padded_neighbours`, built once per
    level by the caller), so an absent first step (-1) lands there without a
    ``where`` pass over the (rows, 125) table.
    """
    nbr = level.neighbours
    if padded is None:
        padded = _padded_neighbours(nbr)
    first = torch.from_numpy(_FIRST_STEP).to(nbr.device)
    second = torch.from_numpy(_SECOND_STEP).to(nbr.device, nbr.dtype)
    step = (nbr[start:stop] + 1) * 27  # start of each neighbour's row in ``padded``; 0 (the -1 row) if absent
    # gather, not index_select along dim 1: 2.5x faster on the CPU for these (rows, 125) int32 tables
    at = torch.gather(step, 1, first.expand(step.shape[0], -1)) + second
    return padded.index_select(0, at.view(-1)).view(-1, 125)


def _padded_neighbours(nbr: torch.Tensor) -> torch.Tensor:
    """The neighbour table flat, after a row of -1 (the row of an absent voxel)."""
    return torch.cat((torch.full((1, 27), -1, dtype=nbr.dtype, device=nbr.device), nbr)).view(-1)


def _two_steps() -> tuple[np.ndarray, np.ndarray]:
    """Neighbour-table columns of clamp(d, -1, 1) and of d - clamp(d, -1, 1), for the 125 offsets d."""
    d = np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij"), -1).reshape(-1, 3)[:, ::-1]  # x fastest
    first = np.clip(d, -1, 1)
    column = np.array([1, 3, 9])
    return (first + 1) @ column, (d - first + 1) @ column


_FIRST_STEP, _SECOND_STEP = _two_steps()


def _second_step_masks() -> np.ndarray:
    """(27,) int64: for each first-step column j, the bits of the second-step columns of the offsets reached via j."""
    masks = np.zeros(27, dtype=np.int64)
    for j, k in zip(_FIRST_STEP, _SECOND_STEP, strict=True):
        masks[j] |= 1 << int(k)
    return masks


_SECOND_MASKS = _second_step_masks()


def _presence_bits(nbr: torch.Tensor) -> torch.Tensor:
    """(M + 1,) int64: bit k of row 1 + v says whether voxel v's neighbour in column k exists; row 0 (absent): 0."""
    weights = torch.tensor([1 << k for k in range(27)], dtype=torch.int64, device=nbr.device)
    bits = ((nbr >= 0).to(torch.int64) * weights).sum(dim=1)
    return torch.cat((bits.new_zeros(1), bits))


def _row_counts(nbr: torch.Tensor, bits: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """(rows,) non-zeros of rows start:stop, i.e. their offsets in [-2, 2]^3 with an existing voxel.

    Offset d exists when the first step's neighbour u exists and u's neighbour at the second step does: bit
    ``second`` of u's presence bits.  A popcount of the bits each first-step neighbour contributes, over its 27
    columns: (rows, 27) work instead of the (rows, 125) gather of :func:`_csr_columns` (the large-level path's
    counting pass; on the table scan's finest level, 692k rows, the CSR build went 5.0 -> 3.8 s).
    """
    x = bits.index_select(0, (nbr[start:stop].to(torch.int64) + 1).view(-1)).view(-1, 27)
    x = x & torch.from_numpy(_SECOND_MASKS).to(x.device)
    x = x - ((x >> 1) & 0x55555555)  # popcount of values below 2^27, in int64 so nothing overflows
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    x = (x * 0x01010101) >> 24 & 0xFF
    return x.sum(dim=1)


def _rhs(level: Level, x: torch.Tensor, target_value: torch.Tensor, target_grad: torch.Tensor,
         weights: Weights, trust: torch.Tensor | None = None) -> torch.Tensor:
    """The data term's right-hand side: sum_p w_p/N t_p B(p) + w_n/N g_p . grad B(p) over each point's 27 taps.

    The basis is a tensor product, so the 27 values are built one axis at a
    time with the targets folded in first, never forming the (N, 27, 3) gradients.
    """
    n = x.shape[0]
    b = torch.zeros(len(level), dtype=torch.float32, device=x.device)
    for start in range(0, n, BATCH):
        cell, u = split_points(x[start:start + BATCH] / level.size)
        w, d = weights_1d(u)  # (B, 3 axes, 3 taps)
        grad_scale = (weights.normal / n / level.size) * target_grad[start:start + BATCH, :, None]
        value = (weights.point / n) * target_value[start:start + BATCH, None]
        if trust is not None:
            t = trust[start:start + BATCH, None]
            grad_scale, value = grad_scale * t[:, :, None], value * t
        d = d * grad_scale  # g_axis d/du
        wx, wy, wz, dx, dy, dz = w[:, 0], w[:, 1], w[:, 2], d[:, 0], d[:, 1], d[:, 2]
        xs = value * wx + dx  # (B, 3): x's factor of the value and x-gradient terms
        xy = wy[:, :, None] * xs[:, None, :] + dy[:, :, None] * wx[:, None, :]  # (B, 3 y, 3 x)
        contrib = wz[:, :, None, None] * xy[:, None] + dz[:, :, None, None] * (wy[:, :, None] * wx[:, None, :])[:, None]
        b.index_add_(0, level.taps(cell).view(-1), contrib.reshape(-1))
    return b


ROW_BATCH = 1 << 17
KEEP_NONZEROS = 1 << 26  # entries of the (M, 125) column table (int32: 256 MiB) worth one pass


def _to_csr(level: Level, stencil: torch.Tensor) -> torch.Tensor:
    """CSR (int32 indices) of the (M, 125) stencil.

    Small levels take one pass over the whole (M, 125) column table (at most
    ``KEEP_NONZEROS`` entries, 256 MiB of int32); large ones go in row chunks and
    two passes (count from neighbour-presence bits, :func:`_row_counts`, then
    fill) and never hold an (M, 125) index table nor a
    second copy of the non-zeros (at 1M points this halved the assembly's peak
    memory).  Row starts come from a binary search of the sorted non-zero
    positions, not from a pass over the (M, 125) table.
    """
    m, device = stencil.shape[0], stencil.device
    padded = _padded_neighbours(level.neighbours)
    if m * N_OFFSETS <= KEEP_NONZEROS:  # one pass over all rows
        c = _csr_columns(level, padded=padded)
        # nonzero + index_select: boolean-mask indexing of wide arrays is 3x slower on the CPU
        flat = (c >= 0).view(-1).nonzero().squeeze(1)
        crow = torch.searchsorted(flat, torch.arange(m + 1, device=device) * N_OFFSETS)
        cols, values = c.view(-1).index_select(0, flat), stencil.view(-1).index_select(0, flat)
    else:
        crow = torch.zeros(m + 1, dtype=torch.int64, device=device)
        bits = _presence_bits(level.neighbours)
        for start in range(0, m, ROW_BATCH):
            stop = min(start + ROW_BATCH, m)
            crow[start + 1:stop + 1] = _row_counts(level.neighbours, bits, start, stop)
        crow = torch.cumsum(crow, 0)
        nnz = int(crow[-1])
        cols = torch.empty(nnz, dtype=torch.int32, device=device)
        values = torch.empty(nnz, dtype=stencil.dtype, device=device)
        for start in range(0, m, ROW_BATCH):
            c = _csr_columns(level, start, start + ROW_BATCH, padded)
            flat = (c >= 0).view(-1).nonzero().squeeze(1)
            lo, hi = int(crow[start]), int(crow[min(start + ROW_BATCH, m)])
            cols[lo:hi] = c.view(-1).index_select(0, flat)
            values[lo:hi] = stencil[start:start + ROW_BATCH].reshape(-1).index_select(0, flat)
    with warnings.catch_warnings():  # "CSR support is in beta": our use is plain SpMV, checked by tests
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow.to(torch.int32), cols, values, size=(m, m), check_invariants=False)


def _sparse_stencils() -> tuple[np.ndarray, np.ndarray]:
    """:data:`_SMOOTH_STENCILS` as (21, 4) offsets and weights of their non-zeros (padded with weight 0)."""
    width = int((_SMOOTH_STENCILS != 0).sum(axis=1).max())
    offsets = np.full((len(_SMOOTH_STENCILS), width), CENTRE, dtype=np.int64)
    weights = np.zeros((len(_SMOOTH_STENCILS), width), dtype=np.float32)
    for s, row in enumerate(_SMOOTH_STENCILS):
        nz = np.nonzero(row)[0]
        offsets[s, :nz.size], weights[s, :nz.size] = nz, row[nz]
    return offsets, weights


_SPARSE_OFFSETS, _SPARSE_WEIGHTS = _sparse_stencils()
_SUPPORT_COLUMNS = np.full((len(_SMOOTH_SUPPORTS), max(len(c) for c in _SMOOTH_SUPPORTS)), -1, dtype=np.int64)
for _t, _columns in enumerate(_SMOOTH_SUPPORTS):
    _SUPPORT_COLUMNS[_t, :len(_columns)] = _columns


def _assemble_compiled(level: Level, x: torch.Tensor, target_value: torch.Tensor, target_grad: torch.Tensor,
                       weights: Weights, trust: torch.Tensor | None, smooth_scale: torch.Tensor | None
                       ) -> LevelSystem:
    """The system with its matrix built straight into CSR by :mod:`engine.solver.kernels` (CPU).

    The same sums as :func:`_rhs`, :func:`_data_stencil`, :func:`_smoothness_stencil` and :func:`_to_csr`,
    without the (M, 125) stencil (957 MB on the 1M-point bunny's finest level): the structure first, then
    the cell matrices (moments a batch of cells at a time over points sorted by cell, one BLAS product per
    batch) and the smoothness stencils added into its values.  The right-hand side is summed over the same
    cells, so each cell's 27 voxel rows are looked up once (torch's :func:`_rhs` took 0.4 s per level of
    the 1M-point bunny, mostly per-point lookups and (N, 27) temporaries).
    """
    from . import kernels

    m, n = len(level), x.shape[0]
    nbr = level.neighbours.numpy()
    threads = thread_count()
    rows = chunks(0, m)
    cell, u = split_points(x / level.size)
    cells, inverse = unique_voxels_inverse(cell)
    order = np.empty(n, np.int64)  # the points cell by cell (a counting sort: torch's stable argsort is serial)
    cell_start = np.empty(cells.shape[0] + 1, np.int64)
    kernels.group_rows(inverse.numpy(), cell_start, order)
    u_np = u.to(torch.float32).numpy()
    trust_np = np.zeros(0, np.float32) if trust is None else trust.to(torch.float32).numpy()
    op = moment_operator(weights, level.size)[:, UPPER_PAIRS].to(torch.float32)
    pair_offset = PAIR_OFFSET.astype(np.int64)
    value = ((weights.point / n) * target_value).to(torch.float32).numpy()
    grad = ((weights.normal / n / level.size) * target_grad).to(torch.float32).numpy()
    scale = np.zeros(0, np.float32) if smooth_scale is None else smooth_scale.to(torch.float32).numpy()
    rhs = np.zeros(m, np.float32)
    # voxels in (z, y, x) order: a row's columns increase with the offset, so the upper triangle is the offsets
    # from the centre on, and only those are stored
    triangle = in_scan_order(level.ijk)
    lowest = CENTRE if triangle else 0
    ranks = np.empty((m, N_OFFSETS - lowest), np.uint8)
    crow = np.zeros(m + 1, np.int64)
    whole = np.empty(m, np.uint8)
    run_parts(partial(kernels.csr_ranks, nbr, _FIRST_STEP, _SECOND_STEP, lowest, ranks=ranks, counts=crow[1:]), rows)
    np.cumsum(crow, out=crow)
    cols = np.empty(int(crow[-1]), np.int32)
    # Zeroed by all threads before the cells add into it: the threads' rows in add_cell_matrices are cut at the
    # batch's cells, so one thread's rows are always the ones touched first, and it took every page fault of a
    # fresh np.zeros (the 1M-point bunny's finest level: 0.7-0.87 s on that thread against 0.30 s on the other).
    values = np.empty(cols.shape[0], np.float32)
    run_parts(partial(_zero, values), chunks(0, values.shape[0]))
    run_parts(partial(kernels.csr_columns, nbr, _FIRST_STEP, _SECOND_STEP, lowest, crow=crow, ranks=ranks, cols=cols),
              rows)
    for start in range(0, cells.shape[0], ASSEMBLY_BATCH):
        stop = min(start + ASSEMBLY_BATCH, cells.shape[0])
        batch = chunks(start, stop)
        moments, sums = np.empty((stop - start, 125)), np.empty((stop - start, 27))
        run_parts(_cells_into(kernels.batch_moments, moments, start, order, cell_start, u_np, trust_np, 1.0 / n), batch)
        run_parts(_cells_into(kernels.cell_rhs, sums, start, order, cell_start, u_np, value, grad, trust_np), batch)
        upper = (torch.from_numpy(moments).to(torch.float32) @ op).numpy()
        taps = level.taps(cells[start:stop]).to(torch.int32).numpy()
        # threads take disjoint rows, split where the batch's cells are (rows follow the voxels' order)
        own = np.sort(taps[:, CELL_TAP])
        cuts = [0, *(int(own[len(own) * k // threads]) for k in range(1, threads)), m]
        run_parts(partial(kernels.add_cell_matrices, upper, taps, PAIR_PLACE, pair_offset, crow, ranks, lowest, values),
                  list(zip(cuts[:-1], cuts[1:], strict=True)))
        kernels.add_rows(taps, sums, rhs)
    run_parts(partial(kernels.smoothness_support, nbr, _SUPPORT_COLUMNS, whole=whole), rows)
    run_parts(partial(kernels.add_smoothness, nbr, whole, _SMOOTH_TERMS, _SMOOTH_COLUMNS,
                      _SPARSE_OFFSETS, _SPARSE_WEIGHTS, scale, weights.smooth / level.smooth_voxels, crow=crow,
                      ranks=ranks, lowest=lowest, values=values), rows)
    diag_mean = float(torch.from_numpy(kernels.diagonal(crow, ranks, CENTRE - lowest, values)).mean())
    kernels.add_diagonal(crow, ranks, CENTRE - lowest, 1e-4 * diag_mean, values)
    diagonal = torch.from_numpy(kernels.diagonal(crow, ranks, CENTRE - lowest, values))
    # check_invariants named: left unset, torch warns that the checks are "implicitly disabled", and the filter
    # below is process-wide, so another thread's catch_warnings can lift it (the 1M bunny's stderr showed it once)
    with warnings.catch_warnings():  # "CSR support is in beta": our use is plain SpMV, checked by tests
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_csr_tensor(torch.from_numpy(crow).to(torch.int32), torch.from_numpy(cols),
                                         torch.from_numpy(values), size=(m, m), check_invariants=False)
    return LevelSystem(matrix=matrix, rhs=torch.from_numpy(rhs), diagonal=diagonal, upper=triangle)


def _zero(values: np.ndarray, lo: int, hi: int) -> None:
    values[lo:hi] = 0  # numpy fills without the GIL


def in_scan_order(ijk: torch.Tensor) -> bool:
    """Whether voxels (M, 3) int64 on the CPU are in increasing (z, y, x) order, as
    :func:`engine.solver.hierarchy.build_levels` makes them (watertight mode's added voxels are not)."""
    from . import kernels

    return bool(kernels.increasing_voxels(ijk.numpy()))


def _cells_into(kernel: Callable[..., None], out: np.ndarray, start: int, *args: Any) -> Callable[[int, int], None]:
    """A job over cells lo:hi: ``kernel(*args, lo, hi, out[lo - start:hi - start])``."""
    def job(lo: int, hi: int) -> None:
        kernel(*args, lo, hi, out[lo - start:hi - start])
    return job


def assemble(level: Level, x: torch.Tensor, target_value: torch.Tensor, target_grad: torch.Tensor,
             weights: Weights, trust: torch.Tensor | None = None,
             smooth_scale: torch.Tensor | None = None, compiled: bool | None = None) -> LevelSystem:
    """The level's normal equations for points x (N, 3) in finest-voxel units and their targets.

    ``trust`` (N,), mean 1, weighs each point's data terms (None: all 1); ``smooth_scale`` (M,) the
    smoothness term centred on each voxel (None: all 1; :mod:`engine.prior`).  ``compiled``: build the
    matrix with :mod:`engine.solver.kernels` (None: on the CPU) or with torch (the reference, and CUDA).
    """
    m = len(level)
    device = x.device
    if compiled_on(device, compiled):
        return _assemble_compiled(level, x, target_value, target_grad, weights, trust, smooth_scale)
    rhs = _rhs(level, x, target_value, target_grad, weights, trust)
    stencil = torch.zeros(m * N_OFFSETS, dtype=torch.float32, device=device)
    _data_stencil(level, x, weights, stencil, trust)
    _smoothness_stencil(level, weights.smooth, stencil, smooth_scale)
    stencil = stencil.view(m, N_OFFSETS)
    # A tiny ridge keeps voxels without data or stencils (isolated corners) non-singular.
    diag_mean = float(stencil[:, CENTRE].mean())
    stencil[:, CENTRE] += 1e-4 * diag_mean
    matrix = _to_csr(level, stencil)
    return LevelSystem(matrix=matrix, rhs=rhs, diagonal=stencil[:, CENTRE].clone())
