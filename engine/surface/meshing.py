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
code.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..solver.voxels import unique_voxels_inverse
from .mc_table import CORNERS, EDGE_AXIS, EDGES, TRIANGLES

KEEP_SLOPE = 1.15
KEEP_CURVATURE = 0.4
EVAL_BATCH = 1 << 17  # cells whose corners are evaluated at once

Field = Callable[[torch.Tensor], torch.Tensor]


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


def candidate_cells(start: torch.Tensor, start_size: float, rounds: int, field: Field
                    ) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Refine ``start`` cells (M, 3) of size ``start_size`` ``rounds`` times.

    Returns the final cells (K, 3), their size and their corner values (K, 8),
    which :func:`marching_cubes` uses without evaluating the field again.  Each
    round works through the cells in batches, so memory stays bounded (corners
    shared by two batches are evaluated twice, which is cheap).
    """
    children = torch.from_numpy(CORNERS).to(start.device)
    cells, size = start, start_size
    values = torch.zeros(0, 8, device=start.device)
    for r in range(rounds + 1):
        final = r == rounds
        kept_cells, kept_values = [], []
        for i in range(0, cells.shape[0], EVAL_BATCH):
            batch = cells[i:i + EVAL_BATCH]
            v = _corner_field(batch, size, field)
            keep = _keep(v, size, final)
            kept_cells.append(batch[keep])
            kept_values.append(v[keep])
        cells = torch.cat(kept_cells) if kept_cells else cells[:0]
        if final:
            values = torch.cat(kept_values) if kept_values else values
            break
        cells = (2 * cells[:, None, :] + children).reshape(-1, 3)
        size = size / 2
    return cells, size, values


def marching_cubes(cells: torch.Tensor, size: float, v: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triangles of the zero level in ``cells`` (M, 3) of edge ``size`` with corner values v (M, 8).

    Returns vertices (V, 3), faces (F, 3) int64 and each vertex's cell edge (V, 4) int64: the
    edge's lower corner (in the cells' integer coordinates) and its axis.  Vertices are shared
    through those edges, so meshes of neighbouring cell sets can be welded on them
    (:mod:`engine.large.blend`).
    """
    device = cells.device
    if cells.shape[0] == 0:
        return (torch.zeros(0, 3, device=device), torch.zeros(0, 3, dtype=torch.int64, device=device),
                torch.zeros(0, 4, dtype=torch.int64, device=device))
    corners, ids = unique_voxels_inverse((cells[:, None, :] + torch.from_numpy(CORNERS).to(device)).reshape(-1, 3))
    ids = ids.reshape(-1, 8)
    values = torch.empty(corners.shape[0], dtype=v.dtype, device=device)
    values[ids.reshape(-1)] = v.reshape(-1)  # a shared corner has the same value in every cell
    weights = 2 ** torch.arange(8, device=device)
    case = ((v < 0).to(torch.int64) * weights).sum(dim=1)
    tri = torch.from_numpy(TRIANGLES).to(device)[case]  # (M, T, 3) local edge ids
    valid = tri[:, :, 0] >= 0
    cell_of = torch.arange(cells.shape[0], device=device)[:, None].expand_as(valid)[valid]
    local_edges = tri[valid]  # (F, 3)
    edges = torch.from_numpy(EDGES).to(device)
    start_corner = ids[cell_of[:, None], edges[local_edges, 0]]  # (F, 3) global corner id
    end_corner = ids[cell_of[:, None], edges[local_edges, 1]]
    axis = torch.from_numpy(EDGE_AXIS).to(device)[local_edges]
    key = start_corner * 3 + axis
    ukey, faces = torch.unique(key.reshape(-1), return_inverse=True)
    first = torch.full((ukey.shape[0],), key.numel(), dtype=torch.int64, device=device)
    first.scatter_reduce_(0, faces, torch.arange(key.numel(), device=device), reduce="amin")
    a = start_corner.reshape(-1)[first]
    b = end_corner.reshape(-1)[first]
    fa, fb = values[a], values[b]
    t = (fa / (fa - fb)).clamp(0.0, 1.0)[:, None]
    pa, pb = corners[a].to(torch.float32) * size, corners[b].to(torch.float32) * size
    edge = torch.cat((corners[a], axis.reshape(-1)[first, None]), dim=1)
    return pa + t * (pb - pa), faces.reshape(-1, 3), edge
