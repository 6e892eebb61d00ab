"""Step 2: choose the finest voxel size from point density and measured noise.

Works in the canonical frame (diagonal 1).  ``detail_level`` d in [0, 1] sets
how many points the finest voxel should hold: 20**(1 - d), so about 1 at d = 1
and about 20 at d = 0.  ``"auto"`` uses ``AUTO_DETAIL`` for clean scans and
coarsens until the voxel is ``NOISE_FACTOR`` times the measured noise (the RMS
residual of local quadric fits), so clean and noisy scans share one default
where Poisson users would have to pick a depth per scan.  A scan taken from
several fixed sensors (views) is measured by the spacing of one view, not of
all views stacked (:func:`view_overlap`).  Before choosing, it
checks that the points lie on a surface at all (:func:`surface_variation`): a
cloud that fills a volume, such as a scan that is all stray points, gets
"no surface found" instead of a mesh of blobs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import NoSurfaceError
from .knn import PointTree

AUTO_DETAIL = 0.75
NOISE_FACTOR = 2.0
PROBES = 3000
NEIGHBOURS = 48
SUBSAMPLE = 30_000  # measure on this many points, so the estimate does not depend on N
# Surface or volume: the median local surface variation (smallest eigenvalue over their sum, NEIGHBOURS
# neighbours) at the neighbourhood scales of these subsample sizes (each ~1.7x the radius of the one before).
# Measured (bench inputs, the real scans of tests/data/real, 2026-12-02), smallest median over the scales:
# clean bunny 0.005, bunny with Gaussian noise 0.5% / 1% / 2% of the diagonal 0.035 / 0.063 / 0.10, simulated
# scans with outliers 0.006-0.014, stereo table 0.001, airborne LiDAR 0.001; uniform points in a box 0.21
# (20k and 200k), a Gaussian ball 0.24.  A volume stays isotropic at every scale; a noisy surface flattens
# once the neighbourhood is wider than its noise.
VARIATION_SCALES = (10_000, 3_000, 1_000)
VOLUME_VARIATION = 0.17
MIN_VARIATION_POINTS = 500  # below this the check has too few neighbourhoods to say
# Views: each view's points carry their own depth noise and their own per-view normals, so stacking views adds
# samples but not resolution.  Measured (bench scans of bunny, torus, sphere, 8 views, about two views over
# each spot; Chamfer-L1 x1e-3 at 1x / 1.5x / 2x the all-views voxel): bunny 0.380 / 0.379 / 0.389, torus
# 0.407 / 0.396 / 0.382, sphere 0.530 / 0.459 / 0.438, the bunny without normals 0.454 / 0.408 / 0.378; 1.5x
# ran about 2x faster.  The bunny scanned without misregistration alike (0.286 / 0.282 / 0.292): it is not the
# views' offsets.  Inputs with exact normals want their voxel (bunny with 0.25% noise: 0.170 / 0.182 / 0.226).
MAX_OVERLAP = 8.0
# Noise is the median residual of the neighbourhoods a quadric describes.  One whose residual is over UNFIT times the
# lower quartile's straddles something a quadric cannot follow (a roof edge, a wall's foot, a second surface within
# reach) and measures that, not noise.  On a city of boxes (tests.shapes.city, 2M points, 30k-point subsample:
# neighbourhoods ~5 m wide) half of them do, and the plain median fell on either side of that split by the
# subsample's seed: 0.002-0.10 m over four seeds (0.198 m at 10M points, a 0.40 m voxel where the spacing allows
# 0.11 m); with them set aside 0.00095-0.0010 m.  Bench inputs (four seeds): the bunny with Gaussian noise
# (0.25-1%) unchanged to 1e-4, the simulated scans 0.2-0.3% lower, the clean bunny 6% lower (its density sets
# the voxel, 12x above twice its noise).  At 4x or 3x the lower quartile the scans would lose 1-3%.
UNFIT = 6.0


@dataclass
class Resolution:
    """The finest voxel size (canonical units) and the measurements behind it."""

    voxel_size: float
    density: float  # points per unit area, canonical units
    noise: float  # RMS of local fit residuals, canonical units
    detail_level: float | None
    view_overlap: float = 1.0  # views over a spot (1: one sensor or unknown); the density is per view


def points_per_voxel(detail: float) -> float:
    return float(20.0 ** (1.0 - detail))


def _subsample(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``size`` random points of ``n`` (all of them when there are fewer)."""
    return rng.choice(n, size=size, replace=False) if n > size else np.arange(n)


def _neighbourhoods(sub: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """Distances (M, k), centred float64 neighbourhoods (M, k, 3) and indices into ``sub`` (M, k; column 0 the
    probe itself) of up to PROBES random points of ``sub`` (k = NEIGHBOURS, fewer when ``sub`` is smaller): what
    the noise and the surface test both fit planes to."""
    k = min(NEIGHBOURS, sub.shape[0])
    probe = rng.choice(sub.shape[0], size=min(PROBES, sub.shape[0]), replace=False)
    dist, idx = PointTree(sub).query(sub[probe], k)
    nb = torch.from_numpy(sub[idx].astype(np.float64))
    return dist, nb - nb.mean(dim=1, keepdim=True), np.asarray(idx)


@dataclass
class Probes:
    """The neighbourhoods that :func:`measure` and :func:`view_overlap` both read, found once (:func:`find_probes`)."""

    pick: np.ndarray  # rows of the subsample (SUBSAMPLE random points)
    dist: np.ndarray  # (M, k) distances of each probe's neighbours in the subsample
    centred: torch.Tensor  # (M, k, 3) those neighbourhoods, centred, float64
    idx: np.ndarray  # (M, k) their indices into the subsample, column 0 the probe


def find_probes(points: np.ndarray, seed: int = 0) -> Probes:
    """Up to PROBES neighbourhoods of NEIGHBOURS points in a random subsample of SUBSAMPLE points."""
    rng = np.random.default_rng(seed)
    pick = _subsample(points.shape[0], SUBSAMPLE, rng)
    return Probes(pick, *_neighbourhoods(points[pick], rng))


def view_overlap(points: np.ndarray, views: np.ndarray, seed: int = 0, probes: Probes | None = None) -> float:
    """How many views see a spot, on average: the inverse of the mean share of a point's neighbours that its own
    view took (``views``: each point's view), over the neighbourhoods that :func:`measure` fits."""
    pr = probes if probes is not None else find_probes(points, seed)
    label = views[pr.pick]
    own = float((label[pr.idx[:, 1:]] == label[pr.idx[:, :1]]).mean()) if pr.idx.shape[1] > 1 else 1.0
    return float(np.clip(1.0 / max(own, 1e-12), 1.0, MAX_OVERLAP))


def measure(points: np.ndarray, seed: int = 0, probes: Probes | None = None) -> tuple[float, float]:
    """Median surface density (points per unit area) and noise (RMS of quadric-fit residuals, of the
    neighbourhoods a quadric describes: :data:`UNFIT`).

    Both come from a random subsample of ``SUBSAMPLE`` points, so the
    neighbourhoods have the same size whatever N is (with all points, k
    neighbours span a radius that shrinks as N grows, and at radii near the
    noise the quadric fits the noise itself).  The density is scaled back to N.
    """
    pr = probes if probes is not None else find_probes(points, seed)
    nb = pr.centred
    k = nb.shape[1]
    r = pr.dist[:, -1]
    density = float(np.median((k - 1) / (np.pi * np.maximum(r, 1e-12) ** 2))) * points.shape[0] / pr.pick.shape[0]
    _, vecs = torch.linalg.eigh(nb.transpose(1, 2) @ nb)
    local = nb @ vecs  # column 0 is the normal direction (smallest eigenvalue)
    x, y, z = local[..., 2], local[..., 1], local[..., 0]
    design = torch.stack((x * x, x * y, y * y, x, y, torch.ones_like(x)), dim=-1)
    sol = torch.linalg.lstsq(design, z[..., None]).solution
    resid = (design @ sol)[..., 0] - z
    dof = max(k - 6, 1)
    rms = torch.sqrt((resid**2).sum(dim=1) / dof)
    fits = rms <= UNFIT * torch.quantile(rms, 0.25)  # at least the lower quarter
    return density, float(rms[fits].median())


def surface_variation(points: np.ndarray, seed: int = 0) -> float:
    """Smallest over :data:`VARIATION_SCALES` of the median local surface variation: ~0 on surfaces, ~1/4 in volumes."""
    rng = np.random.default_rng(seed)
    medians = []
    for size in VARIATION_SCALES:
        _, nb, _ = _neighbourhoods(points[_subsample(points.shape[0], size, rng)], rng)
        ev = torch.linalg.eigvalsh(nb.transpose(1, 2) @ nb)
        medians.append(float((ev[:, 0] / ev.sum(dim=1).clamp_min(1e-300)).median()))
    return min(medians)


def check_surface(points: np.ndarray) -> None:
    """Refuse a cloud that fills a volume (all outliers, a volume sample): no surface to reconstruct."""
    if points.shape[0] < MIN_VARIATION_POINTS:
        return
    variation = surface_variation(points)
    if variation > VOLUME_VARIATION:
        raise NoSurfaceError(
            f"No surface found: the points fill a volume instead of lying on a surface (local flatness "
            f"{variation:.2f}, where surfaces measure below 0.1 and uniform noise about 0.2-0.25), as a scan that "
            "is all stray points would.",
            "Check that this is the cloud you meant. If the points do lie on a surface that is very noisy, set "
            "a voxel size (--voxel-size; Blender: Voxel Size) to reconstruct anyway.")


def choose_voxel_size(points: np.ndarray, detail_level: float | str = "auto",
                      voxel_size: float | None = None, diagonal: float = 1.0,
                      views: np.ndarray | None = None) -> Resolution:
    """The finest voxel size in canonical units; ``voxel_size`` is in the caller's units (``diagonal`` too).

    Both options come checked by :mod:`engine.options`.  Without a ``voxel_size``, a cloud that fills a
    volume raises :class:`NoSurfaceError` (:func:`check_surface`).  ``views`` (each point's view, from
    :func:`engine.solver.registration.find_views`) makes "auto" follow the spacing of one view.
    """
    if voxel_size is None:
        check_surface(points)
    probes = find_probes(points)  # one set of neighbourhoods for the density, the noise and the views' overlap
    density, noise = measure(points, probes=probes)
    overlap = view_overlap(points, views, probes=probes) if views is not None else 1.0
    if voxel_size is not None:
        return Resolution(float(voxel_size) / diagonal, density, noise, None, overlap)
    if detail_level == "auto":
        h = max(np.sqrt(points_per_voxel(AUTO_DETAIL) * overlap / density), NOISE_FACTOR * noise)
        return Resolution(float(h), density, noise, None, overlap)
    d = float(detail_level)
    return Resolution(float(np.sqrt(points_per_voxel(d) / density)), density, noise, d, overlap)
