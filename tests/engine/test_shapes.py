"""Closed shapes sampled with exact normals come back closed, manifold, in one piece and on the surface."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from engine import reconstruct
from engine.options import SPECS
from engine.solver.fitting import COARSE_TOL
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
    assert s["solver_residual"][-1] <= SPECS["solver_tol"].default
    assert all(r <= COARSE_TOL for r in s["solver_residual"])
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


# --- the synthetic city scene (for chunked reconstruction): checked against its own layout ------------------------


@pytest.fixture(scope="module")
def city() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return shapes.city(200_000, seed=0)


def _city_classes(points: np.ndarray, normals: np.ndarray, lay: object) -> dict[str, np.ndarray]:
    """Which surface each point lies on, found from the geometry alone; each class checked exactly."""
    x, y, z = points.T
    h, hx, hy = shapes._city_height(lay, x, y)
    s = np.sqrt(1 + hx**2 + hy**2)
    exact = np.stack([-hx / s, -hy / s, 1 / s], 1)
    terrain = (np.abs(z - h) <= 1e-9) & (np.abs(normals - exact) <= 1e-12).all(axis=1)
    roof, wall, side, cap = (np.zeros(len(points), dtype=bool) for _ in range(4))
    up = normals[:, 2] == 1.0
    for x0, y0, x1, y1, zb, zr in lay.buildings:
        inx, iny, inz = (x >= x0) & (x <= x1), (y >= y0) & (y <= y1), (z >= zb) & (z <= zr)
        roof |= up & (z == zr) & inx & iny
        for axis, at, sign, along in ((0, x0, -1, iny), (0, x1, 1, iny), (1, y0, -1, inx), (1, y1, 1, inx)):
            wall |= (points[:, axis] == at) & (normals[:, axis] == sign) & (normals[:, 2] == 0) & along & inz
    for cx, cy, r, zb, zt in lay.poles:
        dx, dy = x - cx, y - cy
        on_axis = np.abs(np.hypot(dx, dy) - r) <= 1e-9
        radial = (np.abs(normals[:, 0] - dx / r) <= 1e-9) & (np.abs(normals[:, 1] - dy / r) <= 1e-9)
        radial &= normals[:, 2] == 0
        side |= on_axis & radial & (z >= zb) & (z <= zt)
        cap |= up & (z == zt) & (dx**2 + dy**2 <= r**2)
    return {"terrain": terrain & ~shapes._city_inside(lay, x, y), "wall": wall, "roof": roof, "side": side,
            "cap": cap}


def test_city_count_types_and_unit_normals(city: tuple) -> None:
    points, normals, colours = city
    assert points.shape == normals.shape == colours.shape == (200_000, 3)
    assert points.dtype == normals.dtype == np.float64 and colours.dtype == np.float32
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-12)
    assert colours.min() >= 0 and colours.max() <= 1
    assert (points[:, :2] >= 0).all() and (points[:, :2] <= 200).all()
    for n in (1, 7, 12_345):
        assert len(shapes.city(n, seed=2, size=60.0)[0]) == n


def test_city_points_lie_on_their_surfaces_at_one_density(city: tuple) -> None:
    points, normals, _ = city
    lay = shapes._city_layout(0, 200.0)
    b, p = lay.buildings, lay.poles
    assert len(b) == round(200**2 / 2500) and len(p) == round(200**2 / 1000)
    classes = _city_classes(points, normals, lay)
    assert (sum(c.astype(int) for c in classes.values()) == 1).all()  # every point on exactly one surface
    # buildings stand on the terrain: walls reach below it all round, roofs are above it
    w, d = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    assert (w >= 8).all() and (w <= 25).all() and (d >= 8).all() and (d <= 25).all()
    assert (b[:, :2] >= 10).all() and (b[:, 2:4] <= 190).all()
    u = np.linspace(0, 1, 101)
    for x0, y0, x1, y1, zb, zr in b:
        rim = shapes._city_height(lay, np.r_[x0 + (x1 - x0) * u, x0 + (x1 - x0) * u, 0 * u + x0, 0 * u + x1],
                                  np.r_[0 * u + y0, 0 * u + y1, y0 + (y1 - y0) * u, y0 + (y1 - y0) * u])[0]
        assert zb <= rim.min() - 0.5 + 1e-3 and 6 <= zr - rim.max() <= 30
    # poles: thin, 5-9 m tall, clear of the buildings, reaching below the ground
    assert (p[:, 2] >= 0.15).all() and (p[:, 2] <= 0.25).all()
    ground = shapes._city_height(lay, p[:, 0], p[:, 1])[0]
    assert (p[:, 4] - ground >= 5).all() and (p[:, 4] - ground <= 9).all() and (p[:, 3] < ground - 0.4).all()
    for x0, y0, x1, y1, _, _ in b:
        assert not ((p[:, 0] > x0 - 1) & (p[:, 0] < x1 + 1) & (p[:, 1] > y0 - 1) & (p[:, 1] < y1 + 1)).any()
    # one density everywhere: points per square metre on roofs, walls, poles and terrain agree
    wall_h, pole_h = b[:, 5] - b[:, 4], p[:, 4] - p[:, 3]
    areas = {"roof": (w * d).sum(), "wall": (2 * (w + d) * wall_h).sum(), "side": (2 * np.pi * p[:, 2] * pole_h).sum(),
             "cap": (np.pi * p[:, 2] ** 2).sum()}
    # the terrain's sloped area from its samples: planar area / mean(n_z), as they are uniform by sloped area
    planar = 200.0**2 - (w * d).sum() - areas["cap"]
    areas["terrain"] = planar / normals[classes["terrain"], 2].mean()
    density = len(points) / (lay.terrain_area + sum(v for k, v in areas.items() if k != "terrain"))
    assert classes["terrain"].sum() / areas.pop("terrain") == pytest.approx(density, rel=0.01)
    surfaces = {"roof": len(b), "wall": 4 * len(b), "side": len(p), "cap": len(p)}
    for name, area in areas.items():  # n is split over the surfaces by area: each count is off by under one
        assert abs(classes[name].sum() - density * area) < surfaces[name], name
    assert 0 < classes["side"].sum() < 0.01 * len(points)  # poles are present, and thin


def test_city_terrain_is_cut_out_under_buildings_and_poles(city: tuple) -> None:
    points, normals, _ = city
    lay = shapes._city_layout(0, 200.0)
    x, y, z = points.T
    h = shapes._city_height(lay, x, y)[0]
    on_ground = np.abs(z - h) <= 1e-9
    assert not shapes._city_inside(lay, x[on_ground], y[on_ground]).any()
    for x0, y0, x1, y1, _, _ in lay.buildings:
        assert not (on_ground & (x > x0) & (x < x1) & (y > y0) & (y < y1)).any()


def test_city_layout_does_not_depend_on_n_and_is_deterministic() -> None:
    def roofs_and_caps(n: int) -> set[float]:
        points, normals, _ = shapes.city(n, seed=5)
        return set(np.unique(points[normals[:, 2] == 1.0, 2]).tolist())

    lay = shapes._city_layout(5, 200.0)
    roofs, caps = set(lay.buildings[:, 5].tolist()), set(lay.poles[:, 4].tolist())
    # the poles' caps are tiny (a few points or none): roofs are compared exactly, caps only as a subset
    small, large = roofs_and_caps(30_000), roofs_and_caps(300_000)
    assert small - caps == large - caps == roofs
    assert small | large <= roofs | caps and len(large & caps) > len(small & caps)
    a, b = shapes.city(20_000, seed=5), shapes.city(20_000, seed=5)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    c = shapes.city(20_000, seed=6)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(lay.buildings, shapes._city_layout(6, 200.0).buildings)
