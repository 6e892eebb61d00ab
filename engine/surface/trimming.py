"""Step 8: remove surface that is far from every input point.

The field is defined only near data, and where data is missing (the open end
of a scan) its zero level wanders off.  Faces with a vertex farther than
``TRIM_VOXELS`` finest voxels plus ``TRIM_NOISE`` times the measured noise
from the nearest input point are removed, so open scans stay open instead of
ballooning.  The noise term matters: on the bunny with noise of half a voxel,
a 1.5-voxel trim alone punched small holes where samples were sparse.
"""

from __future__ import annotations

import numpy as np

from ..solver.knn import PointTree

TRIM_VOXELS = 1.5
TRIM_NOISE = 2.0


def trim_distance(voxel_size: float, noise: float) -> float:
    """How far surface may be from the nearest point before it is trimmed (same units as the inputs)."""
    return TRIM_VOXELS * voxel_size + TRIM_NOISE * noise


def trim_far(vertices: np.ndarray, faces: np.ndarray, tree: PointTree, max_distance: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop faces with a vertex beyond ``max_distance``; returns vertices, faces and the kept vertex rows."""
    far = ~tree.within(vertices, max_distance)
    faces = faces[~far[faces].any(axis=1)]
    return compact(vertices, faces)


def compact(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Remove vertices no face uses; returns vertices, re-indexed faces and the kept vertex rows."""
    used = np.zeros(vertices.shape[0], dtype=bool)
    used[faces.reshape(-1)] = True
    kept = np.flatnonzero(used)
    remap = np.full(vertices.shape[0], -1, dtype=np.int64)
    remap[kept] = np.arange(kept.size)
    return vertices[kept], remap[faces], kept
