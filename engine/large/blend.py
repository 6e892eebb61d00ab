"""Step 11: the chunks' fields blended into one field, meshed once core by core and welded.

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
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import MemoryLimitError
from ..frames import Frame
from ..progress import Run
from ..solver.hierarchy import Level, evaluate, evaluate_grid, lattice_points
from ..solver.knn import PointTree
from ..surface.colors import interpolate_colors
from ..surface.meshing import candidate_cells, marching_cubes
from ..surface.trimming import compact, trim_far
from .partition import ChunkedCloud, ChunkGrid
from .tasks import ChunkField


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

    def lattice(self, cells: torch.Tensor, size: float, n: int) -> torch.Tensor:
        """The blended field on an n^3 lattice over each cell (P, 3) of edge ``size`` <= 1, (P, n, n, n) [z, y, x].

        Each chunk's field comes from :func:`evaluate_grid` (one coefficient gather per cell); the weights,
        the chunks' order and the skipped zero weights are those of :meth:`__call__`, so a corner gets the
        same value here as there (tests/engine/test_chunks.py compares them bit for bit).
        """
        m = n**3
        num = torch.zeros((cells.shape[0], m), dtype=torch.float32, device=cells.device)
        den = torch.zeros_like(num)
        low = cells.to(torch.float64) * size  # the cells' lower corners, for every chunk's cover
        for cell, lo, levels in self.parts:
            # Weights only where they lie between 0 and 1: the 2M-point city's meshing in 8 chunks spent 6.4 of
            # 18.5 s computing every chunk's weight on every lattice point (most are 1 or 0 on a whole cell).
            kind = self.grid.cover(cell, low, size)
            rows = (kind > 0).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            shift = torch.round(lo / size).to(torch.int64)  # chunk origins are whole voxels, so whole cells
            value = evaluate_grid(levels, cells.index_select(0, rows) - shift, size, n).view(-1, m)
            whole = kind.index_select(0, rows) == 1
            num.index_add_(0, rows[whole], value[whole])  # weight 1: the value itself, as w * value gives
            den.index_add_(0, rows[whole], torch.ones((1, m), dtype=den.dtype, device=den.device).expand(
                int(whole.sum()), m))
            between = rows[~whole]
            if between.numel():
                w = self.grid.weight(cell, lattice_points(cells.index_select(0, between), size, n)).view(-1, m)
                flat = (between[:, None] * m + torch.arange(m, device=cells.device)).view(-1)
                use = w.view(-1) > 0
                num.view(-1).index_add_(0, flat[use], (w * value[~whole]).view(-1)[use])
                den.view(-1).index_add_(0, flat[use], w.view(-1)[use])
        out = torch.where(den > 0, num / den.clamp_min(1e-30), torch.full_like(num, 1e3))
        return out.view(-1, n, n, n)


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
               frame: Frame, mise_iter: int, trim: bool, trim_distance: float, cloud_points: np.ndarray,
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

    def lattice_checked(cells: torch.Tensor, size: float, n: int) -> torch.Tensor:
        run.check()
        return field.lattice(cells, size, n)

    # Trimmed surface lies within the finest band; untrimmed starts from the coarsest level.
    depth = 0 if trim else len(own.levels) - 1
    level_size, ijk, _ = own.levels[depth]
    start = torch.from_numpy(ijk.astype(np.int64) + (lo // int(level_size))).to(device)
    inside = ((start * int(level_size) >= torch.from_numpy(lo).to(device))
              & (start * int(level_size) < torch.from_numpy(hi).to(device))).all(dim=1)
    cells, size, values = candidate_cells(start[inside], level_size, depth + max(0, mise_iter), evaluate_checked,
                                          lattice_checked)
    verts_t, faces_t, edges_t = marching_cubes(cells, size, values)
    verts = frame.from_voxels(verts_t.double()).cpu().numpy()
    faces = faces_t.cpu().numpy()
    keys = edge_keys(edges_t, *key_frame)
    # Points up to the trim distance beyond the core decide its vertices' trim (and colours): the
    # neighbour meshing the other side of a shared face then decides the same.
    rows = cc.rows(cell, min(grid.size, max(grid.margin, math.ceil(frame.to_voxels(trim_distance)) + 2)))
    tree = PointTree(cloud_points[rows])
    if trim:
        verts, faces, kept = trim_far(verts, faces, tree.within, trim_distance)
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
