"""Arrays out of Blender objects and meshes back in, through the fast attribute paths.

Positions go to the engine in world space, recentred in float64 before the cast
to float32, so a scan placed 1e5 units from the origin keeps its precision.  The
result comes back in that frame and is put into the input object's local frame,
so the new object carries the input's transform.  Nothing here modifies the
user's objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import bpy
import numpy as np

POINT_TYPES = {"MESH", "POINTCLOUD"}


class SceneInputError(Exception):
    """An object cannot serve as a point cloud; the message says why and what to do."""


@dataclass
class PointSet:
    """One input object's points in a recentred world frame (``world = local_frame + center``)."""

    name: str
    points: np.ndarray  # (N, 3) float32, world minus center
    normals: np.ndarray | None  # (N, 3) float32, world space, unit
    colors: np.ndarray | None  # (N, 4) float32, linear RGBA
    center: np.ndarray  # (3,) float64
    matrix_world: np.ndarray  # (4, 4) float64
    sensors: np.ndarray | None = None  # (N, 3) float32, world minus center: the ``sensor`` attribute


def _matrix(obj: bpy.types.Object) -> np.ndarray:
    return np.array(obj.matrix_world, dtype=np.float64)


def _attribute(attributes: Any, name: str, data_type: str, domain: str = "POINT") -> Any:
    attr = attributes.get(name)
    if attr is not None and attr.data_type == data_type and attr.domain == domain:
        return attr
    return None


def _read_vectors(attr: Any, count: int) -> np.ndarray:
    out = np.empty(count * 3, dtype=np.float32)
    attr.data.foreach_get("vector", out)
    return out.reshape(count, 3)


def _point_colors(geometry: Any, count: int, corner_verts: np.ndarray | None) -> np.ndarray | None:
    """The active colour attribute per point (corner colours averaged onto their vertices)."""
    colors = getattr(geometry, "color_attributes", None)
    attr = getattr(colors, "active_color", None)  # a PointCloud's colour attributes have no active one (5.0)
    if attr is None:
        attr = next((a for a in geometry.attributes if a.data_type in {"FLOAT_COLOR", "BYTE_COLOR"}
                     and a.domain == "POINT" and not a.name.startswith(".")), None)
    if attr is None:
        return None
    flat = np.empty(len(attr.data) * 4, dtype=np.float32)
    attr.data.foreach_get("color", flat)
    values = flat.reshape(-1, 4)
    if attr.domain == "POINT":
        return values
    if attr.domain == "CORNER" and corner_verts is not None:
        sums = np.zeros((count, 4), dtype=np.float64)
        np.add.at(sums, corner_verts, values)
        hits = np.bincount(corner_verts, minlength=count)[:, None]
        return (sums / np.maximum(hits, 1)).astype(np.float32)
    return None


def _read_geometry(geometry: Any, with_colors: bool
                   ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Positions, normals, colours and sensor positions of an evaluated mesh or point cloud, in its local frame.

    The ``normal`` attribute wins; a mesh with faces falls back to its vertex normals.  ``sensor`` (where the
    scanner stood for each point, FLOAT_VECTOR on points: what the NKSR importer makes) orients estimated normals.
    """
    is_mesh = isinstance(geometry, bpy.types.Mesh)
    count = len(geometry.vertices) if is_mesh else len(geometry.points)
    local = _read_vectors(geometry.attributes["position"], count) if count else np.zeros((0, 3), np.float32)
    normal_attr = _attribute(geometry.attributes, "normal", "FLOAT_VECTOR")
    normals: np.ndarray | None = None
    if normal_attr is not None:
        normals = _read_vectors(normal_attr, count)
    elif is_mesh and len(geometry.polygons):
        flat = np.empty(count * 3, dtype=np.float32)
        geometry.vertex_normals.foreach_get("vector", flat)
        normals = flat.reshape(count, 3)
    colors = None
    if with_colors:
        corner_verts = None
        if is_mesh and len(geometry.loops):
            corner_verts = np.empty(len(geometry.loops), dtype=np.int32)
            geometry.attributes[".corner_vert"].data.foreach_get("value", corner_verts)
        colors = _point_colors(geometry, count, corner_verts)
    sensor_attr = _attribute(geometry.attributes, "sensor", "FLOAT_VECTOR")
    sensors = _read_vectors(sensor_attr, count) if sensor_attr is not None else None
    return local, normals, colors, sensors


def read_point_set(obj: bpy.types.Object, depsgraph: bpy.types.Depsgraph, with_colors: bool = True) -> PointSet:
    """Positions, normals and colours of ``obj`` as evaluated (modifiers applied), without modifying it.

    A MESH with faces counts as the point set of its vertices with their vertex
    normals; a ``normal`` attribute (what Blender's PLY importer makes) wins when present.
    """
    if obj.type not in POINT_TYPES:
        raise SceneInputError(f"'{obj.name}' is a {obj.type.lower()}, which holds no points. "
                              "Select a mesh of loose vertices or a point cloud object.")
    evaluated = obj.evaluated_get(depsgraph)
    if obj.type == "MESH":
        try:
            local, normals, colors, sensors = _read_geometry(evaluated.to_mesh(), with_colors)
        finally:
            evaluated.to_mesh_clear()
    else:
        local, normals, colors, sensors = _read_geometry(evaluated.data, with_colors)
    count = len(local)
    if count == 0:
        raise SceneInputError(f"'{obj.name}' has no points. Select an object with vertices or points.")

    matrix = _matrix(obj)
    low, high = local.min(axis=0), local.max(axis=0)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):  # NaN/Inf rows: the engine drops and counts them
        finite = local[np.isfinite(local).all(axis=1)]
        low, high = (finite.min(axis=0), finite.max(axis=0)) if len(finite) else (np.zeros(3), np.zeros(3))
    local_center = (low.astype(np.float64) + high) / 2
    # world - center = R (local - c) with center = R c + t: float32 arithmetic on small numbers only, so
    # a scan 1e5 units from the origin keeps its precision and nothing is copied to float64.
    linear = matrix[:3, :3]
    points = _transform(local - local_center.astype(np.float32), linear)
    center = linear @ local_center + matrix[:3, 3]
    if normals is not None:
        # Normals transform with the inverse transpose (the engine normalises them after a non-uniform scale).
        normals = _transform(normals, np.linalg.inv(linear).T)
    if sensors is not None:  # positions: the same map as the points
        sensors = _transform(sensors - local_center.astype(np.float32), linear)
    return PointSet(obj.name, points, normals, colors, center, matrix, sensors)


def _transform(vectors: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """``vectors @ linear.T`` in float32, skipped for the identity (the common case)."""
    if np.allclose(linear, np.eye(3), rtol=0, atol=1e-12):
        return np.ascontiguousarray(vectors, dtype=np.float32)
    return vectors.astype(np.float32, copy=False) @ linear.T.astype(np.float32)


def build_mesh(name: str, points: PointSet, vertices: np.ndarray, faces: np.ndarray, *,
               origin: np.ndarray | None = None, colors: np.ndarray | None = None,
               normals: np.ndarray | None = None, edges: np.ndarray | None = None,
               corner_edges: np.ndarray | None = None) -> bpy.types.Mesh:
    """A new mesh in the input object's local frame, written through the attribute arrays (no from_pydata).

    ``origin + vertices`` and ``normals`` are in the recentred world frame of
    ``points``.  Blender derives the edges unless the engine sent them (``edges``
    (E, 2) and ``corner_edges`` (3F,)), which saves about a second per 2M triangles.
    """
    linear = points.matrix_world[:3, :3]
    inverse = np.linalg.inv(linear)
    # local = R^-1 (world - t) = R^-1 (v + origin) + c, with c the local centre the points were sent around.
    local_center = inverse @ (points.center - points.matrix_world[:3, 3])
    shift = (inverse @ (origin if origin is not None else np.zeros(3)) + local_center).astype(np.float32)
    local = _transform(vertices, inverse) + shift
    faces = np.ascontiguousarray(faces, dtype=np.int32)
    mesh: Any = bpy.data.meshes.new(name)
    mesh.vertices.add(len(local))
    mesh.loops.add(faces.size)
    mesh.polygons.add(len(faces))
    mesh.attributes["position"].data.foreach_set("vector", local.ravel())
    mesh.attributes[".corner_vert"].data.foreach_set("value", faces.ravel())
    if edges is not None and corner_edges is not None:
        mesh.edges.add(len(edges))
        mesh.attributes[".edge_verts"].data.foreach_set("value", np.ascontiguousarray(edges, np.int32).ravel())
        mesh.attributes[".corner_edge"].data.foreach_set("value", np.ascontiguousarray(corner_edges, np.int32).ravel())
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    if colors is not None and len(colors) == len(local):
        attr = mesh.color_attributes.new("Color", "FLOAT_COLOR", "POINT")
        attr.data.foreach_set("color", np.ascontiguousarray(colors, dtype=np.float32).ravel())
        mesh.color_attributes.active_color = attr
        mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index
    mesh.update(calc_edges=edges is None)
    if normals is not None and len(normals) == len(local):
        # World normals back to local with the transpose of the world matrix (inverse of the inverse transpose);
        # Blender normalises custom normals itself.
        _set_custom_normals(mesh, _transform(normals, linear.T))
    return mesh


def _set_custom_normals(mesh: Any, normals: np.ndarray) -> None:
    """Per-vertex custom normals: the ``custom_normal`` attribute (4.5+), else the older split-normal API."""
    if bpy.app.version >= (4, 5, 0):
        attr = mesh.attributes.new("custom_normal", "FLOAT_VECTOR", "POINT")
        attr.data.foreach_set("vector", normals.ravel())
    else:  # Blender 4.2 to 4.4 (tested in .venv-blender-4.2)
        mesh.normals_split_custom_set_from_vertices(normals.tolist())


def add_object(context: bpy.types.Context, source: bpy.types.Object, mesh: bpy.types.Mesh) -> bpy.types.Object:
    """A new object for ``mesh`` beside ``source``: same collections, same transform, selected and active."""
    obj = bpy.data.objects.new(mesh.name, mesh)
    obj.matrix_world = source.matrix_world.copy()
    collections = list(source.users_collection) or [context.scene.collection]
    for collection in collections:
        collection.objects.link(obj)
    return obj


def add_file_object(context: bpy.types.Context, name: str, result: Any, *, with_colors: bool = True,
                    source: str = "") -> bpy.types.Object:
    """A new object for a mesh the engine made from a file: placed where the file's points are.

    The engine sends vertices relative to ``result.origin`` (float64; a georeferenced
    scan's offsets of 1e6 included).  The object's location is that origin as
    Blender's float32 location holds it, the vertices stay small, and the
    ``nksr_origin`` custom property keeps the exact offset for export or georeferencing.
    """
    origin = np.asarray(result.origin, dtype=np.float64).reshape(3)
    location = origin.astype(np.float32).astype(np.float64)  # exactly what obj.location will hold
    world = PointSet(name, np.zeros((0, 3), np.float32), None, None, np.zeros(3), np.eye(4))
    mesh = build_mesh(name, world, result.local_vertices, result.faces, origin=origin - location,
                      colors=result.colors if with_colors else None, normals=result.normals,
                      edges=result.edges, corner_edges=result.corner_edges)
    try:
        obj = bpy.data.objects.new(name, mesh)
    except BaseException:
        bpy.data.meshes.remove(mesh)
        raise
    try:
        obj.location = location.tolist()
        obj["nksr_origin"] = location.tolist()
        if source:
            obj["nksr_source"] = source
        (context.collection or context.scene.collection).objects.link(obj)
    except BaseException:  # all or nothing: neither the object nor its mesh stays
        bpy.data.objects.remove(obj)
        bpy.data.meshes.remove(mesh)
        raise
    return obj
