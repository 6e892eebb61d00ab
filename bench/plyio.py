"""Triangle-mesh PLY I/O for the benchmark, through plyfile (both environments have it).

Meshes go between the workers and the evaluator as float32 vertices and int32 faces.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement


def write_ply(path: str | Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Write vertices (V,3) as float32 and faces (F,3) as int32 to a binary PLY."""
    v = np.asarray(vertices, dtype=np.float32).reshape(-1, 3)
    vert = np.empty(len(v), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    vert["x"], vert["y"], vert["z"] = v[:, 0], v[:, 1], v[:, 2]
    face = np.empty(len(faces), dtype=[("vertex_indices", "i4", (3,))])
    face["vertex_indices"] = np.asarray(faces, dtype=np.int32).reshape(-1, 3)
    PlyData([PlyElement.describe(vert, "vertex"), PlyElement.describe(face, "face")]).write(str(path))


def read_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a triangle-mesh PLY; returns (float32 (V,3), int64 (F,3))."""
    ply = PlyData.read(str(path))
    vert = ply["vertex"].data
    v = np.stack([vert["x"], vert["y"], vert["z"]], axis=1).astype(np.float32)
    if "face" not in ply or len(ply["face"].data) == 0:
        return v, np.zeros((0, 3), dtype=np.int64)
    idx = ply["face"].data["vertex_indices"]
    f = np.stack([np.asarray(t, dtype=np.int64) for t in idx]) if idx.dtype == object else np.asarray(idx)
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"{path}: non-triangle faces")
    return v, f.astype(np.int64)
