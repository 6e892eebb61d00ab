"""Step 6: preconditioned conjugate gradients on the engine's device.

The normal equations are sparse symmetric positive definite (CSR, float32).
On the CPU the preconditioner is symmetric Gauss-Seidel in row blocks
(:func:`sgs_pcg`, sweeps in :mod:`engine.solver.sweeps`); elsewhere (CUDA) and
as the reference it is the inverse diagonal (Jacobi, :func:`pcg`, all torch).
Each level fits what the coarser levels left, so few iterations are needed.  A ``check``
callback runs after every iteration: it reports progress and may raise
:class:`engine.errors.Cancelled`, which stops the solve within one iteration.
A breakdown (a zero or non-finite step, reached when the tolerance is below
float precision) ends the solve with the iterate it has, never a division by zero.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SolveResult:
    x: torch.Tensor
    iterations: int
    residual: float  # final ||b - Ax|| / ||b||


def csr_matvec(matrix: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> A v for a sparse CSR matrix A, through torch's sparse matrix-vector kernel.

    Why not ``(A @ v[:, None])[:, 0]``: a one-column matrix goes through the
    sparse-dense matrix product, which took 1.5-1.7x as long per product on the
    levels of the bunny scan and the 100k sphere (CPU, 1 thread; same result to
    float rounding).  CUDA runs the 1-D product as cuSPARSE's SpMV.
    """
    return lambda v: matrix @ v


def symmetric_from_upper(upper: torch.Tensor) -> torch.Tensor:
    """The whole symmetric CSR matrix (int32 indices, sorted rows) of one that stores its upper triangle only."""
    coo = upper.to_sparse_coo().coalesce()
    index, values = coo.indices(), coo.values()
    below = index[0] != index[1]
    whole = torch.sparse_coo_tensor(torch.cat((index, index[:, below].flip(0)), 1),
                                    torch.cat((values, values[below])), upper.shape, check_invariants=False).coalesce()
    csr = whole.to_sparse_csr()
    with warnings.catch_warnings():  # "CSR support is in beta": our use is plain SpMV, checked by tests
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32),
                                       csr.values(), size=upper.shape, check_invariants=False)


def pcg(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, inv_diag: torch.Tensor,
        tol: float, max_iter: int, check: Callable[[int, float], None] | None = None,
        x0: torch.Tensor | None = None) -> SolveResult:
    """Solve A x = b to relative residual ``tol``; A given by ``matvec``, Jacobi preconditioned.

    Vector updates are in place (no temporaries) and the two reductions that
    follow each step are read back together: one device sync per step fewer.
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - matvec(x) if x0 is not None else b.clone()
    bnorm = float(torch.linalg.vector_norm(b))
    if bnorm == 0.0:
        return SolveResult(torch.zeros_like(b), 0, 0.0)
    z = inv_diag * r
    p = z.clone()
    rr, rz = torch.stack((torch.dot(r, r), torch.dot(r, z))).tolist()
    rel = math.sqrt(rr) / bnorm
    it = 0
    while it < max_iter and rel > tol:
        ap = matvec(p)
        pap = float(torch.dot(p, ap))
        if not pap > 0.0:  # breakdown: the residual is zero to float precision (or A lost definiteness); keep x
            break
        alpha = rz / pap
        x.add_(p, alpha=alpha)
        r.add_(ap, alpha=-alpha)
        it += 1
        torch.mul(inv_diag, r, out=z)
        rr, rz_new = torch.stack((torch.dot(r, r), torch.dot(r, z))).tolist()
        rel = math.sqrt(max(rr, 0.0)) / bnorm
        if check is not None:
            check(it, rel)
        if rel <= tol:
            break
        if not rz_new > 0.0:  # the same breakdown, seen from the preconditioned residual
            break
        torch.add(z, p, alpha=rz_new / rz, out=p)  # p = z + beta p
        rz = rz_new
    return SolveResult(x, it, rel)


# Rows per block below which the sweeps run in one block: a block per thread costs a pool round trip per sweep
# (tens of microseconds) and loosens the preconditioner (couplings between blocks are left out of the sweeps).
BLOCK_ROWS = 20_000
# Iterations between measurements of the true residual, which keep the estimate's scale fresh: |r| / |r'| fell
# over the sphere scan's solves, so the first scale alone ran 5-7 iterations past the tolerance (32 vs 27).
MEASURE_EVERY = 8


def sgs_pcg(matrix: torch.Tensor, b: torch.Tensor, diagonal: torch.Tensor, tol: float, max_iter: int,
            check: Callable[[int, float], None] | None = None, upper: bool = False) -> SolveResult:
    """Solve A x = b (A sparse CSR, float32, CPU, sorted columns; ``diagonal`` its diagonal, positive) to
    relative residual ``tol``, preconditioned by symmetric Gauss-Seidel in row blocks (one per kernel thread),
    by :mod:`engine.solver.sweeps`.  The sweeps need each row's columns in increasing order (the assembly's
    are, where the level's voxels are in (z, y, x) order); a matrix with other rows is solved by :func:`pcg`,
    and a row without its diagonal entry is refused.

    CG runs on the split system (I + L)^-1 S A S (I + U)^-1 y = (I + L)^-1 S b, x = S (I + U)^-1 y, whose
    product is one pass over A.  Its residual r' is not A's: r = S^-1 (I + L) r' (half a pass).  The loop
    watches |r'| scaled by the last measured |r| / |r'|, measured every ``MEASURE_EVERY`` iterations and
    when the estimate says it is done, so the solve stops where :func:`pcg`'s would, at |b - A x| <= tol |b|.
    The blocks follow the thread count, so the iterates (not the tolerance met) depend on it.

    ``upper``: ``matrix`` stores only its upper triangle, each row's own column first (the compiled assembly's
    form, :class:`engine.solver.system.LevelSystem`); the same operator, with each row's lower triangle read as
    the column above it (a solved row scatters to the rows below it), so the matrix is read twice per
    iteration but holds half the entries.
    """
    from . import sweeps
    from .threads import run_parts, thread_count

    m = b.shape[0]
    bnorm = float(torch.linalg.vector_norm(b))
    if bnorm == 0.0:
        return SolveResult(torch.zeros_like(b), 0, 0.0)
    crow, cols = matrix.crow_indices().numpy(), matrix.col_indices().numpy()
    vals = matrix.values().numpy()
    blocks = max(1, min(thread_count(), m // BLOCK_ROWS))
    cuts = np.searchsorted(crow, np.linspace(0, crow[-1], blocks + 1)).clip(0, m)
    cuts[0], cuts[-1] = 0, m
    rows = [(int(lo), int(hi)) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True) if hi > lo]
    first, diag, last = (np.empty(m, np.int32) for _ in range(3))
    found: list[int] = []

    def positions(lo: int, hi: int) -> None:
        found.append(sweeps.row_positions(crow, cols, lo, hi, first, diag, last))

    run_parts(positions, rows)
    if sweeps.NO_DIAGONAL in found:
        raise ValueError("a row of the matrix has no diagonal entry: the sweeps need every row's own column stored")
    if upper and sweeps.UNSORTED not in found and not np.array_equal(diag, crow[:-1]):
        raise ValueError("a matrix given as its upper triangle holds entries below its diagonal")
    if sweeps.UNSORTED in found:  # rows whose columns do not increase (watertight mode's levels): Jacobi
        whole = symmetric_from_upper(matrix) if upper else matrix
        return pcg(csr_matvec(whole), b, 1.0 / diagonal, tol, max_iter, check)
    s = torch.rsqrt(diagonal.double()).float().numpy()
    t, st, sz = (np.zeros(m, np.float32) for _ in range(3))  # sz: the upper form's g (zeros between sweeps)
    r, y, ap, out = np.empty(m, np.float32), np.zeros(m, np.float32), np.empty(m, np.float32), np.empty(m, np.float32)
    leaving = np.flatnonzero(last < crow[1:]) if upper else np.zeros(0, np.int64)  # rows coupled to later blocks

    def forward(v: np.ndarray, into: np.ndarray) -> None:
        if upper:
            sweeps.leaving_couplings(crow, cols, vals, last, leaving, st, sz)
            run_parts(lambda lo, hi: sweeps.forward_sweep_upper(crow, cols, vals, last, s, v, t, st, lo, hi,
                                                                into, sz), rows)
        else:
            run_parts(lambda lo, hi: sweeps.forward_sweep(crow, cols, vals, first, diag, last, s, v, t, st, lo,
                                                          hi, into, sz), rows)

    def backward(v: np.ndarray) -> None:  # into t and st
        run_parts(lambda lo, hi: sweeps.backward_sweep(cols, vals, diag, last, s, v, lo, hi, t, st), rows)

    def true_rel(residual: np.ndarray) -> float:  # |b - A x| / |b| from the split system's residual
        if upper:
            run_parts(lambda lo, hi: sweeps.lower_product_upper(crow, cols, vals, last, s, residual, lo, hi, out),
                      rows)
        else:
            run_parts(lambda lo, hi: sweeps.lower_product(cols, vals, first, diag, s, residual, lo, hi, out), rows)
        return float(np.linalg.norm(out)) / bnorm

    forward(s * b.numpy(), r)  # t = st = 0: the plain forward solve, r = (I + L)^-1 S b for y = 0
    p = r.copy()
    yt, rt, pt, apt = (torch.from_numpy(a) for a in (y, r, p, ap))
    rr = float(np.dot(r, r))
    rel, measured = 1.0, True  # |b - A 0| = |b|
    ratio = 1.0 / math.sqrt(rr) if rr > 0.0 else 1.0
    it = 0
    while it < max_iter and rel > tol:
        backward(p)
        forward(p, ap)
        pap = float(np.dot(p, ap))
        if not pap > 0.0:  # breakdown, as in pcg: keep y
            break
        alpha = rr / pap
        yt.add_(pt, alpha=alpha)
        rt.add_(apt, alpha=-alpha)
        it += 1
        rr_new = float(np.dot(r, r))
        rel, measured = math.sqrt(max(rr_new, 0.0)) * ratio, False
        if rel <= tol or it % MEASURE_EVERY == 0:  # the estimate says done, or is getting old: measure
            rel, measured = true_rel(r), True
            if rr_new > 0.0:
                ratio = rel / math.sqrt(rr_new)
        if check is not None:
            check(it, rel)
        if rel <= tol or not rr_new > 0.0:
            break
        torch.add(rt, pt, alpha=rr_new / rr, out=pt)  # p = r + beta p
        rr = rr_new
    if not measured:
        rel = true_rel(r)
    backward(y)  # x = S (I + U)^-1 y, which is st
    return SolveResult(torch.from_numpy(st), it, rel)
