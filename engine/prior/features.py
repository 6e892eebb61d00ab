"""What the learned prior reads: the points around each occupied finest cell, summarised at four scales.

Per cell and scale (cells of 1, 2, 4 and 8 finest voxels, each with its 26 neighbours: radii of about 1.5, 3, 6
and 12 voxels; noise keeps a spread's thickness the same at every scale, curvature makes it grow with the radius) eight
numbers that say how the points there lie: how many there are, how thick, wide and long their
spread is (square roots of the covariance's eigenvalues, in finest voxels: the thickness is the noise plus the
curvature the cell sees), how well their normals agree (the mean normal's length and the two smaller eigenvalues
of the normals' second moment), and how well the normals agree with the points' own plane.  Then the scan's
context, the same for every cell: measured noise per voxel, the point weight, whether sensor positions are
known, whether normals were estimated.  All sums are moments scattered per cell (one pass over the points) and
added over the 27 neighbours through a :class:`~engine.solver.voxels.VoxelIndex` table: no k-nearest-neighbour
search, so the cost is a few passes over the points and cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..solver.basis import split_points
from ..solver.voxels import VoxelIndex, unique_voxels_inverse

SCALES = (1, 2, 4, 8)  # cell edge, in finest voxels, of each summary's cells
LOCAL = ("log_count", "thickness", "width", "length", "normal_mean", "normal_spread_min", "normal_spread_mid",
         "normal_plane")
CONTEXT = ("noise_voxels", "log_point_weight", "log_smooth_weight", "sensed", "estimated")
NAMES = tuple(f"{name}@{s}" for s in SCALES for name in LOCAL) + CONTEXT
N_FEATURES = len(NAMES)
_UPPER = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))


@dataclass(frozen=True)
class Context:
    """The scan-wide inputs of the prior."""

    noise_voxels: float  # measured noise / finest voxel
    point_weight: float
    smooth_weight: float
    sensed: bool  # sensor positions known
    estimated: bool  # normals estimated by the engine

    def values(self) -> list[float]:
        return [self.noise_voxels, math.log(self.point_weight), math.log(self.smooth_weight), float(self.sensed),
                float(self.estimated)]


@dataclass
class CellFeatures:
    """Occupied finest cells (C, 3), each point's cell row (N,) and the features (C, N_FEATURES) float32."""

    cells: torch.Tensor
    of_point: torch.Tensor
    values: torch.Tensor


def _outer(v: torch.Tensor) -> torch.Tensor:
    """(N, 6) upper entries of v v^T for v (N, 3)."""
    return torch.stack([v[:, a] * v[:, b] for a, b in _UPPER], dim=1)


def _symmetric(m: torch.Tensor) -> torch.Tensor:
    """(C, 3, 3) from upper entries (C, 6)."""
    out = m.new_empty(m.shape[0], 3, 3)
    for k, (a, b) in enumerate(_UPPER):
        out[:, a, b] = out[:, b, a] = m[:, k]
    return out


def _neighbourhood_moments(x: torch.Tensor, nrm: torch.Tensor, size: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Moments [count, sum p, sum p p^T, sum n, sum n n^T] (K, 19) float64 over each cell's 3^3 cells at cell edge
    ``size``, the cells (K, 3) and each point's cell row (N,)."""
    cell, _ = split_points(x / size)
    cells, inverse = unique_voxels_inverse(cell)
    p = x.double()
    n = nrm.double()
    per_point = torch.cat((torch.ones_like(p[:, :1]), p, _outer(p), n, _outer(n)), dim=1)
    own = torch.zeros(cells.shape[0] + 1, per_point.shape[1], dtype=torch.float64, device=x.device)
    own.index_add_(0, inverse, per_point)
    return neighbour_sum(own, VoxelIndex(cells).neighbour_table(1 << 18)), cells, inverse


NEIGHBOUR_CHUNK = 1 << 15  # rows whose 27 neighbours are gathered at once (bounded memory)


def neighbour_sum(own: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(M, ...) sums of ``own`` (K + 1, ...) over each row's 27 neighbours in ``table`` (M, 27), -1 absent.

    ``own``'s last row stands for an absent neighbour and must be zero.  The prior's features sum moments over
    cells this way, its voxel factors sum over a level's voxels, and training sums errors over cells.
    """
    absent = own.shape[0] - 1
    out = own.new_empty((table.shape[0], *own.shape[1:]))
    for start in range(0, table.shape[0], NEIGHBOUR_CHUNK):
        block = table[start:start + NEIGHBOUR_CHUNK].to(torch.int64)
        block = torch.where(block >= 0, block, absent)
        out[start:start + NEIGHBOUR_CHUNK] = own.index_select(0, block.view(-1)).view(
            block.shape[0], 27, *own.shape[1:]).sum(dim=1)
    return out


def _eigenvalues(u: torch.Tensor) -> torch.Tensor:
    """(K, 3) ascending eigenvalues of symmetric 3 x 3 matrices given by their upper entries (K, 6).

    The closed form (trigonometric, for symmetric 3 x 3): batched LAPACK calls cost ~10 us per matrix on the CPU,
    this a few whole-array passes.
    """
    q = (u[:, 0] + u[:, 1] + u[:, 2]) / 3
    off = u[:, 3] ** 2 + u[:, 4] ** 2 + u[:, 5] ** 2
    p = (((u[:, 0] - q) ** 2 + (u[:, 1] - q) ** 2 + (u[:, 2] - q) ** 2 + 2 * off) / 6).sqrt()
    safe = p.clamp_min(1e-30)
    b0, b1, b2 = (u[:, 0] - q) / safe, (u[:, 1] - q) / safe, (u[:, 2] - q) / safe
    b01, b02, b12 = u[:, 3] / safe, u[:, 4] / safe, u[:, 5] / safe
    det = b0 * (b1 * b2 - b12 * b12) - b01 * (b01 * b2 - b12 * b02) + b02 * (b01 * b12 - b1 * b02)
    phi = torch.acos((det / 2).clamp(-1.0, 1.0)) / 3
    large = q + 2 * p * torch.cos(phi)
    small = q + 2 * p * torch.cos(phi + 2 * torch.pi / 3)
    return torch.stack((small, 3 * q - large - small, large), dim=1)


def _smallest_axis(u: torch.Tensor, smallest: torch.Tensor) -> torch.Tensor:
    """(K, 3) unit eigenvector of the smallest eigenvalue: the largest cross product of two rows of A - l I."""
    a = _symmetric(u)
    a = a - smallest[:, None, None] * torch.eye(3, dtype=u.dtype, device=u.device)
    cands = torch.stack((torch.linalg.cross(a[:, 0], a[:, 1]), torch.linalg.cross(a[:, 0], a[:, 2]),
                         torch.linalg.cross(a[:, 1], a[:, 2])), dim=1)  # (K, 3 pairs, 3)
    norms = cands.norm(dim=2)
    best = norms.argmax(dim=1)
    v = cands[torch.arange(u.shape[0], device=u.device), best]
    return v / norms.max(dim=1).values.clamp_min(1e-30)[:, None]


def _summary(m: torch.Tensor) -> torch.Tensor:
    """(K, len(LOCAL)) features from neighbourhood moments (K, 19)."""
    count = m[:, 0]
    mean = m[:, 1:4] / count[:, None]
    cov = m[:, 4:10] / count[:, None] - _outer(mean)
    spread = _eigenvalues(cov)
    sigma = spread.clamp_min(0).sqrt()
    nmean = m[:, 10:13] / count[:, None]
    nsecond = _eigenvalues(m[:, 13:19] / count[:, None])
    length = nmean.norm(dim=1)
    plane = (_smallest_axis(cov, spread[:, 0]) * nmean).sum(dim=1).abs() / length.clamp_min(1e-9)
    return torch.stack((count.log1p(), sigma[:, 0], sigma[:, 1], sigma[:, 2], length, nsecond[:, 0], nsecond[:, 1],
                        plane), dim=1)


def cell_features(x: torch.Tensor, nrm: torch.Tensor, context: Context) -> CellFeatures:
    """Features of the occupied finest cells for points x (N, 3, finest-voxel units) with unit normals (N, 3)."""
    moments, cells, of_point = _neighbourhood_moments(x, nrm, SCALES[0])
    blocks = [_summary(moments)]
    for size in SCALES[1:]:
        moments, _, inverse = _neighbourhood_moments(x, nrm, size)
        row = torch.empty(cells.shape[0], dtype=torch.int64, device=x.device)
        row[of_point] = inverse  # every point of a finest cell lies in the same coarser cell
        blocks.append(_summary(moments)[row])
    ctx = torch.tensor(context.values(), dtype=torch.float64, device=x.device).expand(cells.shape[0], -1)
    return CellFeatures(cells, of_point, torch.cat((*blocks, ctx), dim=1).float())
