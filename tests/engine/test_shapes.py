"""Closed shapes sampled with exact normals come back closed, manifold, in one piece and on the surface."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from engine import reconstruct
from tests import shapes
from tests.meshcheck import boundary_edges, components, inconsistent_edges, non_manifold_edges, signed_volume

Sampler = Callable[..., tuple[np.ndarray, np.ndarray]]
Distance = Callable[[np.ndarray], np.ndarray]
CASES: dict[str, tuple[Sampler, Distance, float, float]] = {
    # name: sampler, exact signed distance, mean and max |distance| allowed, as fractions of the voxel size
    "sphere": (shapes.sphere, shapes.sphere_sdf, 0.02, 0.1),
    "torus": (shapes.torus, shapes.torus_sdf, 0.03, 0.15),
    # the box's edges and corners are sharp: the smooth field rounds them off by up to about a voxel
    "box": (shapes.box, shapes.box_sdf, 0.06, 0.8),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def result(request: pytest.FixtureRequest) -> tuple[str, np.ndarray, object]:
    sampler, _, _, _ = CASES[request.param]
    points, normals = sampler(12_000)
    return request.param, points, reconstruct(points, normals, device="cpu")


def test_vertices_lie_on_the_true_surface(result: tuple) -> None:
    name, _, mesh = result
    _, sdf, mean_frac, max_frac = CASES[name]
    d = np.abs(sdf(mesh.vertices64))
    h = mesh.stats["voxel_size"]
    assert d.mean() < mean_frac * h, (d.mean() / h)
    assert d.max() < max_frac * h, (d.max() / h)


def test_mesh_is_closed_manifold_and_one_piece(result: tuple) -> None:
    _, _, mesh = result
    assert len(mesh.faces) > 1000
    assert boundary_edges(mesh.faces) == 0
    assert non_manifold_edges(mesh.faces) == 0
    assert inconsistent_edges(mesh.faces) == 0
    assert components(len(mesh.vertices), mesh.faces) == 1


def test_orientation_is_outward(result: tuple) -> None:
    name, _, mesh = result
    _, sdf, _, _ = CASES[name]
    assert signed_volume(mesh.vertices64, mesh.faces) > 0
    # vertex normals agree with the gradient of the exact distance
    x = mesh.vertices64
    eps = 1e-4
    grad = np.stack([(sdf(x + eps * e) - sdf(x - eps * e)) / (2 * eps) for e in np.eye(3)], axis=1)
    grad /= np.linalg.norm(grad, axis=1, keepdims=True)
    cos = np.einsum("ij,ij->i", grad, mesh.normals)
    assert np.median(cos) > 0.99
    assert (cos > 0).mean() > 0.99


def test_stats_describe_the_run(result: tuple) -> None:
    _, points, mesh = result
    s = mesh.stats
    assert s["points_in"] == len(points) == s["points_used"]
    assert s["vertices"] == len(mesh.vertices) and s["faces"] == len(mesh.faces)
    assert s["unknowns"] == sum(s["levels"]) > 0
    # levels are solved coarse to fine: the finest to solver_tol, the coarser ones only as a start
    assert s["solver_residual"][-1] <= 1e-5
    assert all(r <= 1e-3 for r in s["solver_residual"])
    assert set(s["seconds"]) >= {"clean", "resolution", "hierarchy", "system", "solve", "mesh", "trim", "colors"}
    assert mesh.faces.dtype == np.int32 and mesh.vertices.dtype == np.float32


def test_field_sign_inside_is_negative() -> None:
    """The documented convention: the fitted field is negative inside, positive outside."""
    from engine.pipeline import fit_field

    points, normals = shapes.sphere(4000)
    field = fit_field(points, normals)
    inside = field(np.array([[0.0, 0.0, 0.5], [0.3, 0.0, 0.0]]))
    outside = field(np.array([[0.0, 0.0, 1.3], [1.2, 0.0, 0.0]]))
    assert (inside < 0).all() and (outside > 0).all()
