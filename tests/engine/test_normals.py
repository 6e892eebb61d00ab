"""Clouds without normals: estimated normals agree with the true ones, and so do the meshes made from them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

import engine.solver.knn as knn_module
import engine.warm as warm
from engine import Cancelled, estimate_normals, reconstruct
from engine.errors import InputError, ShapeMismatchError
from engine.mesh import Mesh
from engine.solver import kernels
from engine.solver.knn import PointTree, grid_knn
from engine.solver.normals import (
    Edges,
    ascending,
    estimate_oriented,
    given_normals_tilt,
    line_ratios,
    morton_order,
    pca_normals,
    sorted_neighbours,
    tree_signs,
)
from tests import shapes
from tests.meshcheck import signed_volume, surface_gaps

Sampler = Callable[..., tuple[np.ndarray, np.ndarray]]


def slab(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A thin box (thickness 0.1 of its width): the neighbour graph must not jump between its two sides."""
    return shapes.box(n, half=(1.0, 1.0, 0.05), seed=seed)


def two_spheres(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two separate closed pieces: each must come out facing outward on its own."""
    p, nrm = shapes.sphere(n, seed=seed)
    p[: n // 2, 0] += 3.0
    return p, nrm


CLOSED: dict[str, Sampler] = {"sphere": shapes.sphere, "torus": shapes.torus, "box": shapes.box,
                              "blob": shapes.blob, "slab": slab, "two spheres": two_spheres}


def agreement(est: np.ndarray, true: np.ndarray) -> float:
    """Share of points whose estimated normal points to the same side as the true one (zero rows count as wrong)."""
    return float(((est * true).sum(axis=1) > 0).mean())


def mean_angle(est: np.ndarray, true: np.ndarray) -> float:
    """Mean angle in degrees between the normal lines (orientation aside) over the estimated rows."""
    ok = np.linalg.norm(est, axis=1) > 0
    cos = np.abs((est[ok] * true[ok]).sum(axis=1))
    return float(np.degrees(np.arccos(np.clip(cos, 0, 1))).mean())


@pytest.mark.parametrize("name", sorted(CLOSED))
def test_estimated_normals_are_oriented_outward(name: str) -> None:
    points, true = CLOSED[name](20_000)
    est, stats = estimate_normals(points, device="cpu")
    assert est.shape == points.shape and est.dtype == np.float32
    assert agreement(est, true) >= 0.995, agreement(est, true)
    assert mean_angle(est, true) < (8.0 if name in ("box", "slab") else 3.0)  # PCA rounds sharp edges
    assert stats["normals_orientation"] == "propagation" and stats["normal_k"] == 12
    assert stats["normals_doubtful"] <= 0.005 * len(points)
    assert stats["normals_pieces"] == (2 if name == "two spheres" else 1)


def test_open_terrain_faces_up() -> None:
    points, true = shapes.terrain(20_000)
    est, stats = estimate_normals(points, device="cpu")
    assert agreement(est, true) >= 0.995
    assert stats["normals_pieces"] == 1


def test_orientation_does_not_depend_on_position_scale_or_order() -> None:
    points, true = shapes.blob(10_000)
    perm = np.random.default_rng(3).permutation(len(points))
    est, _ = estimate_normals(points[perm] * 1e-3 + np.array([5e5, -2e5, 1e3]), device="cpu")
    assert agreement(est, true[perm]) >= 0.995


def test_noisy_scan_fits_planes_wider_than_the_noise() -> None:
    """Noise of 2% of the radius: planes fitted on a subsample span several times the noise."""
    from engine.solver.resolution import measure

    points, true = shapes.sphere(40_000)
    noisy = points + np.random.default_rng(1).normal(scale=0.02, size=points.shape)
    est, stats = estimate_normals(noisy, device="cpu")
    assert stats["normals_fit_fraction"] < 0.7  # planes fitted on a subsample, carried to every point
    assert agreement(est, true) >= 0.995
    # k = 12 on all the points fits the noise: 35 degrees mean error (and 10% wrong signs) against 6
    scale = 1.0 / float(np.linalg.norm(noisy.max(0) - noisy.min(0)))
    canon = torch.from_numpy((noisy * scale).astype(np.float32))
    density, noise = measure(canon.numpy())
    assert estimate_oriented(canon, density=density, noise=noise).fraction < 0.7
    plain = estimate_oriented(canon).normals.numpy()  # no noise given: every point fits its own k neighbours
    assert mean_angle(est, true) < 0.5 * mean_angle(plain, true)


def test_single_viewpoint_orients_towards_it() -> None:
    points, true = shapes.terrain(10_000)
    up, _ = estimate_normals(points, sensor=[0.0, 0.0, 5.0], device="cpu")
    down, stats = estimate_normals(points, sensor=np.array([0.0, 0.0, -5.0]), device="cpu")
    assert agreement(up, true) >= 0.995 and agreement(down, -true) >= 0.995
    assert stats["normals_orientation"] == "sensor"


def test_per_point_sensors() -> None:
    """Sensors on the outside of a thin slab, each seeing its point within 60 degrees of its normal."""
    points, true = slab(20_000)
    rng = np.random.default_rng(2)
    tilt = rng.normal(size=points.shape)
    tilt -= (tilt * true).sum(1, keepdims=True) * true
    sensors = points + 3.0 * (true + 0.5 * tilt / np.linalg.norm(tilt, axis=1, keepdims=True))
    est, stats = estimate_normals(points, sensor=sensors, device="cpu")
    assert agreement(est, true) >= 0.995
    assert stats["normals_orientation"] == "sensor"
    inverted, _ = estimate_normals(points, sensor=points - (sensors - points), device="cpu")
    assert agreement(inverted, -true) >= 0.995  # the sensor decides, even against "outward"


@pytest.mark.slow
def test_grazing_views_are_dropped_and_counted() -> None:
    """Seen from far above, the sides of a box are edge-on: their sign is a guess, so they are left out."""
    points, true = shapes.box(20_000)
    sensor = np.array([0.0, 0.0, 100.0])
    est, stats = estimate_normals(points, sensor=sensor, device="cpu")
    side = np.abs(true[:, 2]) < 0.5
    top = true[:, 2] > 0.5
    left_out = np.linalg.norm(est, axis=1) == 0
    assert stats["normals_grazing"] >= 0.9 * side.sum()
    assert stats["normals_doubtful"] == left_out.sum() >= 0.5 * side.sum()
    assert not left_out[top].any() and agreement(est[top], true[top]) == 1.0
    mesh = reconstruct(points, None, sensor=sensor, device="cpu", trim=False)
    assert mesh.stats["normals_doubtful"] == stats["normals_doubtful"]
    assert mesh.stats["points_used"] == len(points) - stats["normals_doubtful"]
    assert "doubtful" in mesh.stats["warnings"][0]


def mesh_gap(a: Mesh, b: Mesh) -> tuple[float, float]:
    """Mean and 99th percentile of the distances from each mesh's vertices to the other's surface."""
    d = np.concatenate(surface_gaps((a.vertices64, a.faces), (b.vertices64, b.faces)))
    return float(d.mean()), float(np.quantile(d, 0.99))


MESHES: dict[str, Sampler] = {"torus": shapes.torus, "box": shapes.box, "blob": shapes.blob,
                              "terrain": shapes.terrain}


@pytest.mark.parametrize("name", sorted(MESHES))
def test_mesh_without_normals_matches_the_one_with_true_normals(name: str) -> None:
    points, true = MESHES[name](8000)
    ref = reconstruct(points, true, device="cpu")
    mesh = reconstruct(points, device="cpu")
    h = ref.stats["voxel_size"]
    assert mesh.stats["voxel_size"] == h and mesh.stats["normals_estimated"]
    assert mesh.stats["normals_source"] == "missing" and "normals" in mesh.stats["seconds"]
    mean, p99 = mesh_gap(ref, mesh)
    assert mean < 0.1 * h and p99 < 0.5 * h, (mean / h, p99 / h)  # box: PCA rounds the sharp edges a little
    if name != "terrain":
        assert signed_volume(mesh.vertices64, mesh.faces) > 0  # outward
    else:
        assert mesh.normals is not None and (mesh.normals[:, 2] > 0).mean() > 0.99  # up


def test_inward_given_normals_give_the_same_surface_inside_out() -> None:
    """Given normals are respected: pointing inward, the surface is the same and its faces wind the other way."""
    points, true = shapes.sphere(5000)
    out = reconstruct(points, true, device="cpu")
    inward = reconstruct(points, -true, device="cpu")
    h = out.stats["voxel_size"]
    # The same mesh as meshed; simplification may collapse a few edges differently on the other winding.
    assert inward.stats["faces_before_simplify"] == out.stats["faces_before_simplify"]
    mean, p99 = mesh_gap(inward, out)  # the simplification's own bound: SIMPLIFY_TOLERANCE voxel
    assert mean < 0.01 * h and p99 < 0.05 * h, (mean / h, p99 / h)
    assert signed_volume(out.vertices64, out.faces) > 0 > signed_volume(inward.vertices64, inward.faces)
    assert not inward.stats["normals_estimated"]
    # estimation forced: the inward normals are ignored and the result faces outward again
    forced = reconstruct(points, -true, device="cpu", estimate_normals=True)
    assert forced.stats["normals_source"] == "forced"
    assert signed_volume(forced.vertices64, forced.faces) > 0
    assert mesh_gap(out, forced)[0] < 0.1 * h


def test_stacked_duplicates_have_no_plane_and_are_left_out() -> None:
    points, true = shapes.sphere(5000)
    points = np.concatenate([points, np.repeat(points[:1], 30, axis=0)])
    est, stats = estimate_normals(points, device="cpu")
    assert np.isfinite(est).all()
    left_out = np.linalg.norm(est, axis=1) == 0
    assert stats["normals_doubtful"] == left_out.sum() and left_out[5000:].all()
    assert agreement(est[1:5000], true[1:5000]) >= 0.995


def test_all_zero_normals_mean_none() -> None:
    points, _ = shapes.sphere(3000)
    mesh = reconstruct(points, np.zeros_like(points), device="cpu")
    assert mesh.stats["normals_estimated"] and mesh.stats["normals_source"] == "all zero"
    assert mesh.stats["points_used"] == len(points)


def test_progress_has_a_normals_stage_and_cancel_stops_it() -> None:
    points, _ = shapes.sphere(3000)
    seen: list[tuple[str, float]] = []
    reconstruct(points, device="cpu", progress=lambda stage, f, text: seen.append((stage, f)))
    fractions = [f for stage, f in seen if stage == "normals"]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and len(fractions) > 4
    with pytest.raises(Cancelled):
        reconstruct(points, device="cpu", cancel=lambda: any(stage == "normals" for stage, _ in seen[-1:]),
                    progress=lambda stage, f, text: seen.append((stage, f)))
    assert seen[-1][0] == "normals"


def test_bad_options() -> None:
    points, _ = shapes.sphere(500)
    with pytest.raises(InputError, match="normal_k"):
        reconstruct(points, device="cpu", normal_k=2)
    with pytest.raises(ShapeMismatchError, match="sensor must have shape"):
        reconstruct(points, device="cpu", sensor=np.zeros((10, 3)))
    with pytest.raises(InputError, match="NaN"):
        estimate_normals(points, sensor=[0.0, np.nan, 1.0])


def test_tree_within_is_the_nearest_distance_at_most_the_radius() -> None:
    """PointTree.within (a search bounded by the radius) marks exactly the queries whose nearest point is at most
    the radius away, a point at exactly the radius included."""
    rng = np.random.default_rng(4)
    p = rng.normal(size=(3000, 3))
    q = np.concatenate([rng.normal(scale=1.5, size=(4000, 3)), p[:5] + [0.25, 0.0, 0.0]])
    tree = PointTree(p)
    nearest = tree.query(q, 1)[0][:, 0]
    for radius in (0.05, 0.2, float(nearest[-1]), float(np.median(nearest))):
        mask = tree.within(q, radius)
        assert np.array_equal(mask, nearest <= radius) and 0 < mask.sum() < len(q)


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_tree_within_by_occupied_cells_is_exact(monkeypatch: pytest.MonkeyPatch, offset: float) -> None:
    """Queries whose cell holds a point skip the search: still exactly the queries whose nearest point is at most
    the radius away, near the cells' corners, at exactly the radius, and far from the origin (rounding)."""
    import engine.solver.knn as knn

    calls: list[int] = []
    real = knn._occupied
    monkeypatch.setattr(knn, "OCCUPIED_MIN", 1)
    monkeypatch.setattr(knn, "_occupied", lambda *a: calls.append(int(real(*a).sum())) or real(*a))
    rng = np.random.default_rng(5)
    p = rng.uniform(0, 1, size=(20000, 3)) + offset
    q = np.concatenate([rng.uniform(-0.05, 1.05, size=(20000, 3)) + offset, p[:50] + [0.01, 0.0, 0.0]])
    tree = PointTree(p)
    nearest = tree.query(q, 1)[0][:, 0]
    for radius in (0.02, 0.05, 0.2, float(nearest[-1])):
        assert np.array_equal(tree.within(q, radius), nearest <= radius)
    assert len(calls) == 4 and calls[2] > 15000  # at the widest radius the cells decided most queries


@pytest.mark.parametrize("batch", [1 << 18, 97])
@pytest.mark.parametrize("queries", [False, True])
def test_voxel_hash_neighbours_are_exact(queries: bool, batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA path's search, run on the CPU: the same neighbours as the k-d tree, duplicates and outliers too,
    whether the queries' cell tables are made all at once or a few queries at a time."""
    monkeypatch.setattr(knn_module, "QUERY_BATCH", batch)
    rng = np.random.default_rng(4)
    points, _ = shapes.torus(5000)
    points = np.concatenate([points, points[:50], rng.uniform(-5, 5, size=(20, 3))]).astype(np.float32)
    q = rng.uniform(-1.5, 1.5, size=(300, 3)).astype(np.float32) if queries else None
    dist, idx = grid_knn(torch.from_numpy(points), 12, queries=None if q is None else torch.from_numpy(q))
    ref_dist, _ = PointTree(points).query(points if q is None else q, 12)
    np.testing.assert_allclose(dist.numpy(), ref_dist, rtol=1e-5, atol=1e-6)
    got = np.linalg.norm(points[idx.numpy()] - (points if q is None else q)[:, None, :], axis=2)
    np.testing.assert_allclose(got, ref_dist, rtol=1e-5, atol=1e-6)


def test_cuda_search_path_gives_the_same_normals(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole estimate with the voxel-hash search (the CUDA path) instead of the k-d tree, run on the CPU."""
    import engine.solver.normals as normals_module

    points, true = shapes.blob(8000)
    x = torch.from_numpy(points.astype(np.float32))
    tree = estimate_oriented(x, sensor=None)
    def hash_self_knn(p: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        order = morton_order(torch.from_numpy(p))
        dist, idx = grid_knn(torch.from_numpy(p)[order], k)
        return order.numpy(), dist.numpy().astype(np.float32), idx.numpy()

    monkeypatch.setattr(normals_module, "self_knn", hash_self_knn)
    grid = estimate_oriented(x, sensor=None)
    np.testing.assert_allclose(grid.normals.numpy(), tree.normals.numpy(), atol=1e-5)
    assert agreement(grid.normals.numpy(), true) >= 0.995


def _either_way(monkeypatch: pytest.MonkeyPatch, compiled: bool) -> None:
    """Make every all-points pass take its compiled kernel (``compiled``) or its NumPy / SciPy one."""
    monkeypatch.setattr(warm, "COMPILED_MIN", 0 if compiled else 1 << 40)
    monkeypatch.setattr(warm, "kernels_loaded", lambda: False)


def _cloud_with_duplicates() -> tuple[np.ndarray, np.ndarray]:
    """Two separate pieces, some points stacked on others: ties and zero-cost edges."""
    points, true = two_spheres(8000)
    return (np.concatenate([points, points[:40]]).astype(np.float32),
            np.concatenate([true, true[:40]]).astype(np.float32))


@pytest.mark.parametrize("case", ["propagation", "sensor", "noisy subsample"])
def test_compiled_search_and_spanning_tree_give_the_same_normals(case: str, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    """The compiled neighbour search, planes and spanning forest (big clouds, or once numba has loaded) and the
    k-d tree, torch's planes and SciPy's spanning tree: the same normals (to 1e-5), doubtful points and pieces, and
    both paths are taken."""
    points, true = _cloud_with_duplicates()
    x = torch.from_numpy(points)
    sensor = torch.tensor([1.5, 0.0, 6.0]) if case == "sensor" else None
    density, noise = (2000.0, 0.02) if case == "noisy subsample" else (0.0, 0.0)
    warm.warm_kernels()  # loaded before the kernels are counted: the loading calls each of them once
    warm.await_kernels()
    calls: list[str] = []
    for name in ("spanning_signs", "cell_knn", "plane_normals"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name,
                            lambda *a, _real=real, _name=name, **kw: calls.append(_name) or _real(*a, **kw))
    results = []
    for compiled in (False, True):
        _either_way(monkeypatch, compiled)
        calls.clear()
        results.append(estimate_oriented(x, sensor=sensor, density=density, noise=noise))
        assert ("cell_knn" in calls) == compiled
        assert ("spanning_signs" in calls) == (compiled and sensor is None)
        assert ("plane_normals" in calls) == compiled
    tree, fast = results  # the planes' covariance summed in float64 by the kernel, in float32 by torch
    torch.testing.assert_close(fast.normals, tree.normals, atol=1e-5, rtol=0)
    assert torch.equal(fast.doubtful, tree.doubtful)
    assert (fast.pieces, fast.fraction) == (tree.pieces, tree.fraction)
    assert (fast.fraction < 0.7) == (case == "noisy subsample")
    if sensor is None:  # one sensor above both spheres faces their lower halves up, not out
        assert agreement(fast.normals.numpy(), true) >= 0.995 and fast.pieces == 2


def test_the_estimate_waits_for_the_kernels_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU the estimate waits for numba's loading thread and then takes the compiled passes, so a run's
    normals never depend on how far numba's start had got (the real stereo table scan gave two meshes)."""
    import threading
    import time

    loading = threading.Thread(target=time.sleep, args=(0.5,), daemon=True)  # stands for numba's start
    monkeypatch.setattr(warm, "_warming", [loading])
    monkeypatch.setattr(warm, "COMPILED_MIN", 1 << 40)  # a small cloud: compiled only once the kernels have loaded
    calls: list[str] = []
    real = kernels.cell_knn
    monkeypatch.setattr(kernels, "cell_knn", lambda *a, **kw: calls.append("cell_knn") or real(*a, **kw))
    points, _ = two_spheres(3000)
    loading.start()
    assert warm.kernels_loading() and not warm.compiled_pays(3000)
    estimate_oriented(torch.from_numpy(points.astype(np.float32)))
    assert not loading.is_alive() and warm.kernels_loaded()
    assert calls  # the compiled search, after the wait


def test_spanning_signs_match_scipys_tree_up_to_a_sign_per_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a neighbour graph with several pieces and random normals, the compiled forest's signs make the same
    edges agree as SciPy's tree does (signs equal up to one sign per piece), with the same pieces."""
    points, _ = _cloud_with_duplicates()
    rng = np.random.default_rng(5)
    normals = torch.from_numpy(rng.normal(size=points.shape).astype(np.float32))
    normals /= normals.norm(dim=1, keepdim=True)
    _, _, idx = sorted_neighbours(torch.from_numpy(points), 9)  # normals are random: their order does not matter
    edges = Edges.build(normals, idx)
    out = []
    for compiled in (False, True):
        _either_way(monkeypatch, compiled)
        out.append(tree_signs(edges, normals))
    (s_ref, piece_ref), (s, piece) = out
    assert piece.max() == piece_ref.max() >= 1
    pairs = np.unique(np.stack([piece_ref, piece]), axis=1)
    assert pairs.shape[1] == piece.max() + 1  # one piece for one piece
    relative = (s * s_ref).numpy()
    for p in range(int(piece.max()) + 1):
        assert np.unique(relative[piece == p]).size == 1


def test_ascending_radix_order_is_numpys_stable_sort() -> None:
    """The spanning forest's edge order: 32-bit keys with many ties and both extremes, as NumPy's stable argsort;
    positive float32 costs sort as their bits."""
    rng = np.random.default_rng(9)
    keys = np.concatenate([rng.integers(0, 2**32, 50_000, dtype=np.uint64), rng.integers(0, 300, 50_000),
                           [0, 2**32 - 1, 2**32 - 1, 0]]).astype(np.uint32)
    keys = keys[rng.permutation(keys.shape[0])]
    assert np.array_equal(ascending(keys), np.argsort(keys, kind="stable"))
    cost = (1.0 - np.abs(rng.uniform(-1, 1, 20_000)) + 1e-6).astype(np.float32)
    assert np.array_equal(ascending(cost.view(np.uint32)), np.argsort(cost, kind="stable"))


def test_compiled_planes_are_torchs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plane kernel's normals are torch's closed form's (up to sign, to 1e-5), zero where a point's neighbours
    are all one position, on a curved cloud with stacked duplicates (in the canonical frame, as the engine calls it).
    """
    points, _ = _cloud_with_duplicates()
    stack = np.repeat(points[:1] + 5.0, 12, axis=0)  # twelve copies of one position: no plane
    x = torch.from_numpy(np.concatenate([points, stack]).astype(np.float32))
    order, _, idx = sorted_neighbours(x, 12)
    x = x[order]
    out, lines = [], []
    for compiled in (False, True):
        _either_way(monkeypatch, compiled)
        lines.append(torch.empty(x.shape[0]))
        out.append(pca_normals(x, idx, line=lines[-1]))
    ref, got = out
    sign = torch.where((ref * got).sum(dim=1) < 0, -1.0, 1.0)[:, None]
    torch.testing.assert_close(got * sign, ref, atol=1e-5, rtol=0)
    assert bool((got[-12:] == 0).all()) and bool((ref[-12:] == 0).all())
    torch.testing.assert_close(lines[1], lines[0], atol=1e-5, rtol=0)  # and the same line ratios
    assert bool((lines[0][-12:] == 1).all()) and float(lines[0][:-12].min()) > 0.0


def test_line_ratios_are_the_eigenvalues() -> None:
    """The middle over the largest eigenvalue, from the closed form: eigvalsh's on random covariances, about 0 for
    points on a line, about 1 for points spread evenly in a plane, 1 for a zero matrix."""
    rng = np.random.default_rng(8)
    a = torch.from_numpy(rng.normal(size=(500, 3, 3)))
    cov = a @ a.transpose(1, 2)
    ev = torch.linalg.eigvalsh(cov)
    torch.testing.assert_close(line_ratios(cov), ev[:, 1] / ev[:, 2], atol=1e-9, rtol=1e-6)
    t = torch.linspace(-1, 1, 12, dtype=torch.float64)
    on_line = torch.stack((t, 2 * t, 0.001 * t.flip(0) ** 2), dim=1)
    disc = torch.from_numpy(rng.normal(size=(400, 3)) * [1.0, 1.0, 0.0])
    for pts, lo, hi in ((on_line, 0.0, 1e-3), (disc, 0.8, 1.0)):
        c = pts - pts.mean(dim=0)
        assert lo <= float(line_ratios((c.T @ c)[None])[0]) <= hi
    assert float(line_ratios(torch.zeros(1, 3, 3, dtype=torch.float64))[0]) == 1.0


@pytest.mark.parametrize("compiled", [False, True])
def test_a_line_of_points_between_two_objects_turns_neither_inside_out(compiled: bool,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Forty noisy points in a line from one sphere to another (a wire, a chain of strays): their normals can
    point any way across the line, so they pass no sign between the spheres, which stay two pieces, each
    outward (the line's sign decided one sphere's before: it came out inside out)."""
    _either_way(monkeypatch, compiled)
    a, na = shapes.sphere(20_000, seed=1)
    b, nb = shapes.sphere(20_000, seed=2)
    rng = np.random.default_rng(0)
    line = np.linspace(1.0, 2.0, 40)[:, None] * [[1.0, 0.0, 0.0]] + rng.normal(scale=0.02, size=(40, 3))
    points = np.concatenate([a, b + [3.0, 0.0, 0.0], line]).astype(np.float32)
    est, stats = estimate_normals(points, device="cpu")
    assert agreement(est[:20_000], na) >= 0.999 and agreement(est[20_000:40_000], nb) >= 0.999
    assert stats["normals_pieces"] == 2


def test_a_wire_between_two_spheres_leaves_both_meshes_closed_outward() -> None:
    """The same scene reconstructed from its points alone: each sphere's mesh encloses positive volume (outward
    faces; one of them was an inside-out shell before the points on a line stopped passing signs)."""
    a, _ = shapes.sphere(20_000, seed=1)
    b, _ = shapes.sphere(20_000, seed=2)
    rng = np.random.default_rng(0)
    line = np.linspace(1.0, 2.0, 40)[:, None] * [[1.0, 0.0, 0.0]] + rng.normal(scale=0.02, size=(40, 3))
    mesh = reconstruct(np.concatenate([a, b + [3.0, 0.0, 0.0], line]).astype(np.float32), device="cpu")
    v, f = mesh.vertices64, mesh.faces
    for side in (v[:, 0] < 1.5, v[:, 0] > 1.5):  # each sphere's faces
        faces = f[side[f].all(axis=1)]
        assert len(faces) > 1000
        assert abs(signed_volume(v, faces) - 4 / 3 * np.pi) < 0.05 * 4 / 3 * np.pi


@pytest.mark.parametrize("sensors", [False, True])
def test_transfer_in_batches_is_the_whole_transfer(sensors: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Normals carried from the subsample to every point batch by batch (in Morton order) are those of one batch,
    with per-point sensors too (each batch takes its own rows)."""
    import engine.solver.normals as normals_module

    points, true = shapes.sphere(20_000)
    noisy = (points + np.random.default_rng(2).normal(scale=0.02, size=points.shape)).astype(np.float32)
    x = torch.from_numpy(noisy)
    sensor = torch.from_numpy((points * 3.0).astype(np.float32)) if sensors else None  # each seen from outside
    _either_way(monkeypatch, True)  # one path for both runs, whenever numba finishes loading
    out = []
    for batch in (1 << 30, 1000):
        monkeypatch.setattr(normals_module, "TRANSFER_BATCH", batch)
        out.append(estimate_oriented(x, sensor=sensor, density=2000.0, noise=0.02))
    whole, batched = out
    assert batched.fraction < 0.7
    assert torch.equal(batched.normals, whole.normals) and torch.equal(batched.doubtful, whole.doubtful)
    assert batched.grazing == whole.grazing
    assert agreement(batched.normals.numpy(), true) >= 0.99


def test_the_tilt_of_given_normals_is_measured_where_the_points_lie_in_planes() -> None:
    points, true = shapes.sphere(20_000)
    assert given_normals_tilt(points, true) < 2.0
    assert given_normals_tilt(points, -true) < 2.0  # the side a normal faces is not its tilt
    assert 8.0 < given_normals_tilt(points, shapes.tilted(true, 10.0)) < 12.0
    noisy = points + np.random.default_rng(1).normal(scale=0.01, size=points.shape)
    assert given_normals_tilt(noisy, true) is None  # no planes to judge by: the given normals stand


def test_given_normals_far_off_the_points_planes_are_estimated_again_facing_their_way() -> None:
    """Normals tilted 10 degrees at random: planes fitted to the points replace them, each turned the way its given
    normal faces, and the surface lies nearer the true sphere than from the tilted normals; true normals stand;
    ``keep_normals`` uses the given ones, with no warning."""
    points, true = shapes.sphere(20_000)
    tilt = shapes.tilted(true, 10.0)

    def error(mesh: Mesh) -> float:
        return float(np.abs(np.linalg.norm(mesh.vertices64, axis=1) - 1.0).mean())

    mesh = reconstruct(points, tilt, device="cpu")
    assert mesh.stats["normals_source"] == "given, re-estimated" and mesh.stats["normals_estimated"]
    assert 8.0 < mesh.stats["normals_given_tilt_deg"] < 12.0 and mesh.stats["normals_doubtful"] == 0
    assert any("off the planes" in w for w in mesh.stats["warnings"])
    assert signed_volume(mesh.vertices64, mesh.faces) > 0
    inward = reconstruct(points, -tilt, device="cpu")
    assert signed_volume(inward.vertices64, inward.faces) < 0  # the given side kept
    clean = reconstruct(points, true, device="cpu")
    assert clean.stats["normals_source"] == "given" and not clean.stats["normals_estimated"]
    as_given = reconstruct(points, tilt, device="cpu", keep_normals=True)
    assert as_given.stats["normals_source"] == "given" and not as_given.stats["normals_estimated"]
    assert "normals_given_tilt_deg" not in as_given.stats and not as_given.stats.get("warnings")
    assert error(mesh) < 0.7 * error(as_given), (error(mesh), error(as_given), error(clean))
