"""LAS and LAZ (ASPRS LiDAR) through ``laspy``, with ``lazrs`` for LAZ; both optional.

Positions come scaled and offset to float64 as laspy gives them (LiDAR
coordinates carry offsets of 1e5-1e6).  LAS has no standard normal fields:
CloudCompare and PDAL store them as extra dimensions (``NormalX`` / ``nx`` ...),
which are read under any spelling of :mod:`engine.formats.fields`.  16-bit colours
holding 8-bit values (common) are recognised by their range.
"""

from __future__ import annotations

from pathlib import Path

from ..cloud import PointCloud
from ..errors import InputError, MissingPackageError
from ..optional import import_optional
from .fields import cloud_from_fields

LAZ_HINT = "Install a LAZ backend into the engine's Python: pip install lazrs (pinned in requirements/formats.txt)."


def read_las(path: str | Path) -> PointCloud:
    """Positions, and normals (extra dimensions) and colours when the file has them."""
    laspy = import_optional("laspy", "Reading LAS/LAZ files", "laspy lazrs")
    if Path(path).suffix.lower() == ".laz" and not laspy.LazBackend.detect_available():
        raise MissingPackageError(f"{path}: reading LAZ (compressed LAS) needs the optional package lazrs.", LAZ_HINT)
    try:
        las = laspy.read(str(path))
    except Exception as exc:  # laspy raises its own and numpy's errors for malformed files
        if "LazBackend" in str(exc):
            raise MissingPackageError(f"{path}: the file is LAZ-compressed; reading it needs lazrs.",
                                      LAZ_HINT) from None
        raise InputError(f"{path}: not a readable LAS/LAZ file ({exc}).", "Export the cloud as LAS again.") from None
    names = list(las.point_format.dimension_names)
    columns = {"x": las.x, "y": las.y, "z": las.z}  # scaled to float64; X, Y, Z are the raw integers
    names = ["x", "y", "z"] + [n for n in names if n not in ("X", "Y", "Z")]
    return cloud_from_fields(names, lambda name: columns[name] if name in columns else las[name], str(path))
