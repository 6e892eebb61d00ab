"""Mesh and point files for tests, bench and examples (none of it ships in the extension).

Reading the engine's PLY, OBJ and GLB output back independently of the engine's
writers, and writing point-only PLY inputs as scanners and Blender write them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from plyfile import PlyData, PlyElement

from engine.formats.ply import COLOR_NAMES, NORMAL_NAMES


def read_obj(path: Path) -> dict[str, np.ndarray]:
    """``v`` (V, 3|6) float64, ``vn`` (V, 3) and ``f`` (F, 3, 2) 1-based ``a//b`` pairs (or (F, 3, 1))."""
    rows: dict[str, list[list[str]]] = {"v": [], "vn": [], "f": []}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, *values = line.split()
            rows[key].append(values)
    faces = np.array([[c.split("//") for c in face] for face in rows["f"]], dtype=np.int64)
    return {"v": np.array(rows["v"], dtype=np.float64), "vn": np.array(rows["vn"], dtype=np.float64), "f": faces}


def read_glb(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]:
    """The glTF JSON, the first primitive's attributes (decoded from the binary chunk) and its triangles (F, 3).

    pygltflib parses the container; the accessors are decoded here from the glTF specification.
    """
    import pygltflib as gl

    doc = gl.GLTF2().load_binary(str(path))
    blob = doc.binary_blob()
    kinds = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}
    dtypes = {gl.FLOAT: "<f4", gl.UNSIGNED_INT: "<u4"}

    def accessor(i: int) -> np.ndarray:
        acc = doc.accessors[i]
        view = doc.bufferViews[acc.bufferView]
        data = np.frombuffer(blob, dtypes[acc.componentType], acc.count * kinds[acc.type], view.byteOffset)
        return data.reshape(acc.count, kinds[acc.type])

    prim = doc.meshes[0].primitives[0]
    attrs = {name: accessor(getattr(prim.attributes, name)) for name in ("POSITION", "NORMAL", "COLOR_0")
             if getattr(prim.attributes, name) is not None}
    return json.loads(doc.to_json()), attrs, accessor(prim.indices).reshape(-1, 3)


def glb_world_z_up(doc: dict[str, Any], positions: np.ndarray) -> np.ndarray:
    """Positions placed by the first node's matrix, then turned from glTF's Y-up to Z-up as Blender imports them."""
    matrix = np.array(doc["nodes"][0]["matrix"]).reshape(4, 4).T
    world = positions.astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
    return np.stack([world[:, 0], -world[:, 2], world[:, 1]], axis=1)


def read_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) float64 and triangles (F, 3) int64 of a triangle PLY mesh.

    Faces are read as fixed-length lists (plyfile's fast path: 2M faces in well
    under a second instead of 12 s); a face that is not a triangle is an error.
    """
    ply = PlyData.read(str(path), known_list_len={"face": {"vertex_indices": 3}})
    v = ply["vertex"].data
    verts = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    if "face" not in ply or len(ply["face"].data) == 0:
        return verts, np.zeros((0, 3), dtype=np.int64)
    return verts, np.asarray(ply["face"].data["vertex_indices"], dtype=np.int64).reshape(-1, 3)


def write_points(path: str | Path, points: np.ndarray, normals: np.ndarray | None = None,
                 colors: np.ndarray | None = None, text: bool = False) -> None:
    """A point-only PLY (as scanners and Blender write them); colours as uint8 RGB(A)."""
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    cols: list[np.ndarray] = [points[:, 0], points[:, 1], points[:, 2]]
    if normals is not None:
        fields += [(n, "f4") for n in NORMAL_NAMES]
        cols += [normals[:, 0], normals[:, 1], normals[:, 2]]
    if colors is not None:
        c8 = colors if colors.dtype == np.uint8 else np.clip(np.round(colors * 255), 0, 255).astype(np.uint8)
        fields += [(n, "u1") for n in COLOR_NAMES[: c8.shape[1]]]
        cols += [c8[:, i] for i in range(c8.shape[1])]
    data = np.empty(points.shape[0], dtype=fields)
    for (name, _), col in zip(fields, cols, strict=True):
        data[name] = col
    PlyData([PlyElement.describe(data, "vertex")], text=text).write(str(path))
