"""Which named fields of a file hold positions, normals, colours and sensor positions.

PLY properties, PCD fields, LAS dimensions, text-file header lines and
structured NPY arrays all name their columns, each tool in its own spelling
(``nx``, ``normal_x``, ``NormalX``; ``red``, ``r``, ``diffuse_red``).  Names are
compared without case or punctuation, so one table serves every format.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..cloud import PointCloud, normalize_colors
from ..errors import InputError

# Each group lists one spelling of a role's components, in order; the first group found wins.
POINT_GROUPS = (("x", "y", "z"),)
NORMAL_GROUPS = (("nx", "ny", "nz"), ("normalx", "normaly", "normalz"))
COLOR_GROUPS = (("red", "green", "blue", "alpha"), ("r", "g", "b", "a"),
                ("diffusered", "diffusegreen", "diffuseblue", "diffusealpha"))
SENSOR_GROUPS = (("sx", "sy", "sz"),)  # each point's sensor position (bench/scanner.py writes these)


def field_key(name: str) -> str:
    """``Normal_X``, ``//X`` and ``nX`` -> ``normalx``, ``x``, ``nx``."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def find_group(names: Sequence[str], groups: Sequence[tuple[str, ...]]) -> list[str] | None:
    """The file's own names for the first group whose first three components are all present.

    A fourth component (alpha) is included when present.
    """
    by_key = {field_key(n): n for n in names}
    for group in groups:
        if all(k in by_key for k in group[:3]):
            return [by_key[k] for k in group if k in by_key]
    return None


def cloud_from_fields(names: Sequence[str], column: Callable[[str], np.ndarray], where: str) -> PointCloud:
    """A PointCloud from named columns: ``column(name)`` returns that field as an (N,) array."""
    xyz = find_group(names, POINT_GROUPS)
    if xyz is None:
        shown = ", ".join(names) if names else "none"
        raise InputError(f"{where}: no x, y, z fields (found: {shown}).",
                         "Name the position fields x, y and z.")
    points = np.stack([column(n) for n in xyz], axis=1).astype(np.float64)
    nrm = find_group(names, NORMAL_GROUPS)
    normals = None if nrm is None else np.stack([column(n) for n in nrm], axis=1).astype(np.float32)
    rgb = find_group(names, COLOR_GROUPS)
    colors = None if rgb is None else normalize_colors(np.stack([column(n) for n in rgb], axis=1))
    sns = find_group(names, SENSOR_GROUPS)
    sensors = None if sns is None else np.stack([column(n) for n in sns], axis=1).astype(np.float64)
    return PointCloud(points, normals, colors, sensors)
