"""Step 6: preconditioned conjugate gradients on the engine's device.

The normal equations are sparse symmetric positive definite (CSR, float32);
the preconditioner is the inverse diagonal (Jacobi), and each level starts
from the coarser levels' fit, so few iterations are needed.  A ``check``
callback runs after every iteration: it reports progress and may raise
:class:`engine.errors.Cancelled`, which stops the solve within one iteration.
A breakdown (a zero or non-finite step, reached when the tolerance is below
float precision) ends the solve with the iterate it has, never a division by zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class SolveResult:
    x: torch.Tensor
    iterations: int
    residual: float  # final ||b - Ax|| / ||b||


def pcg(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, inv_diag: torch.Tensor,
        tol: float, max_iter: int, check: Callable[[int, float], None] | None = None,
        x0: torch.Tensor | None = None) -> SolveResult:
    """Solve A x = b to relative residual ``tol``; A given by ``matvec``, Jacobi preconditioned."""
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - matvec(x) if x0 is not None else b.clone()
    bnorm = float(torch.linalg.vector_norm(b))
    if bnorm == 0.0:
        return SolveResult(torch.zeros_like(b), 0, 0.0)
    z = inv_diag * r
    p = z.clone()
    rz = float(torch.dot(r, z))
    rel = float(torch.linalg.vector_norm(r)) / bnorm
    it = 0
    while it < max_iter and rel > tol:
        ap = matvec(p)
        pap = float(torch.dot(p, ap))
        if not pap > 0.0:  # breakdown: the residual is zero to float precision (or A lost definiteness); keep x
            break
        alpha = rz / pap
        x.add_(alpha * p)
        r.sub_(alpha * ap)
        it += 1
        rel = float(torch.linalg.vector_norm(r)) / bnorm
        if check is not None:
            check(it, rel)
        if rel <= tol:
            break
        z = inv_diag * r
        rz_new = float(torch.dot(r, z))
        if not rz_new > 0.0:  # the same breakdown, seen from the preconditioned residual
            break
        p.mul_(rz_new / rz).add_(z)
        rz = rz_new
    return SolveResult(x, it, rel)
