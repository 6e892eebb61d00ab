"""E57 (ASTM E2807, terrestrial laser scanners' exchange format) through ``pye57``.

A file holds several scans, each in its scanner's own frame with a pose
(rotation and translation) into the file's frame.  Every scan is read,
transformed by its pose, and concatenated; the pose's translation is where
that scan's scanner stood, kept as the sensor of its points (the CLI orients
normals towards it).  Colours are kept; intensity is read by pye57 but not
kept (nothing downstream uses it); E57's normals extension is not among the
fields pye57 reads, so normals are estimated.  pye57 is optional
(requirements/formats.txt): a compiled libE57Format of about 33 MB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cloud import PointCloud, normalize_colors
from ..errors import InputError
from ..optional import import_optional

MAGIC = b"ASTM-E57"  # the first bytes of every E57 file
COLOR_FIELDS = ("colorRed", "colorGreen", "colorBlue")


def read_e57(path: str | Path) -> PointCloud:
    """Every scan's points in the file's frame, with colours when every scan has them, and sensors."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise InputError(f"{path}: not an E57 file (it does not start with '{MAGIC.decode()}').",
                             "Export the scans as E57 again, or give the file its format's extension.")
    pye57 = import_optional("pye57", "Reading E57 files", "pye57")
    try:
        e57 = pye57.E57(str(path), mode="r")
    except Exception as exc:  # libE57Format's own errors: a damaged or truncated file
        raise InputError(f"{path}: not a readable E57 file ({_reason(exc)}).",
                         "The file may be truncated or damaged: export the scans as E57 again.") from None
    try:
        count = e57.scan_count
        if count == 0:
            raise InputError(f"{path}: the E57 file holds no scans.", "Export at least one scan.")
        points, colors, sensors = [], [], []
        for i in range(count):
            try:
                scan = e57.read_scan(i, transform=True, colors=True, intensity=True, ignore_missing_fields=True)
                header = e57.get_header(i)
            except InputError:
                raise
            except Exception as exc:
                raise InputError(f"{path}: scan {i} of {count} is not readable ({_reason(exc)}).",
                                 "The file may be truncated or damaged: export the scans as E57 again.") from None
            xyz = np.stack([scan["cartesianX"], scan["cartesianY"], scan["cartesianZ"]], axis=1)
            points.append(xyz.astype(np.float64))
            sensors.append(np.broadcast_to(np.asarray(header.translation, dtype=np.float64), xyz.shape))
            colors.append(np.stack([scan[c] for c in COLOR_FIELDS], axis=1) if all(c in scan for c in COLOR_FIELDS)
                          else None)
    finally:
        e57.close()
    rgb = None if any(c is None for c in colors) else normalize_colors(np.concatenate([c for c in colors
                                                                                        if c is not None]))
    return PointCloud(np.concatenate(points), None, rgb, np.concatenate(sensors))


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
