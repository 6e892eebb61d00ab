"""Watertight mode: one closed, manifold surface, with the holes the scan left (unseen regions) closed.

The field is a sum of compactly supported kernels, so it is zero wherever no
voxel reaches, and its zero level ends at the edge of the sparse structure.
Three steps make it close, each bounded so that it cannot balloon:

1. :func:`close_level`: the coarsest level is dilated ``CLOSE_RINGS`` more
   times, which bridges unseen gaps up to a few coarse voxels wide (the
   smoothness term extrapolates the surface across them), and every cavity it
   encloses is filled, so the inside of the object carries a (negative) field.
2. :func:`outside_beyond`: the field counts as outside (positive) on and beyond
   the boundary of that domain.  Every cell whose corners change sign then lies
   inside the domain, which marching cubes covers, so the zero level closes; where
   the scan's gap is wider than the dilation, it closes at the domain's edge,
   at most ``CLOSE_RINGS + 2`` coarse voxels from the data.
3. :func:`closed_piece`: the piece that most input points lie on is kept
   (stray points make small closed blobs of their own, and where the field
   dips below zero again far out, near the domain's edge, it makes a large
   closed shell around the object that no point supports), and it is checked:
   every edge in exactly two faces.  Marching cubes over uniform cells with shared edge vertices gives
   that by construction; should a boundary loop remain, it is closed by a fan.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage

from ..errors import MemoryLimitError
from ..mesh import edge_use
from ..solver.hierarchy import Level, rings
from ..solver.voxels import VoxelIndex
from .fragments import face_pieces, piece_support
from .trimming import compact

# Extra rings of coarsest voxels (each 2**(depth-1) finest voxels).  0 to 3 rings measured (bench/README.md,
# "Watertight mode"): 2 take most of the accuracy gain on a small unseen cap at +30% time, and keep the filled
# inside sealed across wider gaps; past that the field's own extrapolation decides where a wide hole closes.
CLOSE_RINGS = 2
OUTSIDE = 1.0  # field value (finest voxels) given to points on or beyond the domain's boundary
MAX_FILL_CELLS = 1 << 27  # dense grid of the cavity fill, at most (128 MiB of bools)

Field = Callable[[torch.Tensor], torch.Tensor]


def close_level(level: Level, count: int = CLOSE_RINGS) -> Level:
    """The coarsest ``level`` (unsolved) dilated ``count`` times with its enclosed cavities filled."""
    vox = rings(level.ijk, count)
    lo = vox.min(dim=0).values - 1
    dims = (vox.max(dim=0).values - lo + 2).cpu().numpy()
    if int(np.prod(dims)) <= MAX_FILL_CELLS:  # beyond that only the dilation: a cavity stays hollow
        grid = np.zeros(tuple(int(d) for d in dims), dtype=bool)
        grid[tuple((vox - lo).cpu().numpy().T)] = True
        filled = ndimage.binary_fill_holes(grid)
        vox = torch.from_numpy(np.argwhere(filled)).to(vox.device) + lo
    return Level(depth=level.depth, size=level.size, index=VoxelIndex(vox))


def outside_beyond(domain: Level, field: Field) -> Field:
    """``field``, but ``OUTSIDE`` at points not strictly inside the cells of ``domain`` (finest-voxel units)."""
    eps = 1e-3
    signs = torch.tensor([[sx, sy, sz] for sx in (-eps, eps) for sy in (-eps, eps) for sz in (-eps, eps)])

    def wrapped(p: torch.Tensor) -> torch.Tensor:
        v = field(p)
        # a point is inside when every cell whose closure holds it (the 8 cells at +-eps) is in the domain
        q = p[:, None, :] / domain.size + signs.to(p.device, p.dtype)
        cells = torch.floor(q).to(torch.int64).reshape(-1, 3)
        inside = (domain.index.lookup(cells) >= 0).reshape(-1, 8).all(dim=1)
        return torch.where(inside, v, torch.full_like(v, OUTSIDE))

    return wrapped


def fill_loops(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Close every boundary loop by a fan around its centroid; vertices, faces and the loops closed.

    The fan winds opposite to the loop's directed boundary edges, so the winding stays consistent.
    """
    d = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    undirected, counts = edge_use(faces)
    once = {tuple(e) for e in undirected[counts == 1]}
    nxt: dict[int, int] = {}
    for a, b in d:  # the boundary's directed edges (as the faces use them), each vertex's next
        if (min(a, b), max(a, b)) in once:
            nxt[int(a)] = int(b)
    new_v, new_f = [vertices], [faces]
    count, n = 0, vertices.shape[0]
    while nxt:
        start = next(iter(nxt))
        loop = [start]
        while True:
            following = nxt.pop(loop[-1], None)
            if following is None or following == start:
                break
            loop.append(following)
        if len(loop) < 3:
            continue
        centre = vertices[loop].mean(axis=0)
        ring = np.array(loop)
        new_v.append(centre[None])
        new_f.append(np.stack([np.roll(ring, -1), ring, np.full(len(ring), n)], axis=1))
        n += 1
        count += 1
    return np.concatenate(new_v), np.concatenate(new_f), count


def closed_piece(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray, voxel_size: float
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """The best supported piece of a marching-cubes mesh, closed and checked; vertices, faces and what was done.

    Support is counted as fragment removal counts it (:func:`engine.surface.fragments.piece_support`): the
    ``points`` whose nearest vertex lies within one finest voxel (``voxel_size``, the vertices' units) and
    belongs to the piece; ties go to the larger piece.
    """
    stats = {"watertight_pieces_dropped": 0, "watertight_holes_filled": 0}
    if faces.shape[0] == 0:
        return vertices, faces, stats
    count, label = face_pieces(vertices.shape[0], faces)
    support = piece_support(vertices, faces, label, count, points, voxel_size)
    best = int(np.lexsort((np.bincount(label, minlength=count), support))[-1])
    stats["watertight_pieces_dropped"] = count - 1
    vertices, faces, _ = compact(vertices, faces[label == best])
    _, counts = edge_use(faces)
    if (counts == 1).any():
        vertices, faces, stats["watertight_holes_filled"] = fill_loops(vertices, faces)
    return vertices, faces, stats


def is_closed_manifold(faces: np.ndarray) -> bool:
    """Every edge in exactly two faces (no boundary, no fins)."""
    _, counts = edge_use(faces)
    return bool(faces.shape[0] > 0 and (counts == 2).all())


def refuse_chunks() -> MemoryLimitError:
    """The refusal of a watertight run that automatic chunking would split (a set chunk size is an OptionError)."""
    return MemoryLimitError(
        "Watertight mode needs the scene solved in one piece, but it does not fit the memory limit "
        "and would be split into chunks.",
        "Raise the memory limit, use a larger voxel size or a lower detail level, or turn watertight off.")
