"""Step 4: the quadratic tensor-product B-spline basis.

Voxel ``c`` (integer coordinates, in the level's own voxel units) carries the
basis ``B_c(x) = b(x0 - c0 - 1/2) b(x1 - c1 - 1/2) b(x2 - c2 - 1/2)`` where ``b``
is the centred quadratic B-spline of support 3.  A point ``x`` inside cell
``floor(x)`` is touched by the 27 voxels ``floor(x) + o`` with ``o`` in
{-1, 0, 1}^3.  Writing ``u = x - floor(x) - 1/2`` (in [-1/2, 1/2)), the three
1-D weights are the polynomials in ``PHI`` below, so every product of basis
functions over one cell is a polynomial in ``u``: that is what lets
:mod:`engine.solver.system` assemble the data term from per-cell moments.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

# Rows: taps o = -1, 0, +1; columns: coefficients of u^0, u^1, u^2.
PHI = np.array([[1 / 8, -1 / 2, 1 / 2], [3 / 4, 0.0, -1.0], [1 / 8, 1 / 2, 1 / 2]])
# Derivatives d/dx of the rows of PHI: coefficients of u^0, u^1.
DPHI = np.array([[-1 / 2, 1.0], [0.0, -2.0], [1 / 2, 1.0]])

# The 27 tap offsets, x fastest: index = (ox+1) + 3 (oy+1) + 9 (oz+1).
TAP_OFFSETS = np.array([(x, y, z) for z, y, x in itertools.product((-1, 0, 1), repeat=3)], dtype=np.int64)


def weights_1d(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-axis weights and derivatives, each (N, 3 axes, 3 taps), for local coordinates u (N, 3)."""
    u2 = u * u
    w = torch.stack((0.5 * u2 - 0.5 * u + 0.125, 0.75 - u2, 0.5 * u2 + 0.5 * u + 0.125), dim=-1)
    d = torch.stack((u - 0.5, -2.0 * u, u + 0.5), dim=-1)
    return w, d


def tap_weights(u: torch.Tensor, size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Values (N, 27) and gradients (N, 27, 3) of the 27 touching basis functions.

    ``u`` is (N, 3) local coordinates in the level's voxel units; ``size`` is the
    level's voxel size in the caller's length unit, so gradients are per that unit.
    """
    w, d = weights_1d(u)
    wx, wy, wz = w[:, 0], w[:, 1], w[:, 2]
    dx, dy, dz = d[:, 0] / size, d[:, 1] / size, d[:, 2] / size

    def outer(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return (c[:, :, None, None] * b[:, None, :, None] * a[:, None, None, :]).reshape(-1, 27)

    values = outer(wx, wy, wz)
    grads = torch.stack((outer(dx, wy, wz), outer(wx, dy, wz), outer(wx, wy, dz)), dim=-1)
    return values, grads


def split_points(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell coordinates (N, 3) int64 and local coordinates u (N, 3) for points in voxel units."""
    cell = torch.floor(x)
    return cell.to(torch.int64), x - cell - 0.5


def product_polynomials() -> tuple[np.ndarray, np.ndarray]:
    """Coefficients of u^k (k = 0..4) of phi_o(u) phi_o'(u) and phi'_o(u) phi'_o'(u).

    Returns two arrays of shape (3, 3, 5), indexed [o, o', k].
    """
    value = np.zeros((3, 3, 5))
    deriv = np.zeros((3, 3, 5))
    for a in range(3):
        for b in range(3):
            value[a, b] = np.convolve(PHI[a], PHI[b])
            deriv[a, b, :3] = np.convolve(DPHI[a], DPHI[b])
    return value, deriv
