"""k-nearest-neighbour queries on the CPU.

SciPy's cKDTree is a well-kept, multi-threaded k-d tree; the engine uses it for
the few queries that are not on the solver's hot path (density and noise
probes on a subsample, vertex colours, trimming distances), so it runs on the
CPU whatever the compute device is.  Its build on 1M points takes ~0.3 s here.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


class PointTree:
    """A k-d tree over (N, 3) points for repeated queries."""

    def __init__(self, points: np.ndarray) -> None:
        self.tree = cKDTree(np.asarray(points, dtype=np.float64), balanced_tree=False, compact_nodes=False)

    def query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Distances and indices (M, k) of the k nearest points to each query (M, 3)."""
        dist, idx = self.tree.query(np.asarray(queries, dtype=np.float64), k=k, workers=-1)
        if k == 1:
            dist, idx = dist[:, None], idx[:, None]
        return dist, idx
