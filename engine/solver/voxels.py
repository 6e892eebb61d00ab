"""Sparse sets of integer voxel coordinates with fast index lookup.

A two-level table: a dense grid of 8^3 bricks over the set's bounding box, each
occupied brick holding a 512-entry table of voxel indices.  A lookup is two
gathers, vectorised in torch on any device (no hashing, no sorting), which on
a 2-core CPU is several times faster than sorted keys + ``searchsorted``.
(fVDB grids would be the natural replacement on CUDA; no adapter exists yet,
because fVDB cannot be installed where this engine is tested.)
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from ..errors import MemoryLimitError
from ..vectors import column_bounds
from ..warm import compiled_pays
from .threads import chunks, compiled_on, run_parts

BRICK_BITS = 3
BRICK = 1 << BRICK_BITS
MAX_BRICK_CELLS = 1 << 28  # 1 GiB of int32 brick grid: beyond this the voxel size is too small
BIT_DILATION_MIN = 1 << 14  # voxels from which a box dilation runs on a bit grid (below, the sort is as quick)
BIT_DILATION_WORDS = 1 << 25  # 64-bit words of that grid at most (two grids of 256 MiB); beyond, the sort
BIT_UNIQUE_MIN = 1 << 14  # rows from which :func:`unique_voxels_inverse` ranks them on a bit grid
# ...where its grid has at most this many words per row (the grid and its running counts, 16 B a word, beside the
# 8 B a row of the result): the 1M-point bunny's cells at its finest voxel have 1.2, a sparser box would cost more
# in zeroing and counting words than the sort it saves.
BIT_UNIQUE_WORDS_PER_ROW = 4


class VoxelIndex:
    """Index of a set of unique voxels ``ijk`` (M, 3) int64: ``lookup(q)`` gives the row or -1."""

    def __init__(self, ijk: torch.Tensor) -> None:
        if ijk.numel() == 0:
            raise ValueError("VoxelIndex needs at least one voxel")
        self.ijk = ijk
        self.device = ijk.device
        self.origin = ijk.min(dim=0).values
        rel = ijk - self.origin
        brick = rel >> BRICK_BITS
        self.bdims = brick.max(dim=0).values + 1
        total = int(self.bdims.prod())
        if total > MAX_BRICK_CELLS:
            raise MemoryLimitError(
                f"The voxel grid would span {total} bricks, beyond the engine's limit.",
                "Use a larger voxel size or a lower detail level.",
            )
        bkey = self._brick_key(brick)
        ubk, inv = torch.unique(bkey, return_inverse=True)
        self.grid = torch.full((total,), -1, dtype=torch.int32, device=self.device)
        self.grid[ubk] = torch.arange(ubk.numel(), dtype=torch.int32, device=self.device)
        self.bricks = ubk  # brick key of each brick table
        local = rel & (BRICK - 1)
        lkey = (local[:, 2] * BRICK + local[:, 1]) * BRICK + local[:, 0]
        self.table = torch.full((ubk.numel(), BRICK**3), -1, dtype=torch.int32, device=self.device)
        self.table[inv, lkey] = torch.arange(ijk.shape[0], dtype=torch.int32, device=self.device)

    def __len__(self) -> int:
        return int(self.ijk.shape[0])

    def _brick_key(self, brick: torch.Tensor) -> torch.Tensor:
        return (brick[..., 2] * self.bdims[1] + brick[..., 1]) * self.bdims[0] + brick[..., 0]

    def lookup(self, q: torch.Tensor) -> torch.Tensor:
        """Row of each query voxel (..., 3) int64 in ``ijk``, or -1 where absent; int64 (...)."""
        shape = q.shape[:-1]
        rel = (q.reshape(-1, 3) - self.origin).to(torch.int32)
        bdims = self.bdims.to(torch.int32)
        brick = rel >> BRICK_BITS
        inside = ((rel >= 0) & (brick < bdims)).all(dim=-1)
        bkey = torch.where(inside, (brick[:, 2] * bdims[1] + brick[:, 1]) * bdims[0] + brick[:, 0], 0)
        b = torch.index_select(self.grid, 0, bkey)
        local = rel & (BRICK - 1)
        flat = b.clamp_min(0) * BRICK**3 + ((local[:, 2] << BRICK_BITS) + local[:, 1] << BRICK_BITS) + local[:, 0]
        row = torch.index_select(self.table.view(-1), 0, flat)
        return torch.where(inside & (b >= 0), row, -1).to(torch.int64).reshape(shape)

    def neighbour_table(self, batch: int = 1 << 18, compiled: bool | None = None) -> torch.Tensor:
        """(M, 27) int32 rows of each voxel's 27 neighbours, -1 where absent.

        Neighbour t is at offset (x, y, z) in [-1, 1]^3 with t = (x + 1) + 3 (y + 1) + 9 (z + 1).
        ``compiled`` (None: on the CPU): 27 lookups per voxel in one loop
        (:func:`engine.solver.kernels.neighbour_rows`, threaded over voxels; the 1M-point bunny's
        finest level 0.48 -> 0.16 s, all three levels 0.74 -> 0.26 s).  In torch, each brick's 8^3
        table is copied, with a one-voxel rim from its 26 neighbour bricks, into a 10^3 block; a
        voxel's neighbours are then one gather at fixed distances from its own place in its block
        (close in memory), instead of 27 lookups of several passes each (~10x faster on the finest level of the
        100k-point bunny scan).  Both give the same table.
        """
        if compiled_on(self.device, compiled):
            return self._neighbour_table_compiled()
        k, h, dev = self.table.shape[0], BRICK + 2, self.device
        tables = torch.cat((self.table, self.table.new_full((1, BRICK**3), -1))).view(k + 1, BRICK, BRICK, BRICK)
        bx, rest = self.bricks % self.bdims[0], self.bricks // self.bdims[0]
        brick = torch.stack((bx, rest % self.bdims[1], rest // self.bdims[1]), dim=1)  # (K, 3) x, y, z
        block = torch.empty((k, h, h, h), dtype=torch.int32, device=dev)  # z, y, x like the tables
        # per step along an axis: the block's rim or interior it fills, and the slice of the neighbour's table
        spans = {-1: (slice(0, 1), slice(BRICK - 1, BRICK)), 0: (slice(1, BRICK + 1), slice(0, BRICK)),
                 1: (slice(BRICK + 1, h), slice(0, 1))}
        for dz in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    nb = brick + torch.tensor([dx, dy, dz], device=dev)
                    inside = ((nb >= 0) & (nb < self.bdims)).all(dim=1)
                    slot = self.grid[torch.where(inside, self._brick_key(nb), 0)]
                    slot = torch.where(inside & (slot >= 0), slot, k).long()  # k: the table of -1
                    (zd, zs), (yd, ys), (xd, xs) = spans[dz], spans[dy], spans[dx]
                    block[:, zd, yd, xd] = tables[:, zs, ys, xs][slot]
        offsets = torch.tensor([z * h * h + y * h + x for z in (-1, 0, 1) for y in (-1, 0, 1) for x in (-1, 0, 1)],
                               device=dev)
        rows = torch.empty(len(self), 27, dtype=torch.int32, device=dev)
        flat_block = block.view(-1)
        for start in range(0, len(self), batch):
            rel = self.ijk[start:start + batch] - self.origin
            slot = self.grid[self._brick_key(rel >> BRICK_BITS)].long()
            local = (rel & (BRICK - 1)) + 1
            place = slot * h**3 + (local[:, 2] * h + local[:, 1]) * h + local[:, 0]
            rows[start:start + batch] = flat_block[(place[:, None] + offsets).view(-1)].view(-1, 27)
        return rows

    def _neighbour_table_compiled(self) -> torch.Tensor:
        from . import kernels

        rows = np.empty((len(self), 27), np.int32)
        run_parts(partial(kernels.neighbour_rows, self.ijk.numpy(), self.origin.numpy(), self.bdims.numpy(),
                          self.grid.numpy(), self.table.numpy(), out=rows), chunks(0, len(self)))
        return torch.from_numpy(rows)


def unique_voxels(ijk: torch.Tensor) -> torch.Tensor:
    """Unique rows of an (M, 3) int64 tensor, in a deterministic (z, y, x-major) order."""
    return unique_voxels_inverse(ijk)[0]


def unique_voxels_inverse(ijk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique rows (K, 3) of an (M, 3) int64 tensor and, for each input row, its row among them (M,).

    Rows are packed into one int64 key first: ``torch.unique(dim=0)`` is several
    times slower on the CPU.  There, a large set whose bounding box is not much
    sparser than the set is ranked on a bit grid instead (:func:`_unique_bits`):
    the same rows in the same order.
    """
    if ijk.device.type == "cpu" and ijk.shape[0] >= BIT_UNIQUE_MIN and compiled_pays(ijk.shape[0]):
        done = _unique_bits(ijk)
        if done is not None:
            return done
    lo = ijk.min(dim=0).values
    rel = ijk - lo
    dims = rel.max(dim=0).values + 1
    key = (rel[:, 2] * dims[1] + rel[:, 1]) * dims[0] + rel[:, 0]
    ukey, inverse = torch.unique(key, return_inverse=True)
    x = ukey % dims[0]
    y = (ukey // dims[0]) % dims[1]
    z = ukey // (dims[0] * dims[1])
    return torch.stack((x, y, z), dim=1) + lo, inverse


def _unique_bits(ijk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`unique_voxels_inverse` on a bit grid over the set's bounding box (:mod:`engine.solver.kernels`):
    one bit set per row, the set bits counted word by word, each row's rank read off its bit; None where the grid
    would have more than :data:`BIT_UNIQUE_WORDS_PER_ROW` words per row or :data:`BIT_DILATION_WORDS` in all.

    The sort it replaces is serial: on the 1M-point bunny's finest cells (456k of 1M rows) 0.07-0.11 s against
    0.05 s here, its meshing corners (1.2M of 3.6M) 0.30-0.35 s against 0.06 s.
    """
    from . import kernels

    a = np.ascontiguousarray(ijk.numpy())
    low, high = column_bounds(a)
    dims = high - low + 1
    made = _bit_grid(a, low, dims, min(BIT_DILATION_WORDS, BIT_UNIQUE_WORDS_PER_ROW * a.shape[0]))
    if made is None:
        return None
    grid, words = made
    ranks = np.empty(grid.shape[0], np.int64)
    count = kernels.word_ranks(grid, ranks)
    inverse = np.empty(a.shape[0], np.int64)
    kernels.bit_ranks(a, low, int(dims[1]), words, grid, ranks, inverse)
    out = np.empty((count, 3), np.int64)
    kernels.grid_voxels(grid, int(dims[1]), words, low, out)
    return torch.from_numpy(out), torch.from_numpy(inverse)


def _bit_grid(a: np.ndarray, origin: np.ndarray, dims: np.ndarray, most: int) -> tuple[np.ndarray, int] | None:
    """Voxels ``a`` (M, 3) int64 as set bits of a grid over the box of ``dims`` cells from ``origin``: rows (z, y) of
    64-bit words along x (:func:`engine.solver.kernels.set_bits`); the grid and its words a row, or None where it
    would take more than ``most`` words."""
    from . import kernels

    words = int(dims[0] + 63) // 64
    rows = int(dims[1]) * int(dims[2])
    if words * rows > most:
        return None
    grid = np.zeros(words * rows, np.uint64)
    kernels.set_bits(a, origin, int(dims[1]), words, grid)
    return grid, words


def dilate(ijk: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Unique voxels of ``ijk`` (M, 3) shifted by every row of ``offsets`` (K, 3).

    Offsets that form a box (every combination of per-axis values, as the 27 taps) are applied one axis
    at a time: 3 + 3 + 3 shifts of a growing set instead of 27 of the first (the 1M-point bunny's finest
    level 1.05 -> 0.55 s); the same voxels in the same order.  On the CPU a large set is dilated on a bit
    grid instead (:func:`_dilate_bits`; 0.55 -> 0.06 s there), again the same voxels in the same order.
    """
    axes = [torch.unique(offsets[:, a]) for a in range(3)]
    box = len(axes[0]) * len(axes[1]) * len(axes[2])
    if box != offsets.shape[0] or unique_voxels(offsets).shape[0] != box:
        return unique_voxels((ijk[:, None, :] + offsets[None, :, :]).reshape(-1, 3))
    if ijk.device.type == "cpu" and ijk.shape[0] >= BIT_DILATION_MIN:
        done = _dilate_bits(ijk, [a.numpy() for a in axes])
        if done is not None:
            return done
    for a, values in enumerate(axes):
        shift = torch.zeros(values.shape[0], 3, dtype=ijk.dtype, device=ijk.device)
        shift[:, a] = values
        ijk = (ijk[:, None, :] + shift[None, :, :]).reshape(-1, 3)
        if values.shape[0] > 1 or a == 2:
            ijk = unique_voxels(ijk)
    return ijk


def _dilate_bits(ijk: torch.Tensor, axes: list[np.ndarray]) -> torch.Tensor | None:
    """:func:`dilate` by the box of per-axis shifts ``axes`` on a bit grid over the result's bounding box
    (:mod:`engine.solver.kernels`), or None where that grid would take more than ``BIT_DILATION_WORDS``
    words or a shift is 64 or more."""
    from . import kernels

    if any(int(np.abs(a).max()) >= 64 for a in axes):
        return None
    a = np.ascontiguousarray(ijk.numpy())
    least, most = column_bounds(a)
    origin = least + np.array([int(v.min()) for v in axes], np.int64)
    dims = most + np.array([int(v.max()) for v in axes], np.int64) - origin + 1
    made = _bit_grid(a, origin, dims, BIT_DILATION_WORDS)
    if made is None:
        return None
    grid, words = made
    other = np.empty_like(grid)
    kernels.shift_x(grid, words, axes[0].astype(np.int64), other)
    kernels.shift_rows(other, words, int(dims[1]), 1, axes[1].astype(np.int64), grid)
    kernels.shift_rows(grid, words, int(dims[2]), int(dims[1]), axes[2].astype(np.int64), other)
    out = np.empty((kernels.count_bits(other), 3), np.int64)
    kernels.grid_voxels(other, int(dims[1]), words, origin, out)
    return torch.from_numpy(out)
