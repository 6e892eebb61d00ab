"""Step 9: carry input colours to mesh vertices (k nearest, inverse distance)."""

from __future__ import annotations

import numpy as np

from .knn import PointTree

NEIGHBOURS = 4


def interpolate_colors(vertices: np.ndarray, tree: PointTree, colors: np.ndarray) -> np.ndarray:
    """RGBA (V, 4) float32 at ``vertices`` from the input points' colours (N, 4)."""
    k = min(NEIGHBOURS, colors.shape[0])
    dist, idx = tree.query(vertices, k)
    w = 1.0 / np.maximum(dist, 1e-12)
    w /= w.sum(axis=1, keepdims=True)
    return (colors[idx] * w[:, :, None]).sum(axis=1).astype(np.float32)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3) float32 of a counter-clockwise mesh."""
    tri = vertices[faces].astype(np.float64)
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    idx = faces.reshape(-1)
    vn = np.stack([np.bincount(idx, np.repeat(fn[:, c], 3), minlength=vertices.shape[0]) for c in range(3)], 1)
    length = np.linalg.norm(vn, axis=1, keepdims=True)
    return (vn / np.maximum(length, 1e-30)).astype(np.float32)
