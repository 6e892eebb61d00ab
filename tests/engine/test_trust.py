"""Points seen edge-on have less say in the fit than points seen head-on (engine/solver/trust.py)."""

from __future__ import annotations

import numpy as np

from engine import reconstruct
from engine.solver.trust import FLOOR, incidence_trust


def test_weight_falls_beyond_the_knee_only() -> None:
    points = np.zeros((3, 3))
    normals = np.tile([0.0, 0.0, 1.0], (3, 1))
    sensors = np.array([[0.0, 0.0, 5.0],  # head-on
                        [5.0, 0.0, 5.0],  # 45 degrees: within the knee
                        [5.0, 0.0, 0.0]])  # edge-on
    weight, grazing = incidence_trust(points, normals, sensors)
    assert grazing == 1
    assert weight[0] == weight[1]
    assert abs(weight[2] / weight[0] - FLOOR) < 1e-6
    assert abs(float(weight.mean()) - 1.0) < 1e-6


def test_a_grazing_sheet_gives_way_to_a_head_on_one() -> None:
    """Two sheets 0.02 apart: one seen head-on (z = 0), one seen almost edge-on (z = 0.02).  Without sensors the
    surface runs between them; with them it follows the head-on sheet."""
    rng = np.random.default_rng(3)
    n = 15_000
    xy = rng.uniform(-1.0, 1.0, size=(2 * n, 2))
    z = np.r_[np.zeros(n), np.full(n, 0.02)]
    points = np.c_[xy, z]
    normals = np.tile([0.0, 0.0, 1.0], (2 * n, 1))
    sensors = np.r_[np.tile([0.0, 0.0, 3.0], (n, 1)), np.tile([60.0, 0.0, 0.3], (n, 1))]  # 89.7 degrees
    heights = {}
    for label, sensor in (("without", None), ("with", sensors)):
        mesh = reconstruct(points, normals, sensor=sensor, device="cpu", register_views=False)
        v = mesh.vertices64
        centre = (np.abs(v[:, 0]) < 0.5) & (np.abs(v[:, 1]) < 0.5)
        heights[label] = float(np.median(v[centre, 2]))
        if sensor is not None:
            assert mesh.stats["points_grazing"] == n
    assert 0.007 < heights["without"] < 0.013, heights
    assert heights["with"] < 0.004, heights


def test_weights_of_one_assemble_the_unweighted_system() -> None:
    import torch

    from engine.solver.hierarchy import build_levels
    from engine.solver.system import Weights, assemble
    from tests import shapes

    p, n = shapes.blob(3000, seed=1)
    x = torch.from_numpy((p / 0.05).astype(np.float32))
    nrm = torch.from_numpy(n.astype(np.float32))
    level = build_levels(x, 1)[0]
    zero = torch.zeros(x.shape[0])
    plain = assemble(level, x, zero, nrm, Weights())
    ones = assemble(level, x, zero, nrm, Weights(), torch.ones(x.shape[0]))
    assert torch.equal(plain.matrix.values(), ones.matrix.values()) and torch.equal(plain.rhs, ones.rhs)
    halved = assemble(level, x, zero, nrm, Weights(smooth=0.0), torch.full((x.shape[0],), 0.5))
    whole = assemble(level, x, zero, nrm, Weights(smooth=0.0))
    assert torch.allclose(halved.rhs, 0.5 * whole.rhs, atol=1e-9)
