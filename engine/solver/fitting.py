"""Steps 5-6 over a whole hierarchy: assemble and solve each level, coarse to fine.

One definition serves the whole-scene pipeline and every chunk of a large one.
"""

from __future__ import annotations

import torch

from ..progress import Run
from .cg import pcg
from .hierarchy import Level, evaluate_level
from .system import Weights, assemble

COARSE_TOL = 1e-3


def solve_levels(levels: list[Level], x: torch.Tensor, nrm: torch.Tensor, weights: Weights, solver_tol: float,
                 solver_max_iter: int, run: Run, label: str = "") -> tuple[list[int], list[float]]:
    """Fit the hierarchy (steps 5-6) to points x (N, 3, finest-voxel units) and unit normals, coarse to fine.

    Each level fits what the coarser ones left; the coefficients are stored in
    the levels.  Returns the iterations and final relative residual per level,
    coarsest first.  ``label`` prefixes the progress text (a chunk's name).
    """
    fit_value = torch.zeros(x.shape[0], device=x.device)
    fit_grad = torch.zeros(x.shape[0], 3, device=x.device)
    iterations: list[int] = []
    residuals: list[float] = []
    for i, level in enumerate(reversed(levels)):
        with run.stage("system"):
            system = assemble(level, x, -fit_value, nrm - fit_grad, weights)
        with run.stage("solve"):
            def check(it: int, rel: float, i: int = i, depth: int = level.depth) -> None:
                run.report("solve", (i + min(1.0, it / max(1, solver_max_iter))) / len(levels),
                           f"{label}level {depth}: iteration {it}, residual {rel:.2e}")

            # Coarse levels only give the finer ones a start (they fit what is left), so a loose
            # tolerance there costs no accuracy; the finest level is solved to solver_tol.
            tol = solver_tol if level.depth == 0 else max(solver_tol, COARSE_TOL)
            result = pcg(system.matvec, system.rhs, 1.0 / system.diagonal, tol, solver_max_iter, check)
            level.set_coeffs(result.x)
            iterations.append(result.iterations)
            residuals.append(result.residual)
            del system
            value, grad = evaluate_level(level, x, with_grad=True)
            fit_value += value
            assert grad is not None
            fit_grad += grad
    return iterations, residuals
