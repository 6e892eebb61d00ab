"""Helpers of the Blender tests: point-cloud objects with known surfaces, and what a mesh object holds."""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
from mathutils import Euler, Matrix, Vector

from tests.shapes import sphere

from .conftest import write_ply

# Rotation, non-uniform scale and an offset of 1e5: every part of the transform must be honoured.
TRANSFORM = (Matrix.Translation(Vector((1.0e5, -2.0e5, 3.0e4)))
             @ Euler((0.3, -0.7, 1.1)).to_matrix().to_4x4()
             @ Matrix.Diagonal(Vector((2.0, 1.0, 1.5, 1.0))))


def color_of(p: np.ndarray) -> np.ndarray:
    """A smooth colour field over the unit sphere, so colours on the mesh can be checked anywhere."""
    return np.clip(np.stack([(p[:, 0] + 1) / 2, (p[:, 1] + 1) / 2, (p[:, 2] + 1) / 2], axis=1), 0, 1)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """Blender's PLY importer reads 8-bit colours as sRGB and stores them linear."""
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def import_sphere_ply(tmp_path: Path, n: int = 3000) -> bpy.types.Object:
    """A unit-sphere cloud (normals, colours) through Blender's own PLY importer, then moved by TRANSFORM."""
    points, normals = sphere(n)
    colors = color_of(points)
    path = write_ply(tmp_path / "sphere.ply", points, normals, colors)
    bpy.ops.wm.ply_import(filepath=str(path))
    obj = bpy.context.selected_objects[0]
    obj.matrix_world = TRANSFORM
    bpy.context.view_layer.update()  # settle matrix_world (decomposed into loc/rot/scale) before any snapshot
    return obj


def mesh_arrays(obj: bpy.types.Object) -> tuple[np.ndarray, np.ndarray]:
    """Local vertex positions and triangle indices of a mesh object."""
    mesh = obj.data
    verts = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.attributes["position"].data.foreach_get("vector", verts)
    sizes = np.empty(len(mesh.polygons), dtype=np.int32)
    mesh.polygons.foreach_get("loop_total", sizes)
    assert (sizes == 3).all()
    corners = np.empty(len(mesh.loops), dtype=np.int32)
    mesh.attributes[".corner_vert"].data.foreach_get("value", corners)
    return verts.reshape(-1, 3), corners.reshape(-1, 3)


def corner_normals(obj: bpy.types.Object) -> np.ndarray:
    """The shading normal of every face corner (custom normals applied), in the object's local frame.

    ``Mesh.corner_normals`` reads the same on Blender 4.2 (custom split normals)
    and 4.5+ (the ``custom_normal`` attribute).
    """
    mesh = obj.data
    values = np.empty(len(mesh.loops) * 3, dtype=np.float32)
    mesh.corner_normals.foreach_get("vector", values)
    return values.reshape(-1, 3)


def snapshot(obj: bpy.types.Object) -> dict[str, object]:
    """Everything about an input object the add-on must not change."""
    data = obj.data
    attrs = {}
    for attr in data.attributes:
        field, width = {"FLOAT_VECTOR": ("vector", 3), "FLOAT_COLOR": ("color", 4), "BYTE_COLOR": ("color", 4),
                        "FLOAT": ("value", 1)}.get(attr.data_type, ("", 0))
        if field:
            values = np.empty(len(attr.data) * width, dtype=np.float32)
            attr.data.foreach_get(field, values)
            attrs[attr.name] = values.tobytes()
    return {"name": obj.name, "type": obj.type, "matrix": [tuple(r) for r in obj.matrix_world],
            "attributes": attrs, "data": data.name, "users_collection": [c.name for c in obj.users_collection]}


def scene_state() -> dict[str, object]:
    return {"objects": sorted(o.name for o in bpy.data.objects), "meshes": sorted(m.name for m in bpy.data.meshes)}
