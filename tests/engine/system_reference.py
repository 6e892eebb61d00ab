"""The system assembly as it was before it was restructured (commit 838850c), kept as the tests' reference.

tests/engine/test_system.py asserts that :func:`engine.solver.system.assemble`
builds the same CSR matrix (pattern and values), rhs and diagonal as this
straightforward version: scatter every tap pair into an (M, 125) stencil, then
compact it.  The neighbour table is rebuilt here the old way too (27 lookups
per voxel), so the reference shares no restructured code.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from engine.solver.basis import split_points, tap_weights
from engine.solver.hierarchy import BATCH, Level
from engine.solver.system import (
    _FIRST_STEP,
    _SECOND_STEP,
    ASSEMBLY_BATCH,
    CENTRE,
    N_OFFSETS,
    PAIR_OFFSET,
    LevelSystem,
    Weights,
    _monomials,
    _smoothness_terms,
    _tap_column,
    moment_operator,
    offset_index,
)
from engine.solver.voxels import unique_voxels_inverse

PAIR_ROW = np.repeat(np.arange(27), 27)  # the row tap a of pair a * 27 + b


def reference_level(level: Level) -> Level:
    """A copy of ``level`` whose neighbour table is built by 27 lookups per voxel, as it was."""
    copy = Level(depth=level.depth, size=level.size, index=level.index, smooth_count=level.smooth_count)
    rows = torch.empty(len(level), 27, dtype=torch.int32, device=level.ijk.device)
    for start in range(0, len(level), BATCH):
        rows[start:start + BATCH] = level._lookup_taps(level.ijk[start:start + BATCH]).to(torch.int32)
    copy._neighbours = rows
    return copy


def _data_stencil(level: Level, x: torch.Tensor, weights: Weights, stencil: torch.Tensor) -> None:
    """Add the data term's matrix to ``stencil`` (M * 125,) in place."""
    n = x.shape[0]
    cell, u = split_points(x / level.size)
    cells, inverse = unique_voxels_inverse(cell)
    moments = torch.zeros(cells.shape[0], 125, dtype=torch.float64, device=x.device)
    for start in range(0, n, BATCH):
        moments.index_add_(0, inverse[start:start + BATCH], _monomials(u[start:start + BATCH].double()))
    moments /= n
    op = moment_operator(weights, level.size).to(x.device, stencil.dtype)
    pair_row = torch.from_numpy(PAIR_ROW).to(x.device)
    pair_offset = torch.from_numpy(PAIR_OFFSET).to(x.device)
    moments32 = moments.to(stencil.dtype)  # accumulated in float64, multiplied in float32
    for start in range(0, cells.shape[0], ASSEMBLY_BATCH):
        local = moments32[start:start + ASSEMBLY_BATCH] @ op  # (C, 729)
        taps = level.taps(cells[start:start + ASSEMBLY_BATCH])  # (C, 27), all present by construction
        flat = taps[:, pair_row] * N_OFFSETS + pair_offset
        stencil.index_add_(0, flat.reshape(-1), local.reshape(-1))


def _smoothness_stencil(level: Level, weight: float, stencil: torch.Tensor) -> None:
    """Add lam/M * sum |D2 a|^2 to ``stencil`` in place, for stencils whose taps all exist."""
    nbr = level.neighbours
    factor = weight / level.smooth_voxels  # lam / M, M with the bridging ring where a level goes without
    for taps, coeffs, w, support in _smoothness_terms():
        need = nbr[:, [_tap_column(o) for o in support]]
        rows = nbr[(need >= 0).all(dim=1)][:, [_tap_column(o) for o in taps]]
        for p in range(len(taps)):
            for q in range(len(taps)):
                flat = rows[:, p] * N_OFFSETS + int(offset_index(taps[q] - taps[p]))
                stencil.index_add_(0, flat, torch.full(flat.shape, factor * w * coeffs[p] * coeffs[q],
                                                       dtype=stencil.dtype, device=stencil.device))


def _csr_columns(level: Level, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """(rows, 125) int32 rows of the voxels at offsets [-2, 2]^3 (x fastest) of voxels start:stop, -1 if absent.

    Offset d is reached in two steps through the neighbour table: first
    clamp(d, -1, 1), then the rest.  Every pair of voxels that shares a cell
    with data, or a smoothness stencil, is joined through an existing voxel
    this way, so no non-zero of the matrix is lost.
    """
    nbr = level.neighbours
    padded = torch.cat((nbr, torch.full((1, 27), -1, dtype=nbr.dtype, device=nbr.device))).view(-1)
    mid = nbr[start:stop, torch.from_numpy(_FIRST_STEP).to(nbr.device)]  # (rows, 125), -1 where absent
    mid = torch.where(mid < 0, nbr.shape[0], mid)  # absent -> the padding row of -1
    second = torch.from_numpy(_SECOND_STEP).to(nbr.device, nbr.dtype)
    return padded.index_select(0, (mid * 27 + second).view(-1)).view(-1, 125)


ROW_BATCH = 1 << 17
KEEP_COLUMNS = 1 << 26  # int32 entries (256 MiB) of column table worth keeping between the two passes


def _to_csr(level: Level, stencil: torch.Tensor) -> torch.Tensor:
    """CSR (int32 indices) of the (M, 125) stencil, in row chunks and two passes (count, then fill).

    Large levels never hold an (M, 125) index table nor a second copy of the
    non-zeros (at 1M points this halved the assembly's peak memory); small
    ones keep the first pass's columns instead of computing them again.
    """
    m = stencil.shape[0]
    keep = m * N_OFFSETS <= KEEP_COLUMNS  # small levels: compute the columns once and keep them
    kept: list[torch.Tensor] = []
    counts = []
    for start in range(0, m, ROW_BATCH):
        c = _csr_columns(level, start, start + ROW_BATCH)
        counts.append((c >= 0).sum(dim=1))
        if keep:
            kept.append(c)
    crow = torch.zeros(m + 1, dtype=torch.int64, device=stencil.device)
    crow[1:] = torch.cumsum(torch.cat(counts), 0)
    nnz = int(crow[-1])
    cols = torch.empty(nnz, dtype=torch.int32, device=stencil.device)
    values = torch.empty(nnz, dtype=stencil.dtype, device=stencil.device)
    for i, start in enumerate(range(0, m, ROW_BATCH)):
        c = kept[i] if keep else _csr_columns(level, start, start + ROW_BATCH)
        # nonzero + index_select: boolean-mask indexing of wide arrays is 3x slower on the CPU
        flat = (c >= 0).view(-1).nonzero().squeeze(1)
        lo, hi = int(crow[start]), int(crow[min(start + ROW_BATCH, m)])
        cols[lo:hi] = c.view(-1).index_select(0, flat)
        values[lo:hi] = stencil[start:start + ROW_BATCH].reshape(-1).index_select(0, flat)
    with warnings.catch_warnings():  # "CSR support is in beta": our use is plain SpMV, checked by tests
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow.to(torch.int32), cols, values, size=(m, m), check_invariants=False)


def _rhs(level: Level, x: torch.Tensor, target_value: torch.Tensor, target_grad: torch.Tensor,
         weights: Weights) -> torch.Tensor:
    n = x.shape[0]
    b = torch.zeros(len(level), dtype=torch.float32, device=x.device)
    for start in range(0, n, BATCH):
        cell, u = split_points(x[start:start + BATCH] / level.size)
        w, g = tap_weights(u, level.size)
        contrib = (weights.point / n) * w * target_value[start:start + BATCH, None]
        contrib += (weights.normal / n) * (g * target_grad[start:start + BATCH, None, :]).sum(dim=-1)
        rows = level.taps(cell)
        b.index_add_(0, rows.reshape(-1), contrib.reshape(-1))
    return b


def reference_assemble(level: Level, x: torch.Tensor, target_value: torch.Tensor, target_grad: torch.Tensor,
                       weights: Weights) -> LevelSystem:
    """The old ``assemble``, on a copy of ``level`` with the old neighbour table."""
    level = reference_level(level)
    m = len(level)
    stencil = torch.zeros(m * N_OFFSETS, dtype=torch.float32, device=x.device)
    _data_stencil(level, x, weights, stencil)
    _smoothness_stencil(level, weights.smooth, stencil)
    stencil = stencil.view(m, N_OFFSETS)
    diag_mean = float(stencil[:, CENTRE].mean())
    stencil[:, CENTRE] += 1e-4 * diag_mean
    matrix = _to_csr(level, stencil)
    return LevelSystem(matrix=matrix, rhs=_rhs(level, x, target_value, target_grad, weights),
                       diagonal=stencil[:, CENTRE].clone())
