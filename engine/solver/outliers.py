"""Step 1b: drop stray points, judged against the spacing around them, before anything is measured.

Scanners return stray points: uniform outliers far from any surface and flying
pixels at depth edges.  Left in, each becomes a small blob of surface (about
800 pieces on a simulated scan with 1% of each), and they widen the noise and
density measurements.  A point is an outlier when its mean distance to its
``OUTLIER_K`` nearest neighbours exceeds ``OUTLIER_RATIO`` times the median of
the same figure over those neighbours: a test against the *local* spacing, so
sparse but real regions (far ranges, grazing angles) keep their points.  On a
CUDA device the same test runs in torch on the GPU (:func:`outlier_mask_torch`).

Why local and 2x (bench/README.md, "Robust defaults"; 100k-point scans of
bench/scanner.py, share removed): the global rule "mean distance above mean +
2 std" takes 80% of outliers on ``scanner+outliers`` scans but also 4.4% of
the surface on clean scans (its tail is always cut); the local 2x rule takes
59% of outliers, 9-10% of flying pixels and no surface point on the same
scans, none on clean scans and 0.08% of an area-sampled sphere with 0.5%
Gaussian noise.  The outliers it keeps lie close to the surface or to each
other; the pieces they make are removed after meshing
(:mod:`engine.surface.fragments`).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from ..cloud import MIN_POINTS, Cloud
from ..warm import compiled_pays
from .knn import grid_knn, self_knn
from .threads import chunks, run_parts

OUTLIER_K = 16
OUTLIER_RATIO = 2.0
# GPU memory the test on a CUDA device takes per point, with a margin.  Torch's peak over the test of the 1M-point
# bunny on the H200 was 2,626 MiB, most of it the cell search's tables of every query's 27 cells; since those are
# made a batch of queries at a time (knn.QUERY_BATCH) the same code on the CPU peaks at 1,232 MiB above its start
# against 2,430 before (1.3 kB a point: the (N, 17) results and their copies in the points' order, one batch's
# tables); not yet measured on a GPU.
DEVICE_BYTES_PER_POINT = 1600


def outlier_mask(points: np.ndarray, batch: int = 1 << 16) -> np.ndarray:
    """True (N,) for points whose neighbour distance is over OUTLIER_RATIO times their neighbours' median.

    Clouds of at most OUTLIER_K points are left alone.  Where the neighbours'
    figure is zero (duplicated points) nothing is judged: a ratio to zero says
    nothing about spacing.  ``batch`` rows are judged at a time.
    """
    n = points.shape[0]
    if n <= OUTLIER_K:
        return np.zeros(n, dtype=bool)
    # Rows in the search's (spatial) order throughout, and only the verdict put back in the points' order: the
    # 1M-point bunny's test took 3.6 s with the (N, 17) results scattered back, 2.9 s this way with the k-d
    # tree's search (1.5-2 s of it), 1.3 s with the compiled one (:func:`~.knn.self_knn` chooses).  The
    # neighbours' median is taken a batch at a time: one (N, 16) gather and partition took 0.7-1.1 s there (a
    # fresh 128 MB array, then numpy's partition along rows), in batches 0.33 s.
    order, dist, idx = self_knn(points, OUTLIER_K + 1)  # the first neighbour is the point itself
    own = dist[:, 1:].mean(axis=1, dtype=np.float64)  # each point's figure, in the search's order
    del dist
    mask = np.empty(n, dtype=bool)
    if compiled_pays(n):  # the same verdicts, on both threads: numpy's partition of 1M rows took 0.34 s on one
        from . import kernels

        verdict = np.empty(n, dtype=bool)
        run_parts(partial(kernels.outlier_rows, own, idx, OUTLIER_RATIO, out=verdict), chunks(0, n))
        mask[order] = verdict
        return mask
    lo, hi = (OUTLIER_K - 1) // 2, OUTLIER_K // 2  # the median after one partition at the middle one or two
    for start in range(0, n, batch):
        rows = slice(start, min(start + batch, n))
        middle = own[idx[rows, 1:]]
        middle.partition([lo, hi], axis=1)
        local = 0.5 * (middle[:, lo] + middle[:, hi])
        mask[order[rows]] = (local > 0) & (own[rows] > OUTLIER_RATIO * local)
    return mask


def outlier_mask_torch(points: torch.Tensor, batch: int = 1 << 20) -> torch.Tensor:
    """:func:`outlier_mask` in torch on the points' device (the CUDA path): :func:`~.knn.grid_knn`'s search, the
    neighbours' median ``batch`` rows at a time.  The same verdicts up to the float32 rounding of distances."""
    n = points.shape[0]
    if n <= OUTLIER_K:
        return torch.zeros(n, dtype=torch.bool, device=points.device)
    dist, idx = grid_knn(points, OUTLIER_K + 1)  # the first neighbour is the point itself
    own = dist[:, 1:].double().mean(dim=1)
    del dist
    lo, hi = (OUTLIER_K - 1) // 2, OUTLIER_K // 2
    mask = torch.empty(n, dtype=torch.bool, device=points.device)
    for start in range(0, n, batch):
        rows = slice(start, min(start + batch, n))
        middle = own[idx[rows, 1:]].sort(dim=1).values
        local = 0.5 * (middle[:, lo] + middle[:, hi])
        mask[rows] = (local > 0) & (own[rows] > OUTLIER_RATIO * local)
    return mask


def searched_on(device: torch.device, n: int) -> bool:
    """Whether the test of ``n`` points runs on ``device`` (a CUDA device with room for it) rather than the CPU."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return n * DEVICE_BYTES_PER_POINT < free // 2


def drop_outliers(cloud: Cloud, device: torch.device | None = None) -> tuple[Cloud, int]:
    """The cloud without its outliers (:func:`outlier_mask`), and how many went; unchanged if too few would stay.

    On a CUDA ``device`` with room for it the test runs there (:func:`outlier_mask_torch`): at 1M points the
    CPU's took 1.35 s of a GPU run's 6.5 s on the H200 machine.  The canonical frame stays the one the whole
    input set: only positions matter to it.
    """
    n = cloud.points.shape[0]
    if device is not None and searched_on(device, n):
        bad = outlier_mask_torch(torch.from_numpy(cloud.points).to(device, torch.float32)).cpu().numpy()
    else:
        bad = outlier_mask(cloud.points)
    removed = int(bad.sum())
    if removed == 0 or cloud.points.shape[0] - removed < MIN_POINTS:
        return cloud, 0
    return cloud.subset(~bad), removed
