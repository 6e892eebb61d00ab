"""Minimal binary little-endian PLY reader/writer for triangle meshes (numpy only).

Used by the worker (which must not import open3d) and by the evaluator, so that
meshes round-trip bit-exactly between the two virtual environments.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

_FACE_DTYPE = np.dtype([("n", "u1"), ("idx", "<i4", (3,))])


def write_ply(path: str | Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Write vertices (V,3) as float32 and faces (F,3) as int32 to a binary PLY."""
    v = np.ascontiguousarray(vertices, dtype="<f4").reshape(-1, 3)
    f = np.asarray(faces, dtype="<i4").reshape(-1, 3)
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    rec = np.empty(len(f), dtype=_FACE_DTYPE)
    rec["n"] = 3
    rec["idx"] = f
    with open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(v.tobytes())
        fh.write(rec.tobytes())


def read_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a PLY written by :func:`write_ply`; returns (float32 (V,3), int64 (F,3))."""
    with open(path, "rb") as fh:
        data = fh.read()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in header:
        raise ValueError(f"{path}: only binary little-endian PLY from plyio is supported")
    counts = {ln.split()[1]: int(ln.split()[2]) for ln in header if ln.startswith("element")}
    nv, nf = counts.get("vertex", 0), counts.get("face", 0)
    v = np.frombuffer(data, dtype="<f4", count=3 * nv, offset=end).reshape(nv, 3)
    rec = np.frombuffer(data, dtype=_FACE_DTYPE, count=nf, offset=end + 12 * nv)
    if nf and not np.all(rec["n"] == 3):
        raise ValueError(f"{path}: non-triangle faces")
    return v.copy(), rec["idx"].astype(np.int64)
