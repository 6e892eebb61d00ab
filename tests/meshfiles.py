"""Reading the engine's OBJ and GLB output back, independently of the engine's writers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


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
