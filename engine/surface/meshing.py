"""Step 7: extract the zero level of the field on a sparse set of cells.

Cells start as voxels of one level and are split in eight, round after round,
keeping only cells that can hold the zero level: a cell whose corner values
change sign, or whose smallest |f| is small. Above the finest voxel, "small" is
``KEEP_SLOPE * s * sqrt(3)/2``: the field is fitted to unit gradients, so it
behaves like a distance, and a cell whose nearest corner is farther than
sqrt(3)/2 of its size from the zero level cannot hold it (15% margin for
gradients a little above 1). At and below the finest voxel the field is a sum
of B-splines at least a voxel wide, so it differs from the trilinear
interpolant of a cell's corners by at most 3 K s^2 / 8 (K its largest second
derivative, about the curvature, at most ~1 per voxel): ``KEEP_CURVATURE *
s^2`` keeps every cell where that deviation could reach zero. Splitting
continues ``mise_iter`` rounds below the finest voxel (MISE-style refinement).
All final cells have one size, so marching cubes over them, with vertices
shared through global edge keys, gives an indexed mesh that is closed and
manifold wherever the cells surround the surface. (Dual
marching cubes over leaf cells of mixed sizes would give fewer triangles in
smooth regions; uniform final cells keep the mesh crack-free with much simpler
code, and :mod:`engine.surface.refine` refines the mesh of the finest voxel
where the surface bends instead of a whole round below it.)

Speed (issue 12): cells no larger than the finest voxel lie inside one cell of
every level, so their corners, and the 3^3 lattice of a kept cell's eight
children, come from one coefficient gather per cell and level
(:func:`engine.solver.hierarchy.evaluate_grid`) instead of a sort of the shared
corners and a lookup per corner; and marching cubes keys vertices by their edge
directly, without a table of the cells' corners.  Same cells, values and mesh
(tests/engine/test_meshing.py); the mesh stage of the 100k clean bunny (mise 1)
took 1.1 s instead of 2.0-2.2 s.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..solver.threads import compiled_on
from ..solver.voxels import unique_voxels_inverse
from .mc_table import CORNERS, EDGE_AXIS, EDGES, TRIANGLES

KEEP_SLOPE = 1.15
KEEP_CURVATURE = 0.4
EVAL_BATCH = 1 << 17  # cells whose corners are evaluated at once

Field = Callable[[torch.Tensor], torch.Tensor]
# (cells (P, 3), size <= 1, n) -> the field on an n^3 lattice over each cell, (P, n, n, n) indexed [z, y, x]
GridField = Callable[[torch.Tensor, float, int], torch.Tensor]


def _lattice_index(n: int, offsets: np.ndarray) -> np.ndarray:
    """Flat [z, y, x] index in an n^3 lattice of integer offsets (..., 3) given as (x, y, z)."""
    return offsets[..., 2] * n * n + offsets[..., 1] * n + offsets[..., 0]


# corner j of a cell in the 2^3 lattice of its corners; corner j of child k in the 3^3 lattice of its parent
_OWN_CORNERS = _lattice_index(2, CORNERS)
_CHILD_CORNERS = _lattice_index(3, CORNERS[:, None, :] + CORNERS[None, :, :])  # (8 children, 8 corners)


def _corner_field(cells: torch.Tensor, size: float, field: Field) -> torch.Tensor:
    """Field values (M, 8) at the corners of cells (M, 3) of edge ``size``, each shared corner evaluated once."""
    corners = cells[:, None, :] + torch.from_numpy(CORNERS).to(cells.device)
    unique, ids = unique_voxels_inverse(corners.reshape(-1, 3))
    return field(unique.to(torch.float32) * size)[ids].reshape(-1, 8)


def _keep(v: torch.Tensor, size: float, final: bool) -> torch.Tensor:
    """Mask of the cells with corner values v (M, 8) that can hold the zero level (``final``: that do)."""
    crossing = (v.min(dim=1).values < 0) & (v.max(dim=1).values >= 0)
    if final:
        return crossing
    bound = KEEP_SLOPE * size * 0.8660254 if size > 1.0 else KEEP_CURVATURE * size * size
    return crossing | (v.abs().min(dim=1).values <= bound)


def candidate_cells(start: torch.Tensor, start_size: float, rounds: int, field: Field,
                    grid: GridField | None = None) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Refine ``start`` cells (M, 3) of size ``start_size`` ``rounds`` times.

    Returns the final cells (K, 3), their size and their corner values (K, 8),
    which :func:`marching_cubes` uses without evaluating the field again.  Each
    round works through the cells in batches, so memory stays bounded (corners
    shared by two batches are evaluated twice, which is cheap).  Where ``grid``
    is given, cells of at most one finest voxel take their corners from it, and a
    kept cell's eight children take theirs from its 3^3 lattice: one coefficient
    lookup per cell instead of one per corner, and no sort to share corners
    (:func:`engine.solver.hierarchy.evaluate_grid`; the same values).
    """
    children = torch.from_numpy(CORNERS).to(start.device)
    own = torch.from_numpy(_OWN_CORNERS).to(start.device)
    child_corners = torch.from_numpy(_CHILD_CORNERS.reshape(-1)).to(start.device)
    cells, size = start, start_size
    values = torch.zeros(0, 8, device=start.device)
    inherited: torch.Tensor | None = None  # the cells' corner values, from their parents' lattices
    for r in range(rounds + 1):
        final = r == rounds
        lattice = grid is not None and size <= 1.0 and not final  # children's corners come from this round
        kept_cells, kept_values, child_values = [], [], []
        for i in range(0, cells.shape[0], EVAL_BATCH):
            batch = cells[i:i + EVAL_BATCH]
            if inherited is not None:
                v = inherited[i:i + EVAL_BATCH]
            elif grid is not None and size <= 1.0:
                v = grid(batch, size, 2).reshape(-1, 8).index_select(1, own)
            else:
                v = _corner_field(batch, size, field)
            keep = _keep(v, size, final)
            kept_cells.append(batch[keep])
            kept_values.append(v[keep])
            if lattice and grid is not None:
                g = grid(batch[keep], size, 3).reshape(-1, 27)
                child_values.append(g.index_select(1, child_corners).reshape(-1, 8))
        cells = torch.cat(kept_cells) if kept_cells else cells[:0]
        if final:
            values = torch.cat(kept_values) if kept_values else values
            break
        inherited = (torch.cat(child_values) if child_values else values) if lattice else None
        cells = (2 * cells[:, None, :] + children).reshape(-1, 3)
        size = size / 2
    return cells, size, values


def marching_cubes(cells: torch.Tensor, size: float, v: torch.Tensor, compiled: bool | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triangles of the zero level in ``cells`` (M, 3) of edge ``size`` with corner values v (M, 8).

    Returns vertices (V, 3), faces (F, 3) int64 and each vertex's cell edge (V, 4) int64: the
    edge's lower corner (in the cells' integer coordinates) and its axis.  Vertices are shared
    through those edges, so meshes of neighbouring cell sets can be welded on them
    (:mod:`engine.large.blend`).  ``compiled``: in :mod:`engine.surface.kernels` (None: on the
    CPU; the same mesh) rather than in torch (the reference, and the CUDA path).
    """
    device = cells.device
    if cells.shape[0] == 0:
        return (torch.zeros(0, 3, device=device), torch.zeros(0, 3, dtype=torch.int64, device=device),
                torch.zeros(0, 4, dtype=torch.int64, device=device))
    if compiled_on(device, compiled):
        from . import kernels

        mesh = kernels.marching_cubes(np.ascontiguousarray(cells.to(torch.int64).numpy()), size,
                                         np.ascontiguousarray(v.to(torch.float32).numpy()))
        return torch.from_numpy(mesh[0]), torch.from_numpy(mesh[1]), torch.from_numpy(mesh[2])
    inside = v < 0
    case = (inside.to(torch.int64) * 2 ** torch.arange(8, device=device)).sum(dim=1)
    tri = torch.from_numpy(TRIANGLES).to(device)[case]  # (M, T, 3) local edge ids
    valid = tri[:, :, 0] >= 0
    cell_of = torch.arange(cells.shape[0], device=device)[:, None].expand_as(valid)[valid].repeat_interleave(3)
    local_edges = tri[valid].reshape(-1)  # (3F,)
    edges = torch.from_numpy(EDGES).to(device)
    corners = torch.from_numpy(CORNERS).to(device)
    # One vertex per crossed edge, keyed by the edge (its lower corner in the cells' integer coordinates and its
    # axis, packed into one int64): the keys are the cells' crossed edges (every one carries a triangle corner),
    # about 2/3 as many as the triangles' corners, so the sort that makes them unique is that much shorter.
    # Vertex order, positions and faces are those of keying every triangle corner (the first cell by index with
    # the edge gives its end values either way).
    crossed_cell, crossed_edge = (inside[:, edges[:, 0]] != inside[:, edges[:, 1]]).nonzero(as_tuple=True)
    lo = cells.min(dim=0).values
    dims = cells.max(dim=0).values - lo + 2
    start = (cells - lo).index_select(0, crossed_cell) + corners.index_select(0, edges[crossed_edge, 0])
    axis = torch.from_numpy(EDGE_AXIS).to(device)[crossed_edge]
    key = ((start[:, 2] * dims[1] + start[:, 1]) * dims[0] + start[:, 0]) * 3 + axis
    ukey, vertex = torch.unique(key, return_inverse=True)
    first = torch.full((ukey.shape[0],), key.numel(), dtype=torch.int64, device=device)
    first.scatter_reduce_(0, vertex, torch.arange(key.numel(), device=device), reduce="amin")
    table = torch.full((cells.shape[0], 12), -1, dtype=torch.int64, device=device)
    table[crossed_cell, crossed_edge] = vertex
    faces = table[cell_of, local_edges]
    cell, edge_id = crossed_cell[first], crossed_edge[first]
    fa, fb = v[cell, edges[edge_id, 0]], v[cell, edges[edge_id, 1]]
    t = (fa / (fa - fb)).clamp(0.0, 1.0)[:, None]
    lower = start[first] + lo
    step = torch.nn.functional.one_hot(axis[first], 3)
    pa = lower.to(torch.float32) * size
    return pa + t * (step * size), faces.reshape(-1, 3), torch.cat((lower, axis[first, None]), dim=1)
