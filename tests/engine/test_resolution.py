"""The automatic voxel follows the spacing of one scanner view, not of all views stacked; such a scan is meshed
at its finest voxel (automatic refinement)."""

from __future__ import annotations

import numpy as np
import pytest

from engine import reconstruct
from engine.pipeline import ESTIMATED_POINT_SCALE, ESTIMATED_POINT_SCALE_VIEWS, WEIGHTS, estimated_smooth_scale
from engine.solver.resolution import choose_voxel_size, view_overlap
from tests.engine.test_registration import scan_views


def _plane(n: int, seed: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """n points uniform on the square [lo, hi] x [0, 1] of the z = 0 plane."""
    rng = np.random.default_rng(seed)
    return np.column_stack((rng.uniform(lo, hi, n), rng.uniform(0.0, 1.0, n), np.zeros(n)))


def test_overlap_counts_the_views_over_a_spot() -> None:
    stacked = np.concatenate([_plane(20_000, seed=v) for v in range(4)])  # four views of the whole square
    index = np.repeat(np.arange(4), 20_000)
    assert abs(view_overlap(stacked, index) - 4.0) < 0.4
    side = np.concatenate([_plane(20_000, seed=v, lo=v / 4, hi=(v + 1) / 4) for v in range(4)])  # side by side
    assert view_overlap(side, index) < 1.3, "views that do not overlap are one view's spacing"


def test_density_noise_and_overlap_share_one_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """choose_voxel_size searches the probes' neighbourhoods once for the density, the noise and the overlap
    (they were searched twice, the same search), and gets what the separate calls get."""
    from engine.solver import resolution

    stacked = np.concatenate([_plane(20_000, seed=v) for v in range(4)])
    index = np.repeat(np.arange(4), 20_000)
    alone = resolution.measure(stacked), view_overlap(stacked, index)
    searches: list[int] = []
    search = resolution._neighbourhoods
    monkeypatch.setattr(resolution, "_neighbourhoods", lambda sub, rng: searches.append(len(sub)) or search(sub, rng))
    res = choose_voxel_size(stacked, views=index)
    assert searches.count(resolution.SUBSAMPLE) == 1  # the variation check's are at its own, smaller scales
    assert len(searches) == len(resolution.VARIATION_SCALES) + 1
    assert (res.density, res.noise, res.view_overlap) == (*alone[0], alone[1])


def test_auto_voxel_is_one_views_spacing() -> None:
    stacked = np.concatenate([_plane(20_000, seed=v) for v in range(4)])
    index = np.repeat(np.arange(4), 20_000)
    all_views = choose_voxel_size(stacked)
    per_view = choose_voxel_size(stacked, views=index)
    one_view = choose_voxel_size(stacked[:20_000])
    assert all_views.view_overlap == 1.0 and per_view.view_overlap > 3.5
    # a quarter of the density: twice the spacing, as if only one view had been taken
    assert abs(per_view.voxel_size / all_views.voxel_size - 2.0) < 0.2
    assert abs(per_view.voxel_size / one_view.voxel_size - 1.0) < 0.1
    # an explicit voxel size or detail level is the caller's choice: views do not change it
    assert choose_voxel_size(stacked, "auto", 0.01, views=index).voxel_size == 0.01
    assert choose_voxel_size(stacked, 0.5, views=index).voxel_size == choose_voxel_size(stacked, 0.5).voxel_size


def test_pipeline_reports_the_overlap_and_coarsens_for_views() -> None:
    p, n, s, _ = scan_views(misregister=False)
    with_views = reconstruct(p, n, sensor=s, device="cpu", register_views=False)
    without = reconstruct(p, n, device="cpu")
    overlap = with_views.stats["view_overlap"]
    assert 1.5 < overlap < 8.0, overlap
    assert without.stats["view_overlap"] == 1.0
    ratio = with_views.stats["voxel_size"] / without.stats["voxel_size"]
    assert abs(ratio - np.sqrt(overlap)) < 0.05 * np.sqrt(overlap), (ratio, overlap)
    assert with_views.stats["unknowns"] < without.stats["unknowns"]


def test_estimated_normals_raise_the_point_weight_less_for_views() -> None:
    """Estimated normals weigh positions 10x, or 3x in a scan from several sensors (engine.pipeline)."""
    p, n, s, _ = scan_views(per_view=4_000, misregister=False)
    weight = {(views, given): reconstruct(p, n if given else None, sensor=s if views else None, device="cpu",
                                          register_views=False, mise_iter=0).stats["point_weight"]
              for views in (True, False) for given in (True, False)}
    assert weight[True, False] / weight[True, True] == pytest.approx(ESTIMATED_POINT_SCALE_VIEWS)
    assert weight[False, False] / weight[False, True] == pytest.approx(ESTIMATED_POINT_SCALE)


def test_estimated_normals_of_noisy_views_get_a_smoother_fit() -> None:
    """Normals estimated in a scan from several sensors raise the smoothness weight with the measured noise;
    given normals, or no sensors, leave it as it is; noiseless views barely change it."""
    p, n, s, _ = scan_views(per_view=4_000, misregister=False)
    noisy = p + np.random.default_rng(5).normal(scale=0.012, size=p.shape)  # 0.1-0.2 voxel, as in the bench scans
    runs = {(cloud, views, given): reconstruct(pts, n if given else None, sensor=s if views else None, device="cpu",
                                               register_views=False, mise_iter=0).stats
            for cloud, pts in (("noisy", noisy), ("exact", p)) for views in (True, False) for given in (True, False)
            if cloud == "noisy" or (views and not given)}
    stats = runs["noisy", True, False]
    scale = estimated_smooth_scale(stats["noise"], stats["voxel_size"])  # caller's units: the ratio is the same
    assert scale > 1.5, scale
    assert stats["smooth_weight"] == pytest.approx(WEIGHTS.smooth * scale)
    for key in (("noisy", True, True), ("noisy", False, False), ("noisy", False, True)):
        assert runs[key]["smooth_weight"] == WEIGHTS.smooth, key
    assert runs["exact", True, False]["smooth_weight"] < 1.1 * WEIGHTS.smooth


def test_views_survive_points_left_out_for_doubtful_normals() -> None:
    """Normals estimated toward the sensors leave out points with no plane (here 64 copies of one position):
    the views found before must still match the points registration moves."""
    p, _, s, _ = scan_views(per_view=6_000)
    p = np.concatenate([p, np.tile(p[:1], (64, 1))])
    s = np.concatenate([s, np.tile(s[:1], (64, 1))])
    mesh = reconstruct(p, None, sensor=s, device="cpu")
    assert mesh.stats["normals_doubtful"] > 0 and mesh.stats["views"] == 8
    assert mesh.faces.shape[0] > 1000


def test_automatic_refinement_skips_the_round_for_noisy_scans_only() -> None:
    """No meshing below the voxel where sensors are known and the noise is measured at >= 0.1 voxel."""
    p, n, s, _ = scan_views(per_view=6_000, misregister=False)
    ray = (p - s) / np.linalg.norm(p - s, axis=1, keepdims=True)
    noisy = p + ray * np.random.default_rng(5).normal(scale=0.02, size=(p.shape[0], 1))  # depth noise
    runs = {
        "clean views": reconstruct(p, n, sensor=s, device="cpu", register_views=False),
        "noisy views": reconstruct(noisy, n, sensor=s, device="cpu", register_views=False),
        "noisy, one sensor": reconstruct(noisy[:6_000], n[:6_000], sensor=s[0], device="cpu"),
        "noisy, no sensor": reconstruct(noisy, n, device="cpu"),
        "noisy views, 1 asked": reconstruct(noisy, n, sensor=s, device="cpu", register_views=False, mise_iter=1),
    }
    rounds = {k: (m.stats["mise_iter"], m.stats["refinement"]) for k, m in runs.items()}
    ratio = {k: m.stats["noise"] / m.stats["voxel_size"] for k, m in runs.items()}
    assert ratio["clean views"] < 0.1 <= min(ratio["noisy views"], ratio["noisy, one sensor"]), ratio
    # where "auto" takes the round below the voxel, a whole scene takes it where the surface bends (refine.py)
    assert rounds == {"clean views": (0, "adaptive"), "noisy views": (0, "uniform"),
                      "noisy, one sensor": (0, "uniform"), "noisy, no sensor": (0, "adaptive"),
                      "noisy views, 1 asked": (1, "uniform")}, ratio
    assert runs["noisy views"].stats["voxel_size"] == runs["noisy views, 1 asked"].stats["voxel_size"]
    assert (runs["noisy views"].stats["faces_before_simplify"]
            < 0.5 * runs["noisy views, 1 asked"].stats["faces_before_simplify"])


def _canonical(points: np.ndarray) -> tuple[np.ndarray, float]:
    lo, hi = points.min(axis=0), points.max(axis=0)
    diag = float(np.linalg.norm(hi - lo))
    return (points - (lo + hi) / 2) / diag, diag


def test_noise_of_a_sharp_edged_scene_is_what_its_flat_parts_measure_whatever_the_subsample() -> None:
    """Box buildings on a terrain: half the 48-point neighbourhoods straddle an edge, which no quadric follows.
    The plain median of their residuals fell on either side of that split by the subsample's seed (0.002-0.12 m
    on this scene, noise-free); the neighbourhoods a quadric describes give ~0.001 m for every seed."""
    from engine.solver import resolution
    from tests.shapes import city

    points, _, _ = city(100_000)
    canon, diag = _canonical(points)
    noise = np.array([resolution.measure(canon, probes=resolution.find_probes(canon, seed))[1] * diag
                      for seed in range(6)])
    assert noise.max() < 0.005, noise  # metres, on a 200 m tile
    assert noise.max() / noise.min() < 1.3, noise
    res = choose_voxel_size(canon)
    assert res.voxel_size == pytest.approx(np.sqrt(resolution.points_per_voxel(resolution.AUTO_DETAIL) / res.density))


def test_noise_of_a_noisy_surface_is_the_plain_median_of_its_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gaussian noise leaves every neighbourhood described by a quadric: nothing is set aside, and the estimate
    is about the noise's sigma."""
    from engine.solver import resolution

    rng = np.random.default_rng(3)
    u = rng.normal(size=(100_000, 3))
    sphere = u / np.linalg.norm(u, axis=1, keepdims=True)
    sigma = 0.004
    canon, diag = _canonical(sphere + rng.normal(scale=sigma, size=sphere.shape))
    probes = resolution.find_probes(canon)
    _, noise = resolution.measure(canon, probes=probes)
    monkeypatch.setattr(resolution, "UNFIT", float("inf"))
    _, median = resolution.measure(canon, probes=probes)
    assert noise == median
    assert noise * diag == pytest.approx(sigma, rel=0.15)
