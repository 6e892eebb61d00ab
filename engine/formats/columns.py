"""Clouds stored as columns: XYZ / PTS / TXT / CSV text and NPY / NPZ arrays (numpy only).

Column convention, by the number of columns (text files and plain (N, C) arrays):

====  ==========================  =========================================
 C    columns                     written by
====  ==========================  =========================================
 3    x y z                       every tool
 4    x y z intensity             Leica PTS (intensity is ignored)
 6    x y z nx ny nz              CloudCompare, Open3D (``.xyzn``)
 6    x y z r g b                 when the last three are whole numbers
                                  0-255, some above 1 (normals never are)
 7    x y z intensity r g b       Leica PTS
 9    x y z nx ny nz r g b        CloudCompare
====  ==========================  =========================================

A first line that names the columns (``x y z nx ny nz red green blue``, or
CloudCompare's ``//X,Y,Z,R,G,B,Nx,Ny,Nz``) overrides the convention, in any
order, with the spellings of :mod:`engine.formats.fields`.  PTS files start with a
line holding the point count, which is checked.  Values are separated by
spaces, tabs, commas or semicolons; lines starting with ``#`` are comments.
Colours are 0-255 or 0-1 (see :func:`engine.cloud.normalize_colors`).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from ..cloud import PointCloud, normalize_colors
from ..errors import InputError, ShapeMismatchError
from .fields import cloud_from_fields, field_key

CONVENTION = "3 (x y z), 4 (x y z intensity), 6 (x y z nx ny nz, or x y z r g b), 7 (x y z intensity r g b) " \
             "or 9 (x y z nx ny nz r g b)"
COLUMNS_HINT = f"Give {CONVENTION} columns, or a first line naming the columns (e.g. 'x y z nx ny nz')."
_SPLIT = re.compile(r"[\s,;]+")

# NPZ keys (compared lower-case) for each array, in order of preference.
POINT_KEYS = ("points", "xyz", "positions", "position", "vertices", "coords", "pts")
NORMAL_KEYS = ("normals", "normal", "nrm")
COLOR_KEYS = ("colors", "colours", "color", "colour", "rgb", "rgba")
SENSOR_KEYS = ("sensors", "sensor")  # (N, 3) each point's sensor position


def split_columns(data: np.ndarray, where: str) -> PointCloud:
    """A PointCloud from an (N, C) numeric array laid out by the column convention."""
    c = data.shape[1]
    if c not in (3, 4, 6, 7, 9):
        raise InputError(f"{where}: {c} columns per point; the column convention has no layout for that.",
                         COLUMNS_HINT)
    points = data[:, :3].astype(np.float64)
    if c == 3 or c == 4:
        return PointCloud(points)
    if c == 7:
        return PointCloud(points, colors=normalize_colors(data[:, 4:7]))
    tail = data[:, 3:6]
    whole = bool(np.all(tail == np.round(tail)))
    if c == 6 and whole and tail.min(initial=0) >= 0 and 1 < tail.max(initial=0) <= 255:
        return PointCloud(points, colors=normalize_colors(tail))
    colors = normalize_colors(data[:, 6:9]) if c == 9 else None
    return PointCloud(points, tail.astype(np.float32), colors)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _tokens(line: str) -> list[str]:
    return [t for t in _SPLIT.split(line.strip()) if t]


def _layout(path: Path) -> tuple[int, list[str] | None, int | None, str | None]:
    """Lines before the data, the header's column names, the PTS point count, and the delimiter."""
    skip, names, count = 0, None, None
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                text = line.strip()
                if not text or text.startswith("#"):
                    skip += 1
                    continue
                tokens = _tokens(text.lstrip("/"))
                numeric = all(_is_number(t) for t in tokens)
                if numeric and len(tokens) == 1 and count is None and names is None:
                    count = int(float(tokens[0]))
                elif (text.startswith("//") or not numeric) and names is None:
                    names = tokens
                else:
                    return skip, names, count, "," if "," in text else ";" if ";" in text else None
                skip += 1
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file.",
                         "XYZ, PTS, TXT and CSV clouds are plain text, one point per line.") from None
    raise InputError(f"{path}: the file holds no points.", "Give one point per line: " + COLUMNS_HINT)


def read_text(path: str | Path) -> PointCloud:
    """An XYZ / PTS / TXT / CSV text cloud, laid out as the module docstring says."""
    path = Path(path)
    skip, names, count, delimiter = _layout(path)
    try:
        data = np.loadtxt(path, dtype=np.float64, delimiter=delimiter, skiprows=skip, ndmin=2, comments="#")
    except ValueError as exc:
        reason = str(exc).split(";")[0].rstrip(".")
        raise InputError(f"{path}: not a readable column file ({reason}).",
                         "Every line needs the same number of numeric values. " + COLUMNS_HINT) from None
    if count is not None and count != data.shape[0]:
        raise InputError(f"{path}: the first line says {count} points but the file holds {data.shape[0]}.",
                         "The file may be truncated: export it again.")
    if names is None:
        return split_columns(data, str(path))
    if len(names) != data.shape[1]:
        raise InputError(f"{path}: the header names {len(names)} columns but the rows have {data.shape[1]}.",
                         "Make the header line name every column once.")
    index = {name: i for i, name in enumerate(names)}
    return cloud_from_fields(names, lambda name: data[:, index[name]], str(path))


def _from_array(a: np.ndarray, where: str) -> PointCloud:
    """A plain (N, C) array by the column convention, or a structured array by field names."""
    if a.dtype.names:
        fields = a.dtype.names
        if all(a.dtype[f].shape == () for f in fields):
            return cloud_from_fields(fields, lambda name: a[name], where)
        return _from_named({f: a[f] for f in fields}, where)  # vector fields, as NPZ arrays are
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
        raise ShapeMismatchError(f"{where}: an array of shape {a.shape} and dtype {a.dtype}; expected a numeric "
                                 "(N, 3), (N, 6) or (N, 9) array.", COLUMNS_HINT)
    return split_columns(a, where)


def _pick(arrays: dict[str, np.ndarray], keys: tuple[str, ...]) -> tuple[str, np.ndarray] | None:
    lower = {field_key(k): k for k in arrays}
    for key in keys:
        if key in lower:
            return lower[key], arrays[lower[key]]
    return None


def _rows(name: str, a: np.ndarray, width: tuple[int, ...], n: int | None, where: str) -> np.ndarray:
    if a.ndim != 2 or a.shape[1] not in width or not np.issubdtype(a.dtype, np.number):
        want = " or ".join(f"(N, {w})" for w in width)
        raise ShapeMismatchError(f"{where}: '{name}' has shape {a.shape} and dtype {a.dtype}; expected numeric "
                                 f"{want}.", "Store one row per point.")
    if n is not None and a.shape[0] != n:
        raise ShapeMismatchError(f"{where}: '{name}' has {a.shape[0]} rows but the points have {n}.",
                                 "Store exactly one row per point.")
    return a


def _from_named(arrays: dict[str, np.ndarray], where: str) -> PointCloud:
    """Points, normals and colours from arrays named as NPZ archives name them."""
    found = _pick(arrays, POINT_KEYS)
    if found is None:
        if len(arrays) == 1:
            return _from_array(next(iter(arrays.values())), where)
        raise InputError(f"{where}: no points array (found: {', '.join(arrays) or 'nothing'}).",
                         f"Name the (N, 3) positions one of: {', '.join(POINT_KEYS)}; normals "
                         f"{', '.join(NORMAL_KEYS)}; colours {', '.join(COLOR_KEYS)}.")
    name, p = found
    nrm, col, sns = _pick(arrays, NORMAL_KEYS), _pick(arrays, COLOR_KEYS), _pick(arrays, SENSOR_KEYS)
    if nrm is None and col is None and sns is None and p.ndim == 2 and p.shape[1] != 3:
        return _from_array(p, where)  # one (N, C) array under a points name
    points = _rows(name, p, (3,), None, where)
    n = points.shape[0]
    normals = None if nrm is None else _rows(nrm[0], nrm[1], (3,), n, where).astype(np.float32)
    colors = None if col is None else normalize_colors(_rows(col[0], col[1], (3, 4), n, where))
    sensors = None if sns is None else _rows(sns[0], sns[1], (3,), n, where).astype(np.float64)
    return PointCloud(points.astype(np.float64), normals, colors, sensors)


def _load(path: Path) -> np.ndarray | dict[str, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                return {k: loaded[k] for k in loaded.files}
        return np.asarray(loaded)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable NumPy file ({exc}).",
                         "Save it with numpy.save (.npy) or numpy.savez (.npz), without object arrays.") from None


def read_npy(path: str | Path) -> PointCloud:
    """An (N, 3), (N, 6) or (N, 9) array (the column convention) or a structured array with x, y, z fields."""
    loaded = _load(Path(path))
    return _from_named(loaded, str(path)) if isinstance(loaded, dict) else _from_array(loaded, str(path))


def read_npz(path: str | Path) -> PointCloud:
    """Arrays ``points`` (N, 3), ``normals`` (N, 3), ``colors`` (N, 3|4), ``sensors`` (N, 3), or the aliases above."""
    return read_npy(path)
