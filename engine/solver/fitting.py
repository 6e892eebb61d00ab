"""Steps 5-6 over a whole hierarchy: assemble and solve each level, coarse to fine.

One definition serves the whole-scene pipeline and every chunk of a large one.
"""

from __future__ import annotations

import torch

from ..progress import Run
from .cg import csr_matvec, pcg, sgs_pcg
from .hierarchy import Level, evaluate_level
from .system import Weights, assemble
from .threads import compiled_on

# Relative residual at which the coarse levels stop.  They only give the finer ones a start: the finest
# level fits what they leave at the points, so their last digits never reach the surface.  Measured
# (100k-point bunny and torus scans, 1e-3 -> 1e-2): coarse iterations [109, 114] -> [53, 55] and
# [110, 126] -> [55, 68], the finest level's unchanged (60, 56); the meshes are 0.0002 voxel apart on
# average (99th percentile 0.005, max 0.11), Chamfer to the true surface 0.4402e-3 -> 0.4410e-3 and
# 0.4230e-3 -> 0.4231e-3, normal consistency equal; on the clean 100k sphere the true surface lies
# 2e-5 voxel (mean), 3e-4 (max) from the zero level either way.  Together with
# :func:`engine.solver.cg.csr_matvec`, the solve stage (issue 12; one script alternating old and new,
# medians of 3, a shared machine at load 4-6 on 2 cores) went bunny 18.0 -> 9.3 s, torus 8.6 -> 4.7 s,
# sphere 3.2 -> 1.9 s at 1 thread (1.95x, 1.84x, 1.71x); 2.00x, 1.82x, 1.53x at torch's default 2
# threads.  3e-2 still gave equal Chamfer but moved the meshes 2-3x farther; coarse levels carry the
# field across holes, so that margin is kept.
COARSE_TOL = 1e-2


def solve_levels(levels: list[Level], x: torch.Tensor, nrm: torch.Tensor, weights: Weights, solver_tol: float,
                 solver_max_iter: int, run: Run, label: str = "", coarse_tol: float = COARSE_TOL,
                 trust: torch.Tensor | None = None,
                 smooth_scales: list[torch.Tensor] | None = None) -> tuple[list[int], list[float]]:
    """Fit the hierarchy (steps 5-6) to points x (N, 3, finest-voxel units) and unit normals, coarse to fine.

    Each level fits what the coarser ones left; the coefficients are stored in
    the levels.  Returns the iterations and final relative residual per level,
    coarsest first.  ``label`` prefixes the progress text (a chunk's name); levels above the finest stop
    at ``coarse_tol`` (or ``solver_tol`` if that is looser).  ``trust`` (N,), mean 1, weighs the points;
    ``smooth_scales``, one (M,) per level (finest first), the smoothness term around each voxel (:mod:`engine.prior`).
    """
    fit_value = torch.zeros(x.shape[0], device=x.device)
    fit_grad = torch.zeros(x.shape[0], 3, device=x.device)
    iterations: list[int] = []
    residuals: list[float] = []
    for i, level in enumerate(reversed(levels)):
        scale = None if smooth_scales is None else smooth_scales[len(levels) - 1 - i]
        with run.stage("system"):
            system = assemble(level, x, -fit_value, nrm - fit_grad, weights, trust, scale)
        with run.stage("solve"):
            def check(it: int, rel: float, i: int = i, depth: int = level.depth) -> None:
                run.report("solve", (i + min(1.0, it / max(1, solver_max_iter))) / len(levels),
                           f"{label}level {depth}: iteration {it}, residual {rel:.2e}")

            # Coarse levels only give the finer ones a start (COARSE_TOL); the finest is solved to solver_tol.
            tol = solver_tol if level.depth == 0 else max(solver_tol, coarse_tol)
            if compiled_on(x.device, None):  # symmetric Gauss-Seidel sweeps (numba), else Jacobi in torch
                result = sgs_pcg(system.matrix, system.rhs, system.diagonal, tol, solver_max_iter, check,
                                 upper=system.upper)
            else:
                result = pcg(csr_matvec(system.full()), system.rhs, 1.0 / system.diagonal, tol, solver_max_iter,
                             check)
            level.set_coeffs(result.x)
            iterations.append(result.iterations)
            residuals.append(result.residual)
            del system
            if i == len(levels) - 1:  # the finest level: nothing is left to fit after it
                break
            value, grad = evaluate_level(level, x, with_grad=True)
            fit_value += value
            assert grad is not None
            fit_grad += grad
    return iterations, residuals
