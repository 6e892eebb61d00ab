"""Triangle-mesh PLY I/O for the benchmark: the engine's writer and the tests' reader, with float32 vertices.

``engine.formats.ply`` and ``tests.meshfiles`` need only numpy and plyfile (the engine package
imports lazily), so the peers' environment, which has no torch, uses them too.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.formats.ply import write_mesh  # noqa: E402
from engine.mesh import Mesh  # noqa: E402
from tests.meshfiles import read_mesh  # noqa: E402


def write_ply(path: str | Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Write vertices (V,3) as float32 and faces (F,3) as int32 to a binary PLY."""
    v = np.asarray(vertices, dtype=np.float32).reshape(-1, 3)
    write_mesh(path, Mesh(v, np.asarray(faces, dtype=np.int32).reshape(-1, 3), np.zeros(3)))


def read_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a triangle-mesh PLY; returns (float32 (V,3), int64 (F,3))."""
    vertices, faces = read_mesh(path)
    return vertices.astype(np.float32), faces
