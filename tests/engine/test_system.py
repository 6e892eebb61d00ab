"""The moment-based CSR assembly equals the energy assembled point by point (dense, brute force)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.solver.basis import TAP_OFFSETS, split_points, tap_weights
from engine.solver.hierarchy import build_levels
from engine.solver.system import Weights, _smoothness_terms, assemble

W = Weights(point=0.7, normal=1.3, smooth=0.2)


def brute_force(level, x: torch.Tensor, tv: torch.Tensor, tg: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    m, n = len(level), x.shape[0]
    a = np.zeros((m, m))
    b = np.zeros(m)
    cell, u = split_points(x / level.size)
    w, g = tap_weights(u.double(), level.size)
    rows = level.taps(cell).numpy()
    for p in range(n):
        r, wp, gp = rows[p], w[p].numpy(), g[p].numpy()
        a[np.ix_(r, r)] += W.point / n * np.outer(wp, wp) + W.normal / n * gp @ gp.T
        b[r] += W.point / n * wp * float(tv[p]) + W.normal / n * gp @ tg[p].numpy()
    index = {tuple(v): i for i, v in enumerate(level.ijk.tolist())}
    for v in level.ijk.tolist():
        for taps, coeffs, weight, support in _smoothness_terms():
            if not all(tuple(np.add(v, o)) in index for o in support):
                continue
            r = [index[tuple(np.add(v, o))] for o in taps]
            a[np.ix_(r, r)] += W.smooth / m * weight * np.outer(coeffs, coeffs)
    a[np.diag_indices(m)] += 1e-4 * np.diag(a).mean()
    return a, b


@pytest.mark.parametrize("depth_index", [0, 1])
def test_csr_matches_brute_force(depth_index: int) -> None:
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.uniform(0, 5, size=(40, 3))).float()
    level = build_levels(x, 2)[depth_index]
    tv = torch.from_numpy(rng.normal(size=40)).float()
    tg = torch.from_numpy(rng.normal(size=(40, 3))).float()
    system = assemble(level, x, tv, tg, W)
    a, b = brute_force(level, x, tv, tg)
    dense = system.matrix.to_dense().double().numpy()
    assert np.abs(dense - dense.T).max() < 1e-6 * np.abs(a).max()
    assert np.abs(dense - a).max() < 1e-5 * np.abs(a).max()
    assert np.abs(system.rhs.double().numpy() - b).max() < 1e-5 * np.abs(b).max()
    assert np.allclose(system.diagonal.numpy(), np.diag(a), rtol=1e-5)
    assert np.linalg.eigvalsh(a).min() > 0  # positive definite


def test_every_point_has_all_its_taps() -> None:
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.normal(size=(500, 3)) * 6).float()
    for level in build_levels(x, 3):
        cell, _ = split_points(x / level.size)
        assert (level.taps(cell) >= 0).all()
        assert (level.index.lookup(cell[:, None, :] + torch.from_numpy(TAP_OFFSETS)) >= 0).all()
