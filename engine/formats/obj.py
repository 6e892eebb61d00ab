"""Wavefront OBJ output: ``v x y z [r g b]``, ``vn``, ``f a//a b//b c//c`` (numpy only).

Vertex colours use the common ``v x y z r g b`` extension (0-1 floats, as
MeshLab, CloudCompare and Blender's OBJ importer read them; alpha has no
place there).  Coordinates stay in the input's frame: OBJ has no up axis,
so none is imposed (in Blender's OBJ importer choose Up = Z for Z-up scans).
Digits are enough to round-trip float32, or float64 for georeferenced
coordinates, as the PLY writer decides.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import numpy as np

from ..mesh import Mesh, needs_float64

BATCH = 65536  # rows formatted per write: bounded memory, few Python calls


def _write_rows(out: TextIO, row: str, values: np.ndarray) -> None:
    """``row % values[i]`` for every row, formatted a chunk at a time."""
    for start in range(0, values.shape[0], BATCH):
        block = values[start:start + BATCH]
        out.write((row * block.shape[0]) % tuple(block.ravel().tolist()))


def write_obj(path: str | Path, mesh: Mesh) -> None:
    """One object, vertex colours and normals when the mesh has them, faces 1-based and counter-clockwise."""
    verts = mesh.vertices64
    xyz = "%.17g %.17g %.17g" if needs_float64(verts) else "%.9g %.9g %.9g"
    with open(path, "w", encoding="ascii", newline="\n") as out:
        out.write(f"# NKSR for Blender: {verts.shape[0]} vertices, {mesh.faces.shape[0]} triangles\n")
        if mesh.colors is not None:
            _write_rows(out, f"v {xyz} %.6g %.6g %.6g\n", np.hstack([verts, mesh.colors[:, :3].astype(np.float64)]))
        else:
            _write_rows(out, f"v {xyz}\n", verts)
        faces = mesh.faces.astype(np.int64) + 1
        if mesh.normals is not None:
            _write_rows(out, "vn %.7g %.7g %.7g\n", mesh.normals.astype(np.float64))
            _write_rows(out, "f %d//%d %d//%d %d//%d\n", np.repeat(faces, 2, axis=1))
        else:
            _write_rows(out, "f %d %d %d\n", faces)
