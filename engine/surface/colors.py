"""Step 9: carry input colours to mesh vertices (k nearest, inverse distance)."""

from __future__ import annotations

import numpy as np

from ..solver.knn import PointTree

NEIGHBOURS = 4


def interpolate_colors(vertices: np.ndarray, tree: PointTree, colors: np.ndarray) -> np.ndarray:
    """RGBA (V, 4) float32 at ``vertices`` from the input points' colours (N, 4)."""
    k = min(NEIGHBOURS, colors.shape[0])
    dist, idx = tree.query(vertices, k)
    w = 1.0 / np.maximum(dist, 1e-12)
    w /= w.sum(axis=1, keepdims=True)
    return (colors[idx] * w[:, :, None]).sum(axis=1).astype(np.float32)
