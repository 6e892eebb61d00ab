"""GLB (binary glTF 2.0) output through ``pygltflib``: POSITION, NORMAL, COLOR_0 and indices.

pygltflib is optional (requirements/formats.txt).  It was chosen over trimesh,
whose exporter stores COLOR_0 as 8-bit: glTF colours are linear, so 8-bit
linear values band in the darks, and Blender's importer quantises them once
more.  Here COLOR_0 is float32 linear RGBA (converted from the sRGB values the
input carried), which Blender's glTF importer turns back into the input's
colours exactly.

glTF is Y-up; the engine's data, like Blender, LAS and PCL, is Z-up.  The
vertices are the mesh's float32 ``local_vertices`` and the node's matrix holds
the float64 ``origin`` and the Z-up to Y-up turn, so georeferenced meshes keep
their precision and import upright in Blender.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..mesh import Mesh, vertex_normals
from ..optional import import_optional

ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
FLOAT, UNSIGNED_INT = 5126, 5125


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear (the IEC 61966-2-1 curve)."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def z_up_to_y_up(origin: np.ndarray) -> list[float]:
    """Column-major 4x4 node matrix: translate by ``origin``, then turn Z-up into Y-up ((x, y, z) -> (x, z, -y))."""
    m = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
    m[:3, 3] = m[:3, :3] @ np.asarray(origin, dtype=np.float64)
    return [float(v) for v in m.T.ravel()]


def write_glb(path: str | Path, mesh: Mesh) -> None:
    """A one-mesh, one-node GLB; an empty mesh gives an empty scene."""
    gl = import_optional("pygltflib", "Writing GLB files", "pygltflib")
    doc = gl.GLTF2(asset=gl.Asset(generator="NKSR for Blender"), scene=0, scenes=[gl.Scene(nodes=[])])
    if mesh.faces.shape[0] and mesh.local_vertices.shape[0]:
        positions = np.ascontiguousarray(mesh.local_vertices, dtype="<f4")
        normals = mesh.normals if mesh.normals is not None else vertex_normals(positions, mesh.faces)
        arrays: list[tuple[np.ndarray, str, int, int, str | None]] = [
            (np.ascontiguousarray(mesh.faces, dtype="<u4").ravel(), "SCALAR", UNSIGNED_INT, ELEMENT_ARRAY_BUFFER, None),
            (positions, "VEC3", FLOAT, ARRAY_BUFFER, "POSITION"),
            (np.ascontiguousarray(normals, dtype="<f4"), "VEC3", FLOAT, ARRAY_BUFFER, "NORMAL"),
        ]
        if mesh.colors is not None:
            rgba = np.concatenate([srgb_to_linear(mesh.colors[:, :3]), mesh.colors[:, 3:4]], axis=1)
            arrays.append((np.ascontiguousarray(rgba, dtype="<f4"), "VEC4", FLOAT, ARRAY_BUFFER, "COLOR_0"))
        blob, attributes = bytearray(), {}
        for i, (data, kind, component, target, attribute) in enumerate(arrays):
            doc.bufferViews.append(gl.BufferView(buffer=0, byteOffset=len(blob), byteLength=data.nbytes,
                                                 target=target))
            blob += data.tobytes()  # every component is 4 bytes, so views stay 4-byte aligned
            bounds = {}
            if attribute == "POSITION":  # required by the glTF specification
                bounds = {"min": data.min(axis=0).tolist(), "max": data.max(axis=0).tolist()}
            doc.accessors.append(gl.Accessor(bufferView=i, componentType=component, count=data.shape[0],
                                             type=kind, **bounds))
            if attribute is not None:
                attributes[attribute] = i
        doc.buffers.append(gl.Buffer(byteLength=len(blob)))
        doc.meshes.append(gl.Mesh(primitives=[gl.Primitive(attributes=gl.Attributes(**attributes), indices=0)]))
        doc.nodes.append(gl.Node(mesh=0, matrix=z_up_to_y_up(mesh.origin)))
        doc.scenes[0].nodes.append(0)
        doc.set_binary_blob(bytes(blob))
    doc.save_binary(str(path))
