"""PLY reading through ``plyfile`` (binary and ASCII, float or double); binary mesh writing with numpy.

plyfile writes list properties (the faces) one row at a time in Python: 9 s
for 2M triangles.  A triangle mesh's binary layout is fixed (a count byte and
three int32 per face), so the mesh writer lays it out as one numpy record
array (0.1 s) and checks nothing else by hand: the header lists the record
fields, and plyfile reads the result back in the tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElementParseError, PlyListProperty

from ..cloud import PointCloud
from ..errors import InputError
from ..mesh import Mesh, needs_float64
from . import splat
from .fields import cloud_from_fields

# What we write; reading accepts every spelling in engine.formats.fields.
COLOR_NAMES = ("red", "green", "blue", "alpha")
NORMAL_NAMES = ("nx", "ny", "nz")
PLY_TYPES = {"f4": "float", "f8": "double", "u1": "uchar", "i4": "int"}  # numpy -> PLY names of what we write
TRAILING_PEEK = 65536  # bytes after the last element looked at to tell padding from data


def read_points(path: str | Path, splat_min_opacity: float = splat.MIN_OPACITY) -> PointCloud:
    """The vertex element of a PLY file: positions, and normals, colours (as RGBA in [0, 1]) and sensor
    positions (``sx sy sz``) when present; a 3D Gaussian Splatting file's splats through :mod:`.splat`,
    those below ``splat_min_opacity`` left out.

    The header's counts must match the body: a count too small would drop the
    points after it silently (plyfile stops there), so data after the last
    element is an error, as is a body shorter than the counts.
    """
    try:
        with open(path, "rb") as stream:
            ply = PlyData.read(stream)
            end = None if ply.text else stream.tell()  # binary: where the last element ended
    except FileNotFoundError:
        raise InputError(f"{path}: no such file.", "Check the input path.") from None
    except PlyElementParseError as exc:
        if exc.message == "early end-of-file" and exc.element is not None and exc.row is not None:
            raise InputError(f"{path}: the header declares {exc.element.count} {exc.element.name} rows but the "
                             f"file holds only {exc.row}.",
                             "The file is cut short (an interrupted copy or export?) or its header count is "
                             "wrong: export the cloud again.") from None
        raise InputError(f"{path}: not a readable PLY file ({exc}).", "Export the cloud as PLY again.") from None
    except Exception as exc:  # plyfile raises several types for malformed files
        raise InputError(f"{path}: not a readable PLY file ({exc}).", "Export the cloud as PLY again.") from None
    _check_nothing_after(path, ply, end)
    if "vertex" not in ply:
        raise InputError(f"{path}: the PLY file has no 'vertex' element.", "Export the points as PLY vertices.")
    v = ply["vertex"].data
    if splat.is_splat(v.dtype.names or ()):
        return splat.read_splats(v, str(path), splat_min_opacity)
    return cloud_from_fields(v.dtype.names or (), lambda name: v[name], str(path))


def _check_nothing_after(path: str | Path, ply: PlyData, end: int | None) -> None:
    """Raise :class:`InputError` when the file holds data after the last element its header declares."""
    if not ply.elements:
        return
    last = ply.elements[-1]
    if end is not None:  # binary: bytes past where the last element ended
        with open(path, "rb") as f:
            f.seek(end)
            tail = f.read(TRAILING_PEEK)
            more = f.seek(0, 2) - end
        if not tail.strip(b" \t\r\n"):
            return  # a line break or blanks after the data: harmless
        fixed = not any(isinstance(p, PlyListProperty) for p in last.properties)
        extra = f"{more // last.dtype(ply.byte_order).itemsize} more rows" if fixed else f"{more} more bytes"
    else:  # ASCII: one row per line, so count the non-empty lines after the header
        with open(path, "rb") as f:
            for line in f:
                if line.strip() == b"end_header":
                    break
            rows = sum(1 for line in f if line.strip())
        expected = sum(e.count for e in ply.elements)
        if rows <= expected:
            return
        extra = f"{rows - expected} more rows"
    raise InputError(f"{path}: the header declares {last.count} {last.name} rows, but the file holds {extra} "
                     "after them.",
                     f"The header's count is wrong (a faulty exporter or a hand edit): set 'element {last.name}' "
                     "to the number of rows, or export the cloud again; read as it is, points would be lost.")


def write_mesh(path: str | Path, mesh: Mesh) -> None:
    """Binary PLY with vertex normals and colours; double coordinates when float32 would lose precision."""
    verts = mesh.vertices64
    coord = "f8" if needs_float64(verts) else "f4"
    fields = [("x", coord), ("y", coord), ("z", coord)]
    if mesh.normals is not None:
        fields += [(n, "f4") for n in NORMAL_NAMES]
    if mesh.colors is not None:
        fields += [(n, "u1") for n in COLOR_NAMES]
    v = np.empty(verts.shape[0], dtype=fields)
    v["x"], v["y"], v["z"] = verts[:, 0], verts[:, 1], verts[:, 2]
    if mesh.normals is not None:
        v["nx"], v["ny"], v["nz"] = mesh.normals[:, 0], mesh.normals[:, 1], mesh.normals[:, 2]
    if mesh.colors is not None:
        c8 = np.clip(np.round(mesh.colors * 255), 0, 255).astype(np.uint8)
        for i, n in enumerate(COLOR_NAMES):
            v[n] = c8[:, i]
    faces = np.empty(mesh.faces.shape[0], dtype=[("count", "u1"), ("vertex_indices", "<i4", (3,))])
    faces["count"], faces["vertex_indices"] = 3, mesh.faces
    v = v.astype(v.dtype.newbyteorder("<"))
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(v)}",
              *(f"property {PLY_TYPES[v.dtype[name].str[1:]]} {name}" for name in v.dtype.names or ()),
              f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    with open(path, "wb") as out:
        out.write(("\n".join(header) + "\n").encode("ascii"))
        out.write(v.tobytes())
        out.write(faces.tobytes())
