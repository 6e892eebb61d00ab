"""The conjugate-gradient solver: converges, and ends cleanly where float precision runs out."""

from __future__ import annotations

import math

import torch

from engine.solver.cg import pcg


def _system(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(n, n, generator=g)
    return m @ m.T + n * torch.eye(n), torch.randn(n, generator=g)


def test_converges_to_the_tolerance() -> None:
    a, b = _system()
    result = pcg(lambda v: a @ v, b, 1.0 / torch.diagonal(a), 1e-5, 500)
    assert result.residual <= 1e-5
    assert float(torch.linalg.vector_norm(a @ result.x - b) / torch.linalg.vector_norm(b)) < 1e-4


def test_a_tolerance_below_float_precision_stops_without_dividing_by_zero() -> None:
    """With tol 0 the residual can reach exactly zero; the next step would divide by p.Ap = 0."""
    a = torch.eye(4)
    b = torch.tensor([1.0, 2.0, 3.0, 4.0])
    result = pcg(lambda v: a @ v, b, torch.ones(4), 0.0, 100)  # converges exactly in one step
    assert result.iterations == 1 and result.residual == 0.0
    assert torch.equal(result.x, b)
    a2, b2 = _system()
    result = pcg(lambda v: a2 @ v, b2, 1.0 / torch.diagonal(a2), 0.0, 10_000)
    assert math.isfinite(result.residual) and result.residual < 1e-5 and torch.isfinite(result.x).all()
