"""PCD (the Point Cloud Library's format) through ``pypcd4``: ASCII, binary and binary_compressed.

pypcd4 is optional (requirements/formats.txt): it brings pydantic and an LZF
extension, which only PCD files need.  Fields follow PCL's names: ``x y z``,
``normal_x normal_y normal_z``, and colour packed into one ``rgb`` (float32
bits, 0x00RRGGBB) or ``rgba`` (uint32, 0xAARRGGBB) field, or as separate
``r g b`` fields.  A VIEWPOINT other than PCL's default is the sensor position of
every point (its translation; the points are already in the file's frame).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cloud import PointCloud, normalize_colors
from ..errors import InputError
from ..optional import import_optional
from .fields import cloud_from_fields

# PCL writes this VIEWPOINT (origin, identity rotation) for every cloud, with a sensor or without: it says
# nothing, so only another viewpoint counts as the sensor (a camera at the origin: give --sensor 0 0 0).
DEFAULT_VIEWPOINT = (0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)


def unpack_rgb(packed: np.ndarray, alpha: bool, text: bool) -> np.ndarray:
    """PCL's packed colour (N,) float32 or uint32 -> (N, 3|4) uint8 RGB(A).

    In binary files a float ``rgb`` holds the colour's bits.  In ASCII files PCL
    prints the packed colour as an integer, so whole numbers there are the value.
    """
    if packed.dtype == np.float32 and not (text and np.all(packed == np.round(packed))):
        bits = np.ascontiguousarray(packed).view(np.uint32)
    else:
        bits = packed.astype(np.uint32)
    shifts = [16, 8, 0] + ([24] if alpha else [])
    return np.stack([(bits >> s) & 0xFF for s in shifts], axis=1).astype(np.uint8)


def read_pcd(path: str | Path) -> PointCloud:
    """Positions, and normals and colours (RGBA in [0, 1]) when the file has them."""
    pypcd4 = import_optional("pypcd4", "Reading PCD files", "pypcd4")
    try:
        pc = pypcd4.PointCloud.from_path(str(path))
    except Exception as exc:  # pydantic, lzf, struct and numpy errors all mean a malformed file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable PCD file ({reason}).", "Export the cloud as PCD again.") from None
    data = np.atleast_1d(pc.pc_data)  # numpy reads a one-point ASCII file as a 0-d array
    if len(data) != pc.points:
        raise InputError(f"{path}: the header says {pc.points} points but the file holds {len(data)}.",
                         "The file may be truncated: export it again.")
    names = list(data.dtype.names or ())
    cloud = cloud_from_fields(names, lambda name: data[name], str(path))
    packed = next((n for n in names if n.lower() in ("rgb", "rgba")), None)
    if cloud.colors is None and packed is not None:
        text = pc.metadata.data == pypcd4.Encoding.ASCII
        cloud.colors = normalize_colors(unpack_rgb(data[packed], packed.lower() == "rgba", text))
    viewpoint = tuple(float(v) for v in pc.metadata.viewpoint)
    if viewpoint != DEFAULT_VIEWPOINT:
        cloud.sensors = np.broadcast_to(np.array(viewpoint[:3]), cloud.points.shape)
    return cloud
