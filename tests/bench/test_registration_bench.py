"""bench/registration.py's floor: views put on one another with the simulator's own motions."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import registration  # noqa: E402
import scanner  # noqa: E402

TORUS = scanner.torus_mesh(segments=80, tube=32)


def test_relatively_registered_views_agree_and_keep_the_mean_motion() -> None:
    p = scanner.ScanParams(resolution=48, normal_k=8, misregister_deg=1.0, misregister_shift=0.01)
    s = scanner.scan(TORUS, p, seed=3)
    points, normals, sensors = registration.relatively_registered(s)
    rot, shift = registration.mean_motion(s)
    assert np.allclose(rot @ rot.T, np.eye(3)) and np.linalg.det(rot) > 0
    # every (noiseless) point is its true hit moved by the one mean motion: no view disagrees with another
    expected = (s.clean - s.centre) @ rot.T + s.centre + shift
    assert np.abs(points - expected).max() < 1e-9 * s.diagonal
    for v in range(p.views):  # each view's sensor: its true position, moved by the mean motion
        true_sensor = s.view_rotations[v].T @ (s.view_sensors[v] - s.centre - s.view_shifts[v]) + s.centre
        assert np.allclose(sensors[s.views == v], rot @ (true_sensor - s.centre) + s.centre + shift, atol=1e-9)
    # the mean motion is what the scan as a whole was moved by; the views' own motions were larger and differ
    before = [np.linalg.norm(s.view_shifts[v] - s.view_shifts.mean(0)) for v in range(p.views)]
    assert max(before) > 0.5 * 0.01 * s.diagonal
    # normals turn with their points: still unit, and still facing their (moved) sensors
    assert normals is not None
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    assert np.mean(((sensors - points) * normals).sum(axis=1) > 0) > 0.99
    # a noiseless misregistered scan leaves no gap between views' placements after it, and a large one before
    surface = np.flatnonzero(s.labels == scanner.SURFACE)
    sample = np.arange(0, surface.size, 7)
    face_n = np.cross(TORUS[0][TORUS[1][:, 1]] - TORUS[0][TORUS[1][:, 0]],
                      TORUS[0][TORUS[1][:, 2]] - TORUS[0][TORUS[1][:, 0]])
    normal = (face_n / np.linalg.norm(face_n, axis=1, keepdims=True))[s.faces[surface]]
    pair_before, _ = registration.gaps(s.clean[surface], s.points[surface], s.views[surface], normal, sample)
    pair_after, _ = registration.gaps(s.clean[surface], points[surface], s.views[surface], normal, sample)
    assert pair_before > 1e-3 * s.diagonal and pair_after < 1e-9 * s.diagonal


def test_a_scan_without_normals_stays_without() -> None:
    p = dataclasses.replace(scanner.ScanParams(resolution=32, normal_k=0), misregister_deg=0.5)
    assert registration.relatively_registered(scanner.scan(TORUS, p, seed=4))[1] is None
