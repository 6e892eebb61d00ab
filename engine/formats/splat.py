"""3D Gaussian Splatting PLY: splats as points with colours and (unoriented) normals.

Every splatting tool since 2023 writes the vertex properties ``x y z``,
``f_dc_0..2`` (colour as the degree-0 spherical-harmonic coefficient),
``opacity`` (a logit), ``scale_0..2`` (log scales) and ``rot_0..3`` (a
quaternion w, x, y, z, not necessarily of unit length, as the reference
implementation stores it).  The PLY reader hands such files here.

A splat on a surface is a flat ellipsoid: the rotation's axis of the smallest
scale is the surface normal, up to sign, so the normals come back with
``normals_oriented`` False and the CLI gives them their side.  Colour is
``0.5 + SH_C0 * f_dc`` clipped to [0, 1].  Dropped, and counted in
``PointCloud.dropped``: splats more transparent than ``min_opacity`` (the
floaters of trained scenes) and degenerate ones (a non-finite value, a zero
quaternion, or no distinct shortest axis: the smallest scale not at least
``FLAT_FACTOR`` times smaller than the middle one, a ball or a needle).
"""

from __future__ import annotations

import numpy as np

from ..cloud import PointCloud
from ..errors import InputError
from ..vectors import row_norms
from .fields import field_key

SH_C0 = 0.28209479177387814  # the degree-0 spherical harmonic, 1 / (2 sqrt(pi))
# A splat at 10% opacity adds under a tenth of its colour where it lies: surfaces are made of splats
# training drives towards opaque, while the floaters that survive training's own pruning (at 0.5%)
# are mostly faint.  Lower it (--splat-min-opacity) for scenes of glass or smoke.
MIN_OPACITY = 0.1
FLAT_FACTOR = 1.25  # the shortest axis must be this much shorter than the next one to be a normal
SCALES = ("scale_0", "scale_1", "scale_2")
ROTATION = ("rot_0", "rot_1", "rot_2", "rot_3")
DC = ("f_dc_0", "f_dc_1", "f_dc_2")
REQUIRED = ("x", "y", "z", *DC, "opacity", *SCALES, *ROTATION)


def is_splat(names: tuple[str, ...] | list[str]) -> bool:
    """Whether a PLY vertex element's properties are a Gaussian splat's (its DC colour, opacity, scales, rotation).

    A file with some of them but not all is a damaged splat file, which :func:`read_splats` reports.
    """
    keys = {field_key(n) for n in names}
    return field_key("f_dc_0") in keys and "opacity" in keys and field_key("scale_0") in keys


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warnings for large |x|


def rotation_matrices(q: np.ndarray) -> np.ndarray:
    """Unit quaternions (N, 4) as (w, x, y, z) -> rotation matrices (N, 3, 3), columns the splat's axes."""
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=1),
    ], axis=1)


def read_splats(vertex: np.ndarray, where: str, min_opacity: float = MIN_OPACITY) -> PointCloud:
    """Splat centres (N, 3) with colours from the DC term and unit normals along each splat's shortest axis."""
    by_key = {field_key(n): n for n in vertex.dtype.names or ()}
    missing = [n for n in REQUIRED if field_key(n) not in by_key]
    if missing:
        raise InputError(f"{where}: a Gaussian-splat PLY without the fields {', '.join(missing)}.",
                         "A 3DGS PLY needs x y z, f_dc_0..2, opacity, scale_0..2 and rot_0..3: export the "
                         "splats again.")

    def cols(names: tuple[str, ...]) -> np.ndarray:
        return np.stack([np.asarray(vertex[by_key[field_key(n)]], dtype=np.float64) for n in names], axis=1)

    points, dc, scales, quat = cols(("x", "y", "z")), cols(DC), cols(SCALES), cols(ROTATION)
    opacity = sigmoid(cols(("opacity",))[:, 0])
    length = row_norms(quat)
    finite = (np.isfinite(points).all(axis=1) & np.isfinite(dc).all(axis=1) & np.isfinite(scales).all(axis=1)
              & np.isfinite(quat).all(axis=1) & np.isfinite(opacity) & (length > 1e-12))
    ordered = np.sort(np.where(finite[:, None], scales, 0.0), axis=1)
    flat = ordered[:, 1] - ordered[:, 0] >= np.log(FLAT_FACTOR)  # log scales: a ratio is a difference
    faint = finite & (opacity < min_opacity)
    degenerate = ~finite | (~faint & ~flat)
    keep = ~faint & ~degenerate
    q = quat[keep] / length[keep, None]
    axes = rotation_matrices(q)
    shortest = np.argmin(scales[keep], axis=1)
    normals = axes[np.arange(q.shape[0]), :, shortest].astype(np.float32)
    colors = np.clip(0.5 + SH_C0 * dc[keep], 0.0, 1.0)
    rgba = np.concatenate([colors, np.ones((colors.shape[0], 1))], axis=1).astype(np.float32)
    return PointCloud(points[keep], normals, rgba, normals_oriented=False,
                      dropped={"faint_splats": int(faint.sum()), "degenerate_splats": int(degenerate.sum())})
