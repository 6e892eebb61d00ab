"""Marching cubes over sparse refined cells gives a closed, manifold, outward mesh of an analytic field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.surface.mc_table import CORNERS, EDGES, TRIANGLES
from engine.surface.meshing import candidate_cells, marching_cubes
from tests.meshcheck import boundary_edges, components, inconsistent_edges, non_manifold_edges, signed_volume


def test_table_uses_only_crossing_edges() -> None:
    for case in range(256):
        inside = [(case >> k) & 1 for k in range(8)]
        for tri in TRIANGLES[case]:
            for e in tri[tri >= 0]:
                a, b = EDGES[e]
                assert inside[a] != inside[b]
    assert (TRIANGLES[0] < 0).all() and (TRIANGLES[255] < 0).all()


def test_sphere_field_meshes_closed() -> None:
    centre, radius = torch.tensor([0.3, -0.2, 0.1]), 7.3

    def field(p: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(p - centre, dim=1) - radius

    start = torch.stack(torch.meshgrid(*[torch.arange(-2, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    cells, size, values = candidate_cells(start, 4.0, 3, field)
    assert size == 0.5
    assert torch.allclose(values, field((cells[:, None, :] + torch.tensor(CORNERS)).reshape(-1, 3) * size).view(-1, 8))
    verts, faces, _ = marching_cubes(cells, size, values)
    v, f = verts.double().numpy(), faces.numpy()
    assert boundary_edges(f) == 0 and non_manifold_edges(f) == 0 and inconsistent_edges(f) == 0
    assert components(len(v), f) == 1
    r = np.linalg.norm(v - centre.numpy(), axis=1)
    assert np.abs(r - radius).max() < 0.02
    assert abs(signed_volume(v, f) - 4 / 3 * np.pi * radius**3) < 0.01 * 4 / 3 * np.pi * radius**3


def test_two_close_spheres_stay_separate() -> None:
    """Thin gaps (less than a coarse cell) survive the coarse-to-fine refinement."""
    a, b, radius = torch.tensor([-3.6, 0.0, 0.0]), torch.tensor([3.6, 0.0, 0.0]), 3.3

    def field(p: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.linalg.vector_norm(p - a, dim=1), torch.linalg.vector_norm(p - b, dim=1)) - radius

    start = torch.stack(torch.meshgrid(*[torch.arange(-2, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    cells, size, values = candidate_cells(start, 4.0, 3, field)
    verts, faces, _ = marching_cubes(cells, size, values)
    assert components(len(verts), faces.numpy()) == 2
    assert boundary_edges(faces.numpy()) == 0


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_compiled_marching_cubes_equals_torch(threads: int) -> None:
    """The numba marching cubes gives torch's vertices, faces and vertex edges bit for bit, on any thread count:
    on a sphere at a dyadic and a non-dyadic cell size, and on random corner values over scattered cells (every
    case; cells sharing an edge disagree on its values, so the first cell's values must win in both)."""
    centre, radius = torch.tensor([0.3, -0.2, 0.1]), 7.3

    def field(p: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(p - centre, dim=1) - radius

    start = torch.stack(torch.meshgrid(*[torch.arange(-2, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    cells, size, values = candidate_cells(start, 4.0, 3, field)
    rng = np.random.default_rng(5)
    scattered = torch.from_numpy(rng.integers(-6, 6, size=(3000, 3)))
    noise = torch.from_numpy(rng.uniform(-1, 1, size=(3000, 8)).astype(np.float32))
    cases = ((noise < 0).to(torch.int64) * 2 ** torch.arange(8)).sum(dim=1)
    assert cases.unique().numel() > 250
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for c, s, v in ((cells, size, values), (cells, 0.3, values), (scattered, 0.7, noise)):
            reference = marching_cubes(c, s, v, compiled=False)
            compiled = marching_cubes(c, s, v, compiled=True)
            assert reference[1].shape[0] > 100
            for a, b in zip(reference, compiled, strict=True):
                assert a.dtype == b.dtype and torch.equal(a, b)
    finally:
        torch.set_num_threads(old)


def test_mesh_edges_are_blenders_layout() -> None:
    """Unique undirected edges, and per corner the edge to the next corner of its face."""
    from engine.mesh import mesh_edges

    rng = np.random.default_rng(0)
    faces = rng.integers(0, 50, size=(300, 3)).astype(np.int32)
    edges, corner_edges = mesh_edges(faces, 50)
    assert edges.dtype == np.int32 and corner_edges.dtype == np.int32 and corner_edges.shape == (900,)
    pairs = {tuple(sorted(p)) for f in faces.tolist() for p in zip(f, f[1:] + f[:1], strict=True)}
    assert {tuple(e) for e in edges.tolist()} == pairs and len(edges) == len(pairs)
    corners = faces.reshape(-1)
    following = np.roll(faces, -1, axis=1).reshape(-1)
    got = np.sort(edges[corner_edges], axis=1)
    assert (got == np.sort(np.stack([corners, following], axis=1), axis=1)).all()


def _sphere_levels() -> list:
    """Three levels around a sphere's points; each level's coefficients a third of the signed distance at its voxel
    centres plus a wiggle, so that the summed field is about the distance (no stray crossings) but not exactly."""
    from engine.solver.hierarchy import build_levels

    rng = np.random.default_rng(3)
    d = rng.normal(size=(4000, 3))
    centre, radius = torch.tensor([0.4, -0.3, 0.2]), 9.7
    x = torch.from_numpy(d / np.linalg.norm(d, axis=1, keepdims=True)).float() * radius + centre
    levels = build_levels(x, 3)
    for level in levels:
        mid = (level.ijk.float() + 0.5) * level.size
        sdf = torch.linalg.vector_norm(mid - centre, dim=1) - radius
        level.set_coeffs(sdf / 3 + 0.05 * torch.sin(mid.sum(dim=1)))
    return levels


def test_grid_field_equals_the_field_at_the_lattice_points() -> None:
    from engine.solver.hierarchy import evaluate, evaluate_grid, lattice_points

    levels = _sphere_levels()
    cells = levels[0].ijk[::5]
    for size, n in ((1.0, 2), (1.0, 3), (0.5, 3), (0.25, 2)):
        c = cells * int(1 / size) + (1 if size < 1 else 0)  # cells of this size inside the band
        expected = evaluate(levels, lattice_points(c, size, n))[0].view(-1, n, n, n)
        got = evaluate_grid(levels, c, size, n)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())
    try:
        evaluate_grid(levels, cells, 2.0, 2)
    except ValueError as e:
        assert "at most one finest voxel" in str(e)
    else:
        raise AssertionError("a cell larger than the finest voxel was accepted")


def test_compiled_evaluation_equals_torch() -> None:
    """The numba contractions (the CPU default) give torch's values and gradients, on points and on lattices,
    points outside every level included (their taps are all absent: zero)."""
    from engine.solver.hierarchy import evaluate, evaluate_grid

    levels = _sphere_levels()
    rng = np.random.default_rng(5)
    inside = levels[0].ijk[::3].float() + torch.from_numpy(rng.random((levels[0].ijk[::3].shape[0], 3))).float()
    x = torch.cat((inside, torch.tensor([[500.0, 0.0, 0.0], [-0.5, 0.25, 3.0]])))
    for with_grad in (False, True):
        v0, g0 = evaluate(levels, x, with_grad, compiled=False)
        v1, g1 = evaluate(levels, x, with_grad, compiled=True)
        assert torch.allclose(v0, v1, atol=2e-6), float((v0 - v1).abs().max())
        assert v1[-2] == 0.0 and float(v0.abs().max()) > 1.0
        if with_grad:
            assert g0 is not None and g1 is not None
            assert torch.allclose(g0, g1, atol=2e-6), float((g0 - g1).abs().max())
            assert float(g1.norm(dim=1).max()) > 0.1
        else:
            assert g0 is None and g1 is None
    cells = levels[0].ijk[::4]
    for size, n in ((1.0, 2), (0.5, 3), (0.25, 2)):
        c = cells * int(1 / size) + (1 if size < 1 else 0)
        a, b = evaluate_grid(levels, c, size, n, compiled=False), evaluate_grid(levels, c, size, n, compiled=True)
        assert a.shape == b.shape == (c.shape[0], n, n, n)
        assert torch.allclose(a, b, atol=2e-6), float((a - b).abs().max())


def test_compiled_tap_table_equals_torch_gather() -> None:
    """Each voxel's 27 neighbours' coefficients gathered by the numba kernel (the CPU default, on the kernel
    threads) are torch's gather exactly, absent neighbours (-1) included as 0."""
    levels = _sphere_levels()
    for level in levels:
        assert level.coeffs is not None
        coeffs = level.coeffs.clone()
        level.set_coeffs(coeffs, compiled=False)
        reference = level._tap_coeffs
        level.set_coeffs(coeffs, compiled=True)
        got = level._tap_coeffs
        assert reference is not None and got is not None and got.shape == (len(level), 27)
        assert torch.equal(got, reference)
        absent = level.neighbours < 0
        assert bool(absent.any()) and bool((got[absent] == 0).all())  # the band's edge has absent neighbours
        assert bool((got[~absent] != 0).any())


def test_compiled_tap_coefficients_equal_torch_lookup() -> None:
    """The 27 coefficients around cells, looked up and gathered in one numba pass (the CPU default), are torch's
    exactly: for cells that are voxels of the level, cells just outside its band (some of their 27 voxels
    exist) and cells far from it (none do: all 0)."""
    levels = _sphere_levels()
    for level in levels:
        inside = level.ijk[::2]
        rim = level.ijk[::7] + torch.tensor([3, -2, 1])
        far = torch.tensor([[10_000, 0, 0], [-500, 7, 3]])
        cells = torch.cat((inside, rim, far))
        a, b = level.tap_coeffs(cells, compiled=False), level.tap_coeffs(cells, compiled=True)
        assert a.shape == b.shape == (cells.shape[0], 27) and b.dtype == torch.float32
        assert torch.equal(a, b)
        outside = level.index.lookup(cells) < 0
        assert int(outside[inside.shape[0]:-2].sum()) > 0 and bool((b[outside].abs().sum(dim=1) > 0).any())
        assert bool((b[-2:] == 0).all())


def test_grid_corners_give_the_same_cells_and_values_as_the_field() -> None:
    """Meshing with the lattice shortcut keeps exactly the cells and corner values of the pointwise field."""
    from engine.solver.hierarchy import evaluate, evaluate_grid

    levels = _sphere_levels()

    def field(p: torch.Tensor) -> torch.Tensor:
        return evaluate(levels, p)[0]

    def grid(cells: torch.Tensor, size: float, n: int) -> torch.Tensor:
        calls.append((size, n))
        return evaluate_grid(levels, cells, size, n)

    for start, rounds in ((levels[0], 1), (levels[0], 0), (levels[0], 2), (levels[2], 3)):
        calls: list[tuple[float, int]] = []
        c0, s0, v0 = candidate_cells(start.ijk, start.size, start.depth + rounds, field)
        c1, s1, v1 = candidate_cells(start.ijk, start.size, start.depth + rounds, field, grid)
        assert s0 == s1 and c0.shape[0] > 100
        assert torch.equal(c0, c1)
        assert torch.allclose(v0, v1, atol=1e-5)
        assert calls and all(size <= 1.0 for size, _ in calls)
        assert ((1.0, 3) in calls) == (s0 < 1.0)  # children below the finest voxel: from the lattice
