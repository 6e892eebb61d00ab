"""The conjugate-gradient solvers (Jacobi in torch, symmetric Gauss-Seidel sweeps on the CPU): converge to the
tolerance, and end cleanly where float precision runs out."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.solver.cg import csr_matvec, pcg, sgs_pcg
from engine.solver.system import LevelSystem


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


def _level_system() -> LevelSystem:
    """A real level's normal equations: the torus test shape's finest level (82k unknowns)."""
    from engine.solver.hierarchy import build_levels
    from engine.solver.system import Weights, assemble
    from tests import shapes

    points, normals = shapes.torus(20_000, seed=4)
    x = torch.from_numpy(points * 40.0 + 0.37).float()
    level = build_levels(x, 2)[0]
    return assemble(level, x, torch.zeros(x.shape[0]), torch.from_numpy(normals).float(), Weights(smooth=0.1))


def _split_operator(a: np.ndarray, blocks: list[tuple[int, int]]) -> np.ndarray:
    """(I + L)^-1 S A S (I + U)^-1, dense: L the strict lower triangle of S A S inside each block."""
    s = 1.0 / np.sqrt(np.diag(a))
    scaled = s[:, None] * a * s[None, :]
    lower = np.zeros_like(a)
    for lo, hi in blocks:
        lower[lo:hi, lo:hi] = np.tril(scaled[lo:hi, lo:hi], -1)
    eye = np.eye(a.shape[0])
    return np.linalg.solve(eye + lower, scaled) @ np.linalg.inv(eye + lower.T)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sweeps_apply_the_split_operator() -> None:
    """One backward and one forward sweep per block apply (I + L)^-1 S A S (I + U)^-1, couplings between
    blocks included (a random sparse SPD matrix, three blocks, checked against dense algebra)."""
    from engine.solver import sweeps

    rng = np.random.default_rng(1)
    n = 60
    a = np.where(rng.random((n, n)) < 0.15, rng.normal(size=(n, n)), 0.0)
    a = a @ a.T + np.diag(rng.uniform(1.0, 3.0, n))
    csr = torch.from_numpy(a).float().to_sparse_csr()
    crow, cols, vals = (t.numpy() for t in (csr.crow_indices().int(), csr.col_indices().int(), csr.values()))
    blocks = [(0, 17), (17, 41), (41, n)]
    first, diag, last = (np.empty(n, np.int32) for _ in range(3))
    assert all(sweeps.row_positions(crow, cols, lo, hi, first, diag, last) == 0 for lo, hi in blocks)
    s = (1.0 / np.sqrt(np.diag(a))).astype(np.float32)
    v = rng.normal(size=n).astype(np.float32)
    t, st, out, sz = (np.zeros(n, np.float32) for _ in range(4))
    for lo, hi in blocks:
        sweeps.backward_sweep(cols, vals, diag, last, s, v, lo, hi, t, st)
    for lo, hi in blocks:
        sweeps.forward_sweep(crow, cols, vals, first, diag, last, s, v, t, st, lo, hi, out, sz)
    expected = _split_operator(a, blocks) @ v
    assert np.abs(out - expected).max() < 1e-4 * np.abs(expected).max()
    # the same operator from the upper triangle alone: lower triangles read as columns, and the couplings to
    # earlier blocks scattered before the forward sweeps
    up = torch.from_numpy(np.triu(a)).float().to_sparse_csr()
    ucrow, ucols, uvals = (t.numpy() for t in (up.crow_indices().int(), up.col_indices().int(), up.values()))
    ufirst, udiag = np.empty(n, np.int32), np.empty(n, np.int32)
    assert all(sweeps.row_positions(ucrow, ucols, lo, hi, ufirst, udiag, last) == 0 for lo, hi in blocks)
    assert np.array_equal(udiag, ucrow[:-1]) and np.array_equal(ufirst, udiag)  # each row starts at its diagonal
    leaving = np.flatnonzero(last < ucrow[1:])
    assert leaving.size > 0 and (leaving < 41).all()  # rows of the first two blocks reach later ones
    t, st, out, g = (np.zeros(n, np.float32) for _ in range(4))
    for lo, hi in blocks:
        sweeps.backward_sweep(ucols, uvals, ucrow[:-1], last, s, v, lo, hi, t, st)
    sweeps.leaving_couplings(ucrow, ucols, uvals, last, leaving, st, g)
    for lo, hi in blocks:
        sweeps.forward_sweep_upper(ucrow, ucols, uvals, last, s, v, t, st, lo, hi, out, g)
    assert np.abs(out - expected).max() < 1e-4 * np.abs(expected).max()
    assert not g.any()  # the scratch is zero again for the next product
    # the residual's map back, S^-1 (I + L) v, both ways
    scaled = s[:, None] * a * s[None, :]
    lower = np.zeros_like(a)
    for lo, hi in blocks:
        lower[lo:hi, lo:hi] = np.tril(scaled[lo:hi, lo:hi], -1)
    mapped = (v + lower @ v) / s
    for lo, hi in blocks:
        sweeps.lower_product(cols, vals, first, diag, s, v, lo, hi, out)
    assert np.abs(out - mapped).max() < 1e-4 * np.abs(mapped).max()
    out[:] = 0.0
    for lo, hi in blocks:
        sweeps.lower_product_upper(ucrow, ucols, uvals, last, s, v, lo, hi, out)
    assert np.abs(out - mapped).max() < 1e-4 * np.abs(mapped).max()
    # a row without its diagonal entry, or with its columns out of order, is found, so that the solve never
    # sweeps wrong triangles
    holed = a.copy()
    holed[5, 5] = 0.0
    h = torch.from_numpy(holed).float().to_sparse_csr()
    assert sweeps.row_positions(h.crow_indices().int().numpy(), h.col_indices().int().numpy(), 0, n, first, diag,
                                last) == sweeps.NO_DIAGONAL
    swapped = cols.copy()
    swapped[crow[5]], swapped[crow[5] + 1] = cols[crow[5] + 1], cols[crow[5]]
    assert sweeps.row_positions(crow, swapped, 0, n, first, diag, last) == sweeps.UNSORTED


@pytest.mark.parametrize("block_rows", [100_000, 1000], ids=["one block", "blocks"])
@pytest.mark.parametrize("upper", [True, False], ids=["upper triangle", "whole matrix"])
def test_gauss_seidel_solve_meets_the_tolerance_in_fewer_iterations(block_rows: int, upper: bool,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """On a real level (rows in increasing column order, as the sweeps need), the swept solve stops at the
    same true residual as Jacobi's (|b - A x| <= tol |b|, measured here) after fewer iterations, and lands
    on the same solution within the tolerance's reach; from the assembly's upper triangle as from the whole."""
    from engine.solver import cg

    monkeypatch.setattr(cg, "BLOCK_ROWS", block_rows)
    system = _level_system()
    assert system.upper
    a, b = system.full(), system.rhs
    stored = system.matrix if upper else a
    crow, cols = a.crow_indices().numpy(), a.col_indices().numpy()
    rows = np.repeat(np.arange(len(b)), np.diff(crow))
    assert ((cols[1:] > cols[:-1]) | (rows[1:] != rows[:-1])).all()  # the sweeps' premise: sorted rows
    assert len(b) > 3 * block_rows or block_rows > len(b)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # three blocks where they are allowed
        for tol in (1e-3, 1e-5):
            jacobi = pcg(csr_matvec(a), b, 1.0 / system.diagonal, tol, 2000)
            swept = sgs_pcg(stored, b, system.diagonal, tol, 2000, upper=upper)
            true = float(torch.linalg.vector_norm(b - a @ swept.x) / torch.linalg.vector_norm(b))
            assert true <= tol and swept.residual == pytest.approx(true, rel=1e-3)
            assert swept.iterations < 0.6 * jacobi.iterations, (swept.iterations, jacobi.iterations)
            assert float(torch.linalg.vector_norm(swept.x - jacobi.x) / torch.linalg.vector_norm(jacobi.x)) < 50 * tol
    finally:
        torch.set_num_threads(before)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_gauss_seidel_solve_of_unsorted_rows_a_missing_diagonal_or_a_zero_rhs() -> None:
    """A CSR matrix whose columns are not in order is solved by Jacobi's CG, still to the tolerance; one missing a
    diagonal entry is named in the error (the sweeps would read wrong triangles); b = 0 gives x = 0 at once."""
    a, b = _system(30)
    csr = a.to_sparse_csr()
    cols, vals = csr.col_indices().clone(), csr.values().clone()
    cols[0:2], vals[0:2] = cols[0:2].flip(0), vals[0:2].flip(0)  # the same matrix, row 0 out of order
    shuffled = torch.sparse_csr_tensor(csr.crow_indices().int(), cols.int(), vals, size=a.shape,
                                       check_invariants=False)
    result = sgs_pcg(shuffled, b, torch.diagonal(a).contiguous(), 1e-5, 500)
    assert float(torch.linalg.vector_norm(a @ result.x - b) / torch.linalg.vector_norm(b)) <= 1e-5
    holed = a.clone()
    holed[7, 7] = 0.0
    with pytest.raises(ValueError, match="diagonal"):
        sgs_pcg(holed.to_sparse_csr(), b, torch.diagonal(a).contiguous(), 1e-5, 500)
    zero = sgs_pcg(a.to_sparse_csr(), torch.zeros(30), torch.diagonal(a).contiguous(), 1e-5, 500)
    assert zero.iterations == 0 and not zero.x.any()
    # the same for a matrix stored as its upper triangle: out of order, Jacobi on its completion; holed, refused
    up = torch.triu(a).to_sparse_csr()
    ucols, uvals = up.col_indices().clone(), up.values().clone()
    ucols[1:3], uvals[1:3] = ucols[1:3].flip(0), uvals[1:3].flip(0)
    upper = torch.sparse_csr_tensor(up.crow_indices().int(), ucols.int(), uvals, size=a.shape, check_invariants=False)
    result = sgs_pcg(upper, b, torch.diagonal(a).contiguous(), 1e-5, 500, upper=True)
    assert float(torch.linalg.vector_norm(a @ result.x - b) / torch.linalg.vector_norm(b)) <= 1e-5
    with pytest.raises(ValueError, match="diagonal"):
        sgs_pcg(torch.triu(holed).to_sparse_csr(), b, torch.diagonal(a).contiguous(), 1e-5, 500, upper=True)
    with pytest.raises(ValueError, match="below its diagonal"):  # the whole matrix, said to be its upper triangle
        sgs_pcg(a.to_sparse_csr(), b, torch.diagonal(a).contiguous(), 1e-5, 500, upper=True)
