"""Reading a file for an importer (the Blender add-on's *Import > Point Cloud*): subsample, offset, float32.

Standard library and numpy only (the client imports this module inside Blender
to check the options before anything is sent; the reading itself, which needs
the format packages, runs in the engine: :func:`read_for_import`).

A georeferenced cloud (coordinates about 1e6) cannot go to Blender as float32
as it is: float32 keeps steps of 0.0625 there.  The engine subtracts an
``offset`` in float64 (:func:`import_offset`) and sends float32 coordinates
relative to it; the importer puts the offset on the object's location.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .cloud import PointCloud
from .errors import Cancelled
from .options import OptionError

# The suffixes engine.formats.READERS reads (tests/engine/test_import.py keeps the two equal); here because
# the add-on's file browser filters by them and cannot import engine.formats (it needs plyfile).
# Below this coordinate size float32 keeps about 6e-5 units: no offset, the file's coordinates as they are.
LOCAL_LIMIT = 1000.0


def check_import_options(given: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a ``read`` request, checked: ``every`` (keep every k-th point, an integer >= 1) or
    ``voxel_size`` (keep one point per cube of that edge, > 0, file units), not both; OptionError otherwise."""
    out: dict[str, Any] = {}
    for name, value in given.items():
        if name == "every":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"Option 'every' must be a whole number of at least 1; got {value!r}.",
                                  "Use 1 to keep every point, 10 to keep every tenth.")
            out[name] = value
        elif name == "voxel_size":
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or value <= 0:
                raise OptionError(f"Option 'voxel_size' must be a positive number (file units); got {value!r}.",
                                  "Give the edge of the cells to keep one point of, e.g. 0.01, or leave it unset.")
            out[name] = float(value)
        elif name == "splat_min_opacity":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise OptionError(f"Option 'splat_min_opacity' must be a number from 0 to 1; got {value!r}.",
                                  "Splats less opaque than this are left out; 0 keeps them all.")
            out[name] = float(value)
        else:
            raise OptionError(f"Unknown import option {name!r}.",
                              "Accepted options: every, voxel_size, splat_min_opacity.")
    if out.get("every", 1) > 1 and "voxel_size" in out:
        raise OptionError("Options 'every' and 'voxel_size' both subsample: give one of them.",
                          "Keep every k-th point (every) or one point per cell (voxel_size), not both.")
    return out


def import_offset(points: np.ndarray) -> np.ndarray:
    """The float64 offset to subtract before the cast to float32: the bounding-box centre rounded to whole
    units, or zero for a cloud within ``LOCAL_LIMIT`` of the origin (its coordinates stay as in the file)."""
    finite = points[np.isfinite(points).all(axis=1)]
    if not len(finite) or float(np.abs(finite).max()) < LOCAL_LIMIT:
        return np.zeros(3)
    return np.round(0.5 * (finite.min(axis=0) + finite.max(axis=0)))


def voxel_rows(points: np.ndarray, size: float) -> np.ndarray:
    """Sorted rows of ``points`` (N, 3) float64 that keep one point (the first in file order) per cube of
    edge ``size``; rows with NaN/Inf coordinates are left out."""
    finite = np.flatnonzero(np.isfinite(points).all(axis=1))
    cells = np.floor((points[finite] - points[finite].min(axis=0)) / size).astype(np.int64)
    _, first = np.unique(cells, axis=0, return_index=True)
    return finite[np.sort(first)]


def subsample(cloud: PointCloud, every: int = 1, voxel_size: float | None = None) -> PointCloud:
    """``cloud`` with every ``every``-th row, or one row per voxel of ``voxel_size``; all arrays stay aligned."""
    if voxel_size is not None:
        rows: np.ndarray | slice = voxel_rows(cloud.points, voxel_size)
    elif every > 1:
        rows = slice(None, None, every)
    else:
        return cloud

    def take(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[rows]

    return replace(cloud, points=cloud.points[rows], normals=take(cloud.normals), colors=take(cloud.colors),
                   sensors=take(cloud.sensors))


def read_for_import(path: str | Path, options: Mapping[str, Any], progress: Callable[[str, float, str], None],
                    cancel: Callable[[], bool]) -> tuple[PointCloud, np.ndarray, int]:
    """The file's cloud, subsampled, with its offset and its row count before subsampling.

    ``progress`` hears each stage; ``cancel`` is checked between them (a reader cannot be stopped midway).
    Unoriented normals (splat axes) are given their side first, so every normal sent is oriented.
    """
    from .formats import read_cloud  # the format packages: engine side only

    opts = check_import_options(options)
    progress("read", 0.0, f"reading {Path(path).name}")
    cloud = read_cloud(path, **{k: v for k, v in opts.items() if k == "splat_min_opacity"})
    if cancel():
        raise Cancelled("Import cancelled.", "Nothing was changed.")
    total = len(cloud.points)
    progress("subsample", 0.0, f"{total:,} points")
    cloud = subsample(cloud, opts.get("every", 1), opts.get("voxel_size"))
    if cancel():
        raise Cancelled("Import cancelled.", "Nothing was changed.")
    if cloud.normals is not None and not cloud.normals_oriented:
        # 3DGS splat axes are lines: a ``normal`` attribute must have a side, given here as the CLI gives it
        # (towards the sensors when the file has them; rows where the side is doubtful become zero, and
        # Reconstruct drops those).
        from .solver.normals import orient_axes

        progress("orient", 0.0, f"orienting {len(cloud.points):,} splat axes")
        normals, _ = orient_axes(cloud.normals, cloud.points, None, cloud.sensors)
        cloud = replace(cloud, normals=normals, normals_oriented=True)
        if cancel():
            raise Cancelled("Import cancelled.", "Nothing was changed.")
    return cloud, import_offset(cloud.points), total
