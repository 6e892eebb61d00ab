"""Step 11: large scenes as overlapping chunks: the grid of cores and the cloud sorted by core.

Space (finest-voxel units, the global lattice every chunk shares) is cut into
cubic cores of ``size`` voxels, a multiple of the coarsest voxel, so every
level's voxels align with the cores.  Every core with points in it or within
``margin`` voxels of its faces is a chunk, solved on the points of its core
grown by ``margin`` voxels on every side (:mod:`engine.large.tasks`), then
blended and meshed once (:mod:`engine.large.blend`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..solver.basis import TAP_OFFSETS

# The blend band reaches margin / 4 voxels either side of a core face, and data 3 margin / 4 beyond
# it: 4 coarsest voxels of margin cover the coarsest basis support (3 voxels) past the band's end.
MIN_MARGIN_COARSE = 4
MIN_SIZE_COARSE = 16  # smallest core, in coarsest voxels (64 finest voxels at depth 3)
COVER_SLACK = 1e-3  # finest voxels: :meth:`ChunkGrid.cover` keeps this clear of the blend band's ends


@dataclass(frozen=True)
class ChunkGrid:
    """Cubic cores of ``size`` voxels from the origin of the global lattice, grown by ``margin`` for data."""

    size: int
    margin: int

    @property
    def ramp(self) -> float:
        """Half-width of the blend band around each core face: a quarter of the margin.

        Neighbours' fields agree closely in the band, so it can be narrow (where two
        or more chunks must be evaluated, meshing costs more); what matters is the
        data beyond its end, three quarters of the margin.
        """
        return self.margin / 4.0

    def bounds(self, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo = np.asarray(cell, dtype=np.int64) * self.size
        return lo, lo + self.size

    def cover(self, cell: np.ndarray, low: torch.Tensor, size: float) -> torch.Tensor:
        """How chunk ``cell``'s weight covers each cell of edge ``size`` whose lower corners are ``low`` (P, 3)
        float64, global voxel units: 0 where it is 0 on the whole cell, 1 where it is 1 on the whole cell, 2
        between (only there need its lattice's weights be computed).  Decided :data:`COVER_SLACK` clear of the
        band's ends, so that the lattice points' rounding cannot put one on the other side."""
        lo, hi = self.bounds(cell)
        high = low + size
        lo_t = torch.from_numpy(lo).to(low.device, torch.float64)
        hi_t = torch.from_numpy(hi).to(low.device, torch.float64)
        reach = self.ramp + COVER_SLACK
        zero = ((high <= lo_t - reach) | (low >= hi_t + reach)).any(dim=1)
        one = ((low >= lo_t + reach) & (high <= hi_t - reach)).all(dim=1)
        kind = torch.full((low.shape[0],), 2, dtype=torch.int8, device=low.device)
        kind[one] = 1
        kind[zero] = 0
        return kind

    def weight(self, cell: np.ndarray, q: torch.Tensor) -> torch.Tensor:
        """Blend weight (M,) of chunk ``cell`` at q (M, 3) global voxel units: 1 inside, 0 beyond ramp."""
        lo, hi = self.bounds(cell)
        lo_t = torch.from_numpy(lo).to(q.device, q.dtype)
        hi_t = torch.from_numpy(hi).to(q.device, q.dtype)
        inside = torch.minimum(q - lo_t, hi_t - q)  # (M, 3) distance into the core, negative outside
        t = ((inside + self.ramp) / (2 * self.ramp)).clamp(0.0, 1.0)
        return (t * t * (3 - 2 * t)).prod(dim=1)


def make_grid(extent_voxels: float, depth: int, chunk_voxels: float | None, overlap_ratio: float) -> ChunkGrid:
    """The grid for a chunk edge of ``chunk_voxels`` finest voxels (None: one chunk spans the scene).

    ``overlap_ratio`` comes checked by :mod:`engine.options` (0 to 0.5).
    """
    coarse = 2 ** (max(1, depth) - 1)
    size = extent_voxels + 1 if chunk_voxels is None else chunk_voxels
    size_int = max(MIN_SIZE_COARSE, math.ceil(size / coarse)) * coarse
    margin = max(MIN_MARGIN_COARSE * coarse, math.ceil(overlap_ratio * size_int / 2) * 2)
    return ChunkGrid(size_int, min(margin, size_int // 2))


class ChunkedCloud:
    """A cloud (global voxel units) sorted by core, so each chunk's points are a few slices away."""

    def __init__(self, x: np.ndarray, grid: ChunkGrid) -> None:
        self.grid = grid
        cell = np.floor(x / grid.size).astype(np.int64)
        self.cmin = cell.min(axis=0) - 1
        dims = cell.max(axis=0) - self.cmin + 2
        self.dims = dims
        key = self._key(cell)
        self.order = np.argsort(key, kind="stable")
        skey = key[self.order]
        ukeys, starts = np.unique(skey, return_index=True)
        ends = [*starts[1:].tolist(), skey.size]
        self.ranges = {k: (a, b) for k, a, b in zip(ukeys.tolist(), starts.tolist(), ends, strict=True)}
        self.x = x
        # Cores with points, and empty cores with points within the margin of their faces: surface
        # near a core face may cross it, and only a core's own chunk meshes the cells inside it.
        near = [ukeys]
        frac = x - cell * grid.size
        low, high = frac < grid.margin, frac >= grid.size - grid.margin
        for off in TAP_OFFSETS:  # the 27 cores around (order: results are sorted)
            if not off.any():
                continue
            mask = np.ones(x.shape[0], dtype=bool)
            for axis in range(3):
                if off[axis]:
                    mask &= low[:, axis] if off[axis] < 0 else high[:, axis]
            if mask.any():
                near.append(np.unique(key[mask] + int(self._key(self.cmin + off) - self._key(self.cmin))))
        self.cells = self._unkey(np.unique(np.concatenate(near)))  # in key order

    def _key(self, cell: np.ndarray) -> np.ndarray:
        rel = cell - self.cmin
        return (rel[..., 2] * self.dims[1] + rel[..., 1]) * self.dims[0] + rel[..., 0]

    def _unkey(self, key: np.ndarray) -> np.ndarray:
        x = key % self.dims[0]
        y = (key // self.dims[0]) % self.dims[1]
        z = key // (self.dims[0] * self.dims[1])
        return np.stack((x, y, z), axis=1) + self.cmin

    def core_points(self, cell: np.ndarray) -> int:
        r = self.ranges.get(int(self._key(np.asarray(cell))), (0, 0))
        return r[1] - r[0]

    def rows(self, cell: np.ndarray, grow: float) -> np.ndarray:
        """Rows of the points in the core of ``cell`` grown by ``grow`` voxels (grow <= size)."""
        lo, hi = self.grid.bounds(cell)
        parts = [np.zeros(0, dtype=np.int64)]
        for off in TAP_OFFSETS:  # the 27 cores around (order: results are sorted)
            r = self.ranges.get(int(self._key(np.asarray(cell) + off)))
            if r is not None:
                parts.append(self.order[r[0]:r[1]])
        rows = np.concatenate(parts)
        inside = np.ones(rows.shape[0], dtype=bool)
        for axis in range(3):  # an axis at a time: no (N, 3) temporaries, no reduction along rows
            column = self.x[rows, axis]
            inside &= (column >= lo[axis] - grow) & (column < hi[axis] + grow)
        return np.sort(rows[inside])
