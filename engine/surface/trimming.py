"""Step 8: remove surface that is far from every input point.

The field is defined only near data, and where data is missing (the open end
of a scan) its zero level wanders off.  Faces with a vertex farther than
``TRIM_VOXELS`` finest voxels plus ``TRIM_NOISE`` times the measured noise
from the nearest input point are removed, so open scans stay open instead of
ballooning; a far vertex whose neighbours are all near keeps its faces if it
lies within ``PINHOLE_REACH`` trim distances (a gap in the samples, not an open
end).  The noise term matters: on the bunny with noise of half a voxel,
a 1.5-voxel trim alone punched small holes where samples were sparse.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..solver.knn import PointTree, grid_within, points_per_cell
from ..vectors import any_in_row

# Mask (M,) of the queries (M, 3) with an input point at most the radius away: PointTree.within on the CPU,
# :func:`points_within` on a GPU.
Within = Callable[[np.ndarray, float], np.ndarray]

TRIM_VOXELS = 1.5
TRIM_NOISE = 2.0
# A far vertex alone among near ones (a gap between samples) keeps its faces within this many trim distances.
PINHOLE_REACH = 1.1
# Points per cell of the trim distance's edge above which a GPU's test gives way to the CPU's k-d tree: each query
# scans the 27 cells around its own, so a distance wide against the spacing (a very noisy cloud's, where noise sets
# it) would cost each vertex thousands of distances; the trim distance of the bench inputs holds a few to a few
# tens of points per such cell.
WITHIN_FILL_MAX = 512.0


def trim_distance(voxel_size: float, noise: float) -> float:
    """How far surface may be from the nearest point before it is trimmed (same units as the inputs)."""
    return TRIM_VOXELS * voxel_size + TRIM_NOISE * noise


def points_within(points: np.ndarray, device: torch.device) -> Within:
    """The nearness test of the points on ``device`` (:func:`~engine.solver.knn.grid_within`): on a GPU the 2.8M
    vertices of the 1M-point bunny's mesh are tested there instead of in the CPU's k-d tree (0.08 against
    0.66-1.04 s on the H200 machine), unless the distance holds more than :data:`WITHIN_FILL_MAX` points a cell."""
    on_device = torch.from_numpy(np.asarray(points, np.float32)).to(device)

    def within(queries: np.ndarray, radius: float) -> np.ndarray:
        if radius > 0.0 and points_per_cell(on_device, radius) > WITHIN_FILL_MAX:
            return PointTree(points).within(queries, radius)
        q = torch.from_numpy(np.asarray(queries, np.float32)).to(device)
        return grid_within(on_device, q, radius).cpu().numpy()

    return within


def trim_far(vertices: np.ndarray, faces: np.ndarray, within: Within, max_distance: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop faces with a vertex beyond ``max_distance`` of the points (``within``, their nearness test); returns
    vertices, faces and the kept vertex rows."""
    far = ~within(vertices, max_distance)
    lone = np.flatnonzero(_pinholes(far, faces))
    if lone.size:  # a lone far vertex keeps its faces if it is not much farther
        far[lone[within(vertices[lone], PINHOLE_REACH * max_distance)]] = False
    faces = faces[~any_in_row(far[faces])]
    return compact(vertices, faces)


def _pinholes(far: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Mask of the far vertices whose faces' other corners touch no other far vertex: a gap in the samples smaller
    than a face's ring, not an open end.  Dropping its faces would punch a pinhole that renders as a dark speck
    (the demo's trefoil, meshed where the surface bends: one vertex 2.6% beyond the trim distance, its five faces).
    At an open end the far vertices lie side by side, or one ring apart, and are all trimmed."""
    touching = any_in_row(far[faces])
    f = faces[touching]
    on_face = far[f]
    n = far.shape[0]
    lo, hi = np.full(n, n, np.int64), np.full(n, -1, np.int64)  # the least and greatest far vertex each one touches
    for c in range(3):
        sel = on_face[:, c]
        for d in ((c + 1) % 3, (c + 2) % 3):
            np.minimum.at(lo, f[sel, d], f[sel, c])
            np.maximum.at(hi, f[sel, d], f[sel, c])
    per_face = on_face.sum(axis=1)
    alone = far.copy()
    alone[f[per_face >= 2]] = False  # beside another far vertex
    single = per_face == 1
    fs, own = f[single], on_face[single]
    x = fs[own]  # each such face's far vertex
    ring_clear = (own | ((lo[fs] == x[:, None]) & (hi[fs] == x[:, None]))).all(axis=1)
    alone[x[~ring_clear]] = False
    return alone


def compact(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Remove vertices no face uses; returns vertices, re-indexed faces and the kept vertex rows."""
    used = np.zeros(vertices.shape[0], dtype=bool)
    used[faces.reshape(-1)] = True
    kept = np.flatnonzero(used)
    remap = np.full(vertices.shape[0], -1, dtype=np.int64)
    remap[kept] = np.arange(kept.size)
    return vertices[kept], remap[faces], kept
