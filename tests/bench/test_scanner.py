"""The scan simulator (bench/scanner.py): each sensor effect does what its parameter says."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import scanner  # noqa: E402
from scanner import FLYING, OUTLIER, SURFACE, ScanParams  # noqa: E402

from engine.formats.ply import read_points  # noqa: E402

SPHERE = scanner.sphere_mesh(rings=40)
TORUS = scanner.torus_mesh(segments=80, tube=32)
CLEAN = ScanParams(resolution=64, normal_k=0)


def _plane_and_barycentric(s: scanner.Scan, mesh: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each clean point to the plane of the triangle it hit, and its barycentric coordinates there."""
    v, f = mesh
    on = s.faces >= 0
    tri = v[f[s.faces[on]]]
    e1, e2, q = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], s.clean[on] - tri[:, 0]
    n = np.cross(e1, e2)
    dist = np.abs(np.einsum("ij,ij->i", q, n)) / np.linalg.norm(n, axis=1)
    gram = np.stack([np.stack([(e1 * e1).sum(1), (e1 * e2).sum(1)], -1),
                     np.stack([(e1 * e2).sum(1), (e2 * e2).sum(1)], -1)], -2)
    uv = np.linalg.solve(gram, np.stack([(q * e1).sum(1), (q * e2).sum(1)], -1)[..., None])[..., 0]
    return dist, np.column_stack([1 - uv.sum(1), uv])


def test_noiseless_points_lie_on_the_mesh() -> None:
    s = scanner.scan(TORUS, CLEAN, seed=1)
    assert len(s.points) > 8 * 1000 and (s.labels == SURFACE).all()
    np.testing.assert_array_equal(s.points, s.clean)
    dist, bary = _plane_and_barycentric(s, TORUS)
    assert dist.max() < 1e-6 * s.diagonal
    assert bary.min() > -1e-6 and bary.max() < 1 + 1e-6


def _brute_force(v: np.ndarray, f: np.ndarray, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Nearest hit of every ray against every triangle (textbook Moller-Trumbore), inf when none."""
    v0, e1, e2 = v[f[:, 0]], v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]
    p = np.cross(dirs[:, None, :], e2[None])
    det = np.einsum("tj,rtj->rt", e1, p)
    s = origin - v0
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.einsum("tj,rtj->rt", s, p) / det
        q = np.cross(s, e1)
        w = np.einsum("rj,tj->rt", dirs, q) / det
        t = np.einsum("tj,tj->t", e2, q)[None] / det
    ok = (u >= 0) & (w >= 0) & (u + w <= 1) & (t > 0)
    return np.where(ok, t, np.inf).min(axis=1)


def test_first_hits_match_brute_force_ray_casting() -> None:
    """Two nested closed meshes, rays from several sides: the binned z-buffer finds the nearest hit of every ray."""
    sv, sf = scanner.sphere_mesh(radius=0.5, rings=10)
    bv, bf = scanner.torus_mesh(segments=24, tube=10)
    v, f = np.vstack([bv, sv + [0.4, 0.0, 0.3]]), np.vstack([bf, sf + len(bv)])
    params = ScanParams(views=3, elevations=(50.0, 0.0, -70.0), resolution=28)
    centre, radius = np.zeros(3), float(np.linalg.norm(v, axis=1).max())
    for cam in scanner.ring_cameras(centre, radius, params):
        t, face = scanner.first_hits(v, f, cam)
        expect = _brute_force(v, f, cam.origin, cam.directions())
        assert np.isfinite(expect).sum() > 100
        np.testing.assert_array_equal(np.isfinite(t), np.isfinite(expect))
        hit = np.isfinite(t)
        np.testing.assert_allclose(t[hit], expect[hit], rtol=1e-9)
        assert (face[hit] >= 0).all() and (face[~hit] == -1).all()


def test_a_sphere_inside_a_box_is_never_seen() -> None:
    bv, bf = scanner.box_mesh(cells=6)
    sv, sf = scanner.sphere_mesh(radius=0.4, rings=16)
    s = scanner.scan((np.vstack([bv, sv]), np.vstack([bf, sf + len(bv)])), CLEAN, seed=2)
    assert len(s.points) > 8 * 1000
    assert (s.faces < len(bf)).all(), "a ray reached the hidden sphere"
    np.testing.assert_allclose(np.abs(s.points / [1.0, 0.7, 0.5]).max(axis=1), 1.0, atol=1e-9)


def test_depth_noise_along_the_ray_has_the_set_sigma() -> None:
    p = dataclasses.replace(CLEAN, depth_noise=0.004)
    s = scanner.scan(SPHERE, p, seed=3)
    ray = s.clean - s.sensors
    rng_ = np.linalg.norm(ray, axis=1)
    d = ray / rng_[:, None]
    along = np.einsum("ij,ij->i", s.points - s.clean, d)
    across = np.linalg.norm(s.points - s.clean - along[:, None] * d, axis=1)
    r_ref = np.linalg.norm(s.view_sensors - s.centre, axis=1)[s.views]
    z = along / (0.004 * s.diagonal * (rng_ / r_ref) ** 2)
    assert 0.8 < z.std() < 1.2 and abs(z.mean()) < 0.1
    assert across.max() < 1e-9 * s.diagonal


def test_outlier_and_flying_shares_and_placement() -> None:
    p = dataclasses.replace(PRESETS_SO, points=0, resolution=96, depth_noise=0.0, misregister_deg=0.0,
                            misregister_shift=0.0)
    s = scanner.scan(TORUS, p, seed=4)
    n = len(s.points)
    assert abs((s.labels == OUTLIER).sum() - 0.01 * n) <= 1
    assert abs((s.labels == FLYING).sum() - 0.01 * n) <= 1
    out = s.labels == OUTLIER
    lo, hi = TORUS[0].min(0), TORUS[0].max(0)
    assert ((s.points[out] >= lo) & (s.points[out] <= hi)).all() and (s.faces[out] == -1).all()
    fly = s.labels == FLYING
    behind = np.linalg.norm(s.points[fly] - s.sensors[fly], axis=1) - np.linalg.norm(s.clean[fly] - s.sensors[fly],
                                                                                      axis=1)
    assert behind.min() >= 0.01 * s.diagonal - 1e-9 and behind.max() <= 0.05 * s.diagonal + 1e-9
    # flying pixels come from depth edges: the silhouette, where the surface turns away from the sensor
    ray = s.clean - s.sensors
    nrm = scanner.face_geometry(*TORUS)[0][s.faces]
    cos_inc = np.abs(np.einsum("ij,ij->i", nrm, ray / np.linalg.norm(ray, axis=1)[:, None]))
    assert np.median(cos_inc[fly]) < 0.5 < np.median(cos_inc[s.labels == SURFACE])


PRESETS_SO = scanner.PRESETS["scanner+outliers"]


def _kabsch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation R minimising |R (a - mean a) - (b - mean b)|."""
    h = (a - a.mean(0)).T @ (b - b.mean(0))
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    return vt.T @ np.diag([1, 1, d]) @ u.T


def test_misregistration_turns_and_moves_each_view_by_the_set_amount() -> None:
    p = dataclasses.replace(CLEAN, misregister_deg=2.0, misregister_shift=0.01)
    s = scanner.scan(SPHERE, p, seed=5)
    for i in range(p.views):
        sel = s.views == i
        rot = _kabsch(s.clean[sel], s.points[sel])
        angle = np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1)))
        assert angle == pytest.approx(2.0, abs=1e-6)
        shift = (s.points[sel] - (s.clean[sel] - s.centre) @ rot.T - s.centre).mean(0)
        assert np.linalg.norm(shift) == pytest.approx(0.01 * s.diagonal, rel=1e-6)
        assert np.allclose(s.sensors[sel], s.view_sensors[i])


def test_normals_face_their_sensor_and_follow_the_surface() -> None:
    p = dataclasses.replace(scanner.PRESETS["scanner"], points=0, resolution=64)
    s = scanner.scan(SPHERE, p, seed=6)
    assert s.normals is not None and s.normals.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(s.normals, axis=1), 1.0, atol=1e-5)
    facing = np.einsum("ij,ij->i", s.normals, s.sensors - s.points)
    assert (facing >= 0).all()
    surf = s.labels == SURFACE
    true_n = scanner.face_geometry(*SPHERE)[0][s.faces[surf]]
    assert np.median(np.einsum("ij,ij->i", s.normals[surf], true_n)) > 0.98
    assert scanner.scan(SPHERE, dataclasses.replace(p, normal_k=0), seed=6).normals is None


def test_the_same_seed_gives_the_same_scan() -> None:
    p = dataclasses.replace(PRESETS_SO, points=0, resolution=48)
    a, b, c = (scanner.scan(TORUS, p, seed=k) for k in (7, 7, 8))
    for name in ("points", "normals", "sensors", "labels", "views", "faces"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert len(a.points) != len(c.points) or not np.array_equal(a.points, c.points)


def test_a_point_target_sets_the_resolution() -> None:
    p = dataclasses.replace(scanner.PRESETS["scanner"], points=30_000, normal_k=0)
    s = scanner.scan(TORUS, p, seed=9)
    assert 0.85 * 30_000 < len(s.points) < 1.15 * 30_000


def test_command_line_writes_a_ply_the_engine_reads(tmp_path: Path) -> None:
    out = tmp_path / "scan.ply"
    run = subprocess.run([sys.executable, str(BENCH / "scanner.py"), "torus", str(out), "--preset", "scanner",
                          "--points", "8000", "--seed", "3"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "points per view" in run.stdout and "outlier 0.4995%" in run.stdout
    cloud = read_points(out)
    s = scanner.scan(scanner.torus_mesh(), dataclasses.replace(scanner.PRESETS["scanner"], points=8000), seed=3)
    np.testing.assert_array_equal(cloud.points, s.points)
    assert cloud.normals is not None
    np.testing.assert_array_equal(cloud.normals, s.normals)
    vert = PlyData.read(str(out))["vertex"].data
    np.testing.assert_array_equal(np.stack([vert["sx"], vert["sy"], vert["sz"]], 1), s.sensors)
    np.testing.assert_array_equal(vert["label"], s.labels)
    np.testing.assert_array_equal(vert["view"], s.views)


def test_an_obj_mesh_with_quads_loads_as_closed_triangles(tmp_path: Path) -> None:
    corners = "\n".join(f"v {x} {y} {z}" for x in (-1, 1) for y in (-1, 1) for z in (-1, 1))
    quads = ["1 2 4 3", "5 7 8 6", "1 5 6 2", "3 4 8 7", "1/1/1 3/1/1 7/1/1 5/1/1", "-7 -3 -1 -5"]
    path = tmp_path / "cube.obj"
    path.write_text(corners + "\nvn 0 0 1\nvt 0 0\n" + "\n".join("f " + q for q in quads) + "\n")
    v, f = scanner.load_mesh(str(path))
    assert v.shape == (8, 3) and f.shape == (12, 3)
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    assert (np.unique(edges, axis=0, return_counts=True)[1] == 2).all(), "every edge shared by two triangles"
    s = scanner.scan((v, f), CLEAN, seed=0)
    np.testing.assert_allclose(np.abs(s.points).max(axis=1), 1.0, atol=1e-9)
