"""Step 2: choose the finest voxel size from point density and measured noise.

Works in the canonical frame (diagonal 1).  ``detail_level`` d in [0, 1] sets
how many points the finest voxel should hold: 20**(1 - d), so about 1 at d = 1
and about 20 at d = 0.  ``"auto"`` uses ``AUTO_DETAIL`` for clean scans and
coarsens until the voxel is ``NOISE_FACTOR`` times the measured noise (the RMS
residual of local quadric fits), so clean and noisy scans share one default
where Poisson users would have to pick a depth per scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .knn import PointTree

AUTO_DETAIL = 0.75
NOISE_FACTOR = 2.0
PROBES = 3000
NEIGHBOURS = 48
SUBSAMPLE = 30_000  # measure on this many points, so the estimate does not depend on N


@dataclass
class Resolution:
    """The finest voxel size (canonical units) and the measurements behind it."""

    voxel_size: float
    density: float  # points per unit area, canonical units
    noise: float  # RMS of local fit residuals, canonical units
    detail_level: float | None


def points_per_voxel(detail: float) -> float:
    return float(20.0 ** (1.0 - detail))


def measure(points: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Median surface density (points per unit area) and noise (RMS of quadric-fit residuals).

    Both come from a random subsample of ``SUBSAMPLE`` points, so the
    neighbourhoods have the same size whatever N is (with all points, k
    neighbours span a radius that shrinks as N grows, and at radii near the
    noise the quadric fits the noise itself).  The density is scaled back to N.
    """
    rng = np.random.default_rng(seed)
    n = points.shape[0]
    sub = points[rng.choice(n, size=SUBSAMPLE, replace=False)] if n > SUBSAMPLE else points
    tree = PointTree(sub)
    k = min(NEIGHBOURS, sub.shape[0])
    probe = rng.choice(sub.shape[0], size=min(PROBES, sub.shape[0]), replace=False)
    dist, idx = tree.query(sub[probe], k)
    r = dist[:, -1]
    density = float(np.median((k - 1) / (np.pi * np.maximum(r, 1e-12) ** 2))) * n / sub.shape[0]
    nb = torch.from_numpy(sub[idx].astype(np.float64))  # (M, k, 3)
    nb = nb - nb.mean(dim=1, keepdim=True)
    _, vecs = torch.linalg.eigh(nb.transpose(1, 2) @ nb)
    local = nb @ vecs  # column 0 is the normal direction (smallest eigenvalue)
    x, y, z = local[..., 2], local[..., 1], local[..., 0]
    design = torch.stack((x * x, x * y, y * y, x, y, torch.ones_like(x)), dim=-1)
    sol = torch.linalg.lstsq(design, z[..., None]).solution
    resid = (design @ sol)[..., 0] - z
    dof = max(k - 6, 1)
    rms = torch.sqrt((resid**2).sum(dim=1) / dof)
    return density, float(rms.median())


def choose_voxel_size(points: np.ndarray, detail_level: float | str = "auto",
                      voxel_size: float | None = None, diagonal: float = 1.0) -> Resolution:
    """The finest voxel size in canonical units; ``voxel_size`` is in the caller's units (``diagonal`` too).

    Both options come checked by :mod:`engine.options`.
    """
    density, noise = measure(points)
    if voxel_size is not None:
        return Resolution(float(voxel_size) / diagonal, density, noise, None)
    if detail_level == "auto":
        h = max(np.sqrt(points_per_voxel(AUTO_DETAIL) / density), NOISE_FACTOR * noise)
        return Resolution(float(h), density, noise, None)
    d = float(detail_level)
    return Resolution(float(np.sqrt(points_per_voxel(d) / density)), density, noise, d)
