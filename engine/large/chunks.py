"""Step 11: large scenes as overlapping chunks, solved independently, blended, meshed once.

Space (finest-voxel units, the global lattice every chunk shares) is cut into
cubic cores of ``size`` voxels, a multiple of the coarsest voxel, so every
level's voxels align with the cores.  Every core with points in it or within
``margin`` voxels of its faces is a chunk, solved on the points of its core
grown by ``margin`` voxels on every side, with bounded memory and no
knowledge of its neighbours (:func:`solve_chunk`, a picklable task for any
:mod:`engine.large.executors` executor).

The chunks' fields are blended into one field with a partition of unity: along
each axis a chunk's weight falls smoothly from 1 to 0 across a band of
``margin / 2`` voxels centred on its core's faces, so two neighbours' weights
sum to 1 everywhere and each chunk is used only where it saw data at least
``3 margin / 4`` voxels further out.  The blended field is meshed once, core by
core (:func:`mesh_block`, then :func:`weld`): a core's cells are exactly the whole-scene cells
that lie in it, a vertex on a core's face is computed from the same field
values by both neighbours, and the cores' meshes are welded on their shared
cell edges, so there are no seams, no doubled sheets and no cracks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..device import select_device
from ..errors import MemoryLimitError
from ..progress import CancelFn, ProgressFn, Run
from ..solver.fitting import solve_levels
from ..solver.hierarchy import Level, build_levels, evaluate
from ..solver.knn import PointTree
from ..solver.system import Weights
from ..solver.voxels import VoxelIndex
from ..surface.colors import interpolate_colors
from ..surface.meshing import candidate_cells, marching_cubes
from ..surface.trimming import compact, trim_far

# The blend band reaches margin / 4 voxels either side of a core face, and data 3 margin / 4 beyond
# it: 4 coarsest voxels of margin cover the coarsest basis support (3 voxels) past the band's end.
MIN_MARGIN_COARSE = 4
MIN_SIZE_COARSE = 16  # smallest core, in coarsest voxels (64 finest voxels at depth 3)


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


@dataclass
class ChunkTask:
    """One chunk to solve: its points relative to its core's lower corner (keeps float32 exact)."""

    index: int
    count: int
    cell: tuple[int, int, int]
    lo: tuple[int, int, int]  # core's lower corner, global voxel units
    points: np.ndarray  # (n, 3) float32, voxel units relative to lo
    normals: np.ndarray  # (n, 3) float32 unit
    depth: int
    weights: Weights
    solver_tol: float
    solver_max_iter: int
    device: str
    cancel_token: Any = None  # an executors token with ``is_set()``, for executors in other processes

    @property
    def label(self) -> str:
        return f"chunk {self.index + 1}/{self.count}: "


@dataclass
class ChunkField:
    """A solved chunk, compact enough to keep every chunk of a scene: per level voxels and coefficients."""

    index: int
    cell: tuple[int, int, int]
    lo: tuple[int, int, int]
    levels: list[tuple[float, np.ndarray, np.ndarray]]  # (scale, ijk (M, 3) int32 relative to lo, coeffs (M,) f4)
    points: int
    iterations: list[int]
    residuals: list[float]
    seconds: float

    @property
    def unknowns(self) -> int:
        return sum(ijk.shape[0] for _, ijk, _ in self.levels)

    def materialise(self, device: torch.device, box_lo: np.ndarray, box_hi: np.ndarray) -> list[Level]:
        """Evaluable levels holding only the voxels whose support reaches the box (global voxel units)."""
        out = []
        lo = np.asarray(self.lo, dtype=np.int64)
        for depth, (scale, ijk, coeffs) in enumerate(self.levels):
            rel_lo, rel_hi = (box_lo - lo) / scale, (box_hi - lo) / scale
            # a voxel v touches points whose cell at this scale is v-1, v or v+1: [v-1, v+2) voxels
            keep = ((ijk - 1 <= rel_hi) & (ijk + 2 >= rel_lo)).all(axis=1)
            if not keep.any():
                continue
            level = Level(depth=depth, scale=scale,
                          index=VoxelIndex(torch.from_numpy(ijk[keep].astype(np.int64)).to(device)))
            level.set_coeffs(torch.from_numpy(coeffs[keep]).to(device))
            out.append(level)
        return out


def solve_chunk(task: ChunkTask, progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> ChunkField:
    """Build and solve one chunk's hierarchy; runs in any process (imports nothing of the caller's)."""
    start = time.perf_counter()
    token = task.cancel_token
    if cancel is None and token is not None:
        cancel = token.is_set
    run = Run(progress, cancel)
    dev = select_device(task.device)
    x = torch.from_numpy(task.points).to(dev)
    nrm = torch.from_numpy(task.normals).to(dev)
    levels = build_levels(x, task.depth)
    iterations, residuals = solve_levels(levels, x, nrm, task.weights, task.solver_tol, task.solver_max_iter, run,
                                         task.label)
    packed = []
    for lv in levels:
        assert lv.coeffs is not None
        packed.append((lv.scale, lv.ijk.to(torch.int32).cpu().numpy(), lv.coeffs.float().cpu().numpy()))
    return ChunkField(task.index, task.cell, task.lo, packed, int(x.shape[0]), iterations, residuals,
                      time.perf_counter() - start)


_OFFSETS = np.array(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij")).reshape(3, -1).T


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
        for off in _OFFSETS:
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
        for off in _OFFSETS:
            r = self.ranges.get(int(self._key(np.asarray(cell) + off)))
            if r is not None:
                parts.append(self.order[r[0]:r[1]])
        rows = np.concatenate(parts)
        p = self.x[rows]
        inside = ((p >= lo - grow) & (p < hi + grow)).all(axis=1)
        return np.sort(rows[inside])


def tasks(cc: ChunkedCloud, normals: np.ndarray, *, depth: int, weights: Weights, solver_tol: float,
          solver_max_iter: int, device: str, cancel_token: Any = None) -> Iterator[ChunkTask]:
    """One task per core with points in or near it, built lazily (each holds a copy of its points)."""
    count = cc.cells.shape[0]
    for i, cell in enumerate(cc.cells):
        rows = cc.rows(cell, cc.grid.margin)
        lo, _ = cc.grid.bounds(cell)
        yield ChunkTask(i, count, tuple(int(v) for v in cell), tuple(int(v) for v in lo),  # type: ignore[arg-type]
                        (cc.x[rows] - lo).astype(np.float32), normals[rows], depth, weights, solver_tol,
                        solver_max_iter, device, cancel_token)


class BlendedField:
    """The blended field around one core: its own chunk and the neighbours whose weight reaches it."""

    def __init__(self, grid: ChunkGrid, fields: dict[tuple[int, int, int], ChunkField], cell: np.ndarray,
                 device: torch.device) -> None:
        self.grid = grid
        lo, hi = grid.bounds(cell)
        self.parts: list[tuple[np.ndarray, torch.Tensor, list[Level]]] = []
        for key in sorted(fields):  # one fixed order, so a shared corner gets the same sum in every core
            other = np.asarray(key, dtype=np.int64)
            if np.abs(other - cell).max() > 1:
                continue
            olo, ohi = grid.bounds(other)
            box_lo, box_hi = np.maximum(lo, olo - grid.ramp), np.minimum(hi, ohi + grid.ramp)
            if (box_lo >= box_hi).any():
                continue
            levels = fields[key].materialise(device, box_lo, box_hi)
            if levels:
                self.parts.append((other, torch.from_numpy(olo).to(device, torch.float32), levels))

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        num = torch.zeros(q.shape[0], dtype=q.dtype, device=q.device)
        den = torch.zeros_like(num)
        for cell, lo, levels in self.parts:
            w = self.grid.weight(cell, q)
            use = w > 0
            if not bool(use.any()):
                continue
            value, _ = evaluate(levels, q[use] - lo)
            num[use] += w[use] * value
            den[use] += w[use]
        # Every point of a core has its own chunk's weight >= 1/8; elsewhere (never meshed) say "outside".
        return torch.where(den > 0, num / den.clamp_min(1e-30), torch.full_like(num, 1e3))


@dataclass
class BlockMesh:
    """One core's share of the mesh: canonical vertices, local faces, global edge keys, colours."""

    vertices: np.ndarray
    faces: np.ndarray
    keys: np.ndarray
    colors: np.ndarray | None


def edge_keys(edges: torch.Tensor, kmin: np.ndarray, dims: np.ndarray) -> np.ndarray:
    """One int64 per cell edge (lower corner, axis) of the global lattice at the final cell size."""
    e = edges.cpu().numpy()
    rel = e[:, :3] - kmin
    return ((rel[:, 2] * dims[1] + rel[:, 1]) * dims[0] + rel[:, 0]) * 3 + e[:, 3]


def mesh_block(cc: ChunkedCloud, fields: dict[tuple[int, int, int], ChunkField], cell: np.ndarray, *,
               voxel_size: float, mise_iter: int, trim: bool, trim_distance: float, cloud_points: np.ndarray,
               colors: np.ndarray | None, device: torch.device, run: Run, key_frame: tuple[np.ndarray, np.ndarray]
               ) -> BlockMesh:
    """Mesh the blended field inside one core, trim it against the points near it and colour it."""
    grid = cc.grid
    lo, hi = grid.bounds(cell)
    own = fields[tuple(int(v) for v in cell)]  # type: ignore[index]
    field = BlendedField(grid, fields, cell, device)

    def evaluate_checked(q: torch.Tensor) -> torch.Tensor:
        run.check()
        return field(q)

    # Trimmed surface lies within the finest band; untrimmed starts from the coarsest level.
    depth = 0 if trim else len(own.levels) - 1
    scale, ijk, _ = own.levels[depth]
    start = torch.from_numpy(ijk.astype(np.int64) + (lo // int(scale))).to(device)
    inside = ((start * int(scale) >= torch.from_numpy(lo).to(device))
              & (start * int(scale) < torch.from_numpy(hi).to(device))).all(dim=1)
    cells, size, values = candidate_cells(start[inside], scale, depth + max(0, mise_iter), evaluate_checked)
    verts_t, faces_t, edges_t = marching_cubes(cells, size, values)
    verts = (verts_t.double() * voxel_size).cpu().numpy()  # canonical
    faces = faces_t.cpu().numpy()
    keys = edge_keys(edges_t, *key_frame)
    # Points up to the trim distance beyond the core decide its vertices' trim (and colours): the
    # neighbour meshing the other side of a shared face then decides the same.
    rows = cc.rows(cell, min(grid.size, max(grid.margin, math.ceil(trim_distance / voxel_size) + 2)))
    tree = PointTree(cloud_points[rows])
    if trim:
        verts, faces, kept = trim_far(verts, faces, tree, trim_distance)
    else:
        verts, faces, kept = compact(verts, faces)
    keys = keys[kept]
    vcolors = None
    if colors is not None:
        vcolors = (interpolate_colors(verts, tree, colors[rows]) if verts.shape[0]
                   else np.zeros((0, 4), dtype=np.float32))
    return BlockMesh(verts, faces, keys, vcolors)


def key_frame(cc: ChunkedCloud, mise_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Origin and dimensions of the final-cell lattice (``mise_iter`` halvings of the voxel) over every core."""
    per = 2**mise_iter  # final cells per finest voxel
    lo = cc.cells.min(axis=0) * cc.grid.size * per - 1
    hi = (cc.cells.max(axis=0) + 1) * cc.grid.size * per + 1
    dims = hi - lo + 1
    if float(np.prod(dims.astype(np.float64))) * 3 >= 2.0**62:
        raise MemoryLimitError("The scene spans too many final cells to number their edges.",
                               "Use a larger voxel size, a lower detail level or fewer refinement rounds.")
    return lo, dims


def weld(blocks: list[BlockMesh]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One indexed mesh from the cores' meshes: vertices with the same edge key become one."""
    if not blocks:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), None
    keys = np.concatenate([b.keys for b in blocks])
    offsets = np.cumsum([0] + [b.vertices.shape[0] for b in blocks])
    faces = np.concatenate([b.faces + off for b, off in zip(blocks, offsets[:-1], strict=True)])
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    verts = np.concatenate([b.vertices for b in blocks])[first]
    colors = None
    if all(b.colors is not None for b in blocks):
        colors = np.concatenate([b.colors for b in blocks if b.colors is not None])[first]
    return verts, inverse.reshape(-1)[faces], colors
