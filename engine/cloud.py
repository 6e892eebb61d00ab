"""Step 1: validate, clean and normalise the input cloud.

The caller's coordinates may carry georeferenced offsets of 1e6 and any unit,
so everything is recentred in float64 on the bounding-box centre and scaled by
the bounding-box diagonal before it becomes float32: the solver always sees a
cloud of diagonal 1 centred at the origin (the canonical frame), and the
cloud's :class:`engine.frames.Frame` maps results back to the caller's frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .errors import DegenerateInputError, InputError, ShapeMismatchError, TooFewPointsError
from .frames import Frame
from .vectors import row_norms

MIN_POINTS = 10
FLAT_RATIO = 1e-6  # thickness / extent below which a cloud counts as flat (or straight)


@dataclass
class Cloud:
    """A cleaned cloud in the canonical frame (centred, diagonal 1).

    points (N, 3) float32 canonical; normals (N, 3) float32 unit, or None when
    they must be estimated; colors (N, 4) float32 RGBA in [0, 1] or None; kept
    (N,) int64 rows of the caller's arrays; frame maps canonical <-> caller
    coordinates (its voxel size is set later, by the resolution stage).  ``normals_source`` says
    where normals come from: "given", "missing" (none passed) or "all zero"
    (passed, but not one row was usable: some exporters write zeros for
    "none"), the last two to be estimated.
    """

    points: np.ndarray
    normals: np.ndarray | None
    colors: np.ndarray | None
    kept: np.ndarray
    frame: Frame
    dropped: int
    normals_source: str = "given"

    def subset(self, rows: np.ndarray, normals: np.ndarray | None = None) -> Cloud:
        """The cloud restricted to ``rows`` (indices or mask), with new normals if given (for those rows)."""
        return replace(self, points=self.points[rows], kept=self.kept[rows],
                       colors=None if self.colors is None else self.colors[rows],
                       normals=normals if normals is not None else
                       (None if self.normals is None else self.normals[rows]))


@dataclass
class PointCloud:
    """A cloud as a file holds it, before any cleaning: what every reader returns.

    points (N, 3) float64 in the file's coordinates (float64 keeps georeferenced
    offsets exact); normals (N, 3) float32 as stored (any length) or None; colors
    (N, 4) float32 RGBA in [0, 1] (see :func:`normalize_colors`) or None.

    ``sensors`` (N, 3) float64: where the scanner stood for each point, in the
    file's coordinates, when the file records it (per-point ``sx sy sz``
    columns, a PCD VIEWPOINT, E57 scan poses); the CLI orients estimated
    normals towards it.  ``normals_oriented`` False: the normals are directions
    up to sign (3D Gaussian splats' shortest axes), to be given a side before
    use.  ``dropped``: rows the reader left out, by reason (e.g. splats too
    transparent to be surface), for the run's report.  (Intensity, which E57
    and LAS carry, has no place here: nothing downstream uses it.)
    """

    points: np.ndarray
    normals: np.ndarray | None = None
    colors: np.ndarray | None = None
    sensors: np.ndarray | None = None
    normals_oriented: bool = True
    dropped: dict[str, int] = field(default_factory=dict)


def _as_rows(name: str, a: object, width: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2 or arr.shape[1] not in width:
        want = " or ".join(f"(N, {w})" for w in width)
        raise ShapeMismatchError(f"{name} must be an array of shape {want}; got shape {arr.shape}.",
                                 f"Pass {name} as one row per point.")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{name} must be numeric; got dtype {arr.dtype}.", "Convert it to float32 or float64.")
    return arr


def normalize_colors(colors: np.ndarray) -> np.ndarray:
    """RGB or RGBA, as any file or caller stores it, to float32 RGBA in [0, 1].

    uint8 is 0-255 by type.  Other types go by their range, because files disagree
    (float PLY and text colours come as 0-1 or 0-255; 16-bit LAS colours often hold
    8-bit values): a maximum of at most 1 means 0-1, at most 255 means 0-255, and
    anything larger 0-65535.
    """
    c = np.nan_to_num(np.asarray(colors, dtype=np.float64))
    top = 255.0 if colors.dtype == np.uint8 else float(c.max(initial=0.0))
    full = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0  # the full-intensity value
    c = (c / full).astype(np.float32)
    if c.shape[1] == 3:
        c = np.concatenate([c, np.ones((c.shape[0], 1), np.float32)], axis=1)
    return np.clip(c, 0.0, 1.0)


def float32_rounding(points: np.ndarray, extent: float) -> str | None:
    """Why a cloud (N, 3) float64 that looks flat or straight may only seem so, or None.

    Coordinates stored as float32 far from the origin keep only a coarse grid
    (steps of 0.0625 near 1e6): a thin cloud there collapses onto a line or a
    plane.  That is the cause when every coordinate is a float32 value and the
    grid's step is too coarse to show a thickness the flatness test would accept.
    """
    largest = float(np.abs(points).max())
    step = float(np.spacing(np.float32(largest)))
    if step <= FLAT_RATIO * extent or not np.array_equal(points, points.astype(np.float32)):
        return None
    return (f"but only because its coordinates are float32 numbers as large as {largest:.4g}, where float32 "
            f"precision can only tell positions {step:.3g} apart: its detail was rounded away when it was stored.")


def prepare_cloud(points: object, normals: object | None, colors: object | None = None) -> Cloud:
    """Validate and normalise; raises a typed :class:`InputError` naming the problem and the fix.

    ``normals`` None, or given with no usable row (all zero or NaN), leaves
    ``Cloud.normals`` None for estimation.  Otherwise rows with NaN/Inf
    coordinates or zero-length normals are dropped and counted.
    """
    p = _as_rows("points", points, (3,))
    n_in = p.shape[0]
    if n_in == 0:
        raise TooFewPointsError("The point cloud is empty.", "Select or load an object that has points.")
    n64 = None
    if normals is not None:
        n = _as_rows("normals", normals, (3,))
        if n.shape[0] != n_in:
            raise ShapeMismatchError(f"normals has {n.shape[0]} rows but points has {n_in}.",
                                     "Give exactly one normal per point.")
        n64 = n.astype(np.float64)
    c = None
    if colors is not None:
        c = _as_rows("colors", colors, (3, 4))
        if c.shape[0] != n_in:
            raise ShapeMismatchError(f"colors has {c.shape[0]} rows but points has {n_in}.",
                                     "Give exactly one colour per point, or none.")

    p64 = p.astype(np.float64)
    good = np.isfinite(p64).all(axis=1)
    source = "missing" if n64 is None else "given"
    if n64 is not None:
        length = row_norms(n64)
        usable = np.isfinite(n64).all(axis=1) & (length > 1e-12)
        if good.any() and not (good & usable).any():
            n64, source = None, "all zero"
        else:
            good &= usable
    kept = np.flatnonzero(good)
    if kept.size < MIN_POINTS:
        bad = n_in - kept.size
        detail = f" ({bad} of them have NaN/Inf coordinates or zero-length normals)" if bad else ""
        raise TooFewPointsError(
            f"The cloud has {kept.size} usable points{detail}; at least {MIN_POINTS} are needed.",
            "Check the input for NaN/Inf values and zero normals, or use a denser cloud.")
    p64 = p64[kept]
    frame = Frame.around(p64)
    if not frame.diagonal > 0.0:
        raise DegenerateInputError("All points are at the same position.", "Give a cloud that samples a surface.")
    canon = frame.to_canonical(p64)
    centred = canon - canon.mean(axis=0)
    sv = np.linalg.svd(centred[:: max(1, centred.shape[0] // 200_000)], compute_uv=False)
    sv = sv / sv[0]
    if sv[1] < FLAT_RATIO or sv[2] < FLAT_RATIO:
        shape = "one straight line" if sv[1] < FLAT_RATIO else "one plane"
        rounded = float32_rounding(p64, frame.diagonal)
        if rounded is not None:
            raise DegenerateInputError(f"All points lie on {shape}, {rounded}",
                                       "Export the cloud with double-precision (float64) coordinates, or subtract "
                                       "an offset (such as its first point) before storing it as float32.")
        if sv[1] < FLAT_RATIO:
            raise DegenerateInputError("All points lie on one straight line.",
                                       "A line bounds no surface: give a cloud that samples a surface.")
        raise DegenerateInputError(
            "All points lie in one plane, so there is no volume to reconstruct.",
            "Give a cloud that samples a curved or closed surface; for a flat patch, use a plane mesh.")
    unit = None
    if n64 is not None:
        nk = n64[kept]
        unit = (nk / row_norms(nk, keepdims=True)).astype(np.float32)
    return Cloud(points=canon.astype(np.float32), normals=unit,
                 colors=None if c is None else normalize_colors(c[kept]),
                 kept=kept, frame=frame, dropped=int(n_in - kept.size), normals_source=source)
