"""Real scans' stray points: removed before the solve, and the blobs the rest make removed after trimming.

The scan comes from the scan simulator (bench/scanner.py) with its
``scanner+outliers`` preset (1% uniform outliers, 1% flying pixels), small
enough to reconstruct in a few seconds on one core.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

import engine.warm as warm
from engine import reconstruct
from engine.solver import outliers
from engine.solver.outliers import outlier_mask, outlier_mask_torch
from tests import shapes
from tests.meshcheck import components

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import scanner  # noqa: E402
from scanner import FLYING, OUTLIER, SURFACE  # noqa: E402


@pytest.fixture(scope="module")
def scan() -> scanner.Scan:
    params = dataclasses.replace(scanner.PRESETS["scanner+outliers"], points=20_000)
    return scanner.scan(scanner.torus_mesh(segments=80, tube=32), params, seed=3)


@pytest.fixture(scope="module")
def default(scan: scanner.Scan) -> Any:
    return reconstruct(scan.points, scan.normals, device="cpu", mise_iter=0)


def test_the_pre_filter_takes_outliers_and_no_surface(scan: scanner.Scan) -> None:
    bad = outlier_mask(scan.points)
    assert bad[scan.labels == OUTLIER].mean() > 0.4
    assert bad[scan.labels == FLYING].mean() < 0.3  # flying pixels are sheets, not isolated points
    assert not bad[scan.labels == SURFACE].any()


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("ratio", [2.0, 1.1])
def test_the_pre_filter_is_its_definition_whatever_the_batch(scan: scanner.Scan, ratio: float, compiled: bool,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each point's mean distance to its 16 nearest against ``ratio`` times the median of its neighbours' same
    figure, from all pairwise distances; batches that split the cloud unevenly give the same verdicts, either way
    (the k-d tree and numpy's partition, or the compiled search and verdicts).  At 1.1 a third of the points sit
    near the line, so a median off by one rank changes verdicts."""
    monkeypatch.setattr(outliers, "OUTLIER_RATIO", ratio)
    monkeypatch.setattr(warm, "COMPILED_MIN", 0 if compiled else 1 << 40)
    monkeypatch.setattr(warm, "kernels_loaded", lambda: False)
    pts = scan.points[::7].astype(np.float64)  # ~2900 points, outliers among them
    d = cdist(pts, pts)  # (2900, 2900): every pair's distance, no search
    near = np.argsort(d, axis=1, kind="stable")[:, 1:outliers.OUTLIER_K + 1]
    own = np.take_along_axis(d, near, axis=1).mean(axis=1)
    local = np.median(own[near], axis=1)
    expected = (local > 0) & (own > ratio * local)
    assert 5 < expected.sum() < (0.1 if ratio == 2.0 else 0.5) * len(pts)
    for batch in (1 << 16, 1000, 333):
        assert np.array_equal(outlier_mask(pts, batch=batch), expected)
        # the CUDA path's torch test, here on the CPU: the same verdicts from float32 points
        on_device = outlier_mask_torch(torch.from_numpy(pts.astype(np.float32)), batch=batch).numpy()
        assert np.array_equal(on_device, expected)


def test_a_scan_with_stray_points_gives_one_piece(scan: scanner.Scan, default: Any) -> None:
    stats = default.stats
    assert stats["outliers_removed"] > 0 and stats["pieces_removed"] > 0 and stats["faces_removed"] > 0
    assert stats["pieces"] == components(len(default.vertices), default.faces) == 1
    kept = reconstruct(scan.points, scan.normals, device="cpu", mise_iter=0, keep_fragments=True)
    assert kept.stats["pieces_removed"] == kept.stats["faces_removed"] == 0
    assert kept.stats["pieces"] == components(len(kept.vertices), kept.faces) > 1
    # Counted before simplification, which runs on what is kept.
    assert kept.stats["faces_before_simplify"] - stats["faces_before_simplify"] == stats["faces_removed"]


def test_chunked_and_whole_remove_the_same_fragments(scan: scanner.Scan, default: Any) -> None:
    chunked = reconstruct(scan.points, scan.normals, device="cpu", mise_iter=0, chunk_size=1.5)
    assert chunked.stats["chunks"] > 1
    assert chunked.stats["pieces"] == default.stats["pieces"] == 1
    assert chunked.stats["pieces_removed"] > 0
    assert components(len(chunked.vertices), chunked.faces) == 1


@pytest.mark.parametrize("noise", [0.0, 0.005])
def test_a_closed_shape_loses_nothing_to_either_filter(noise: float) -> None:
    points, normals = shapes.sphere(10_000, seed=1)
    points = points + np.random.default_rng(2).normal(scale=noise * 2 * np.sqrt(3), size=points.shape)
    whole = reconstruct(points, normals, device="cpu")
    assert whole.stats["pieces"] == 1 and whole.stats["pieces_removed"] == whole.stats["faces_removed"] == 0
    # clean: not one point; 0.5% noise of the diagonal: only the noise's far tail
    assert whole.stats["outliers_removed"] <= (0 if noise == 0 else 0.002 * len(points))


def test_a_thin_separate_part_that_many_points_see_stays() -> None:
    """A pole beside a sphere: 0.3% of the sphere's area, which an area rule would cut, but 200 points see it."""
    points, normals = shapes.sphere(8000, seed=1)
    rng = np.random.default_rng(3)
    angle, height = rng.uniform(0, 2 * np.pi, 200), rng.uniform(-0.2, 0.2, 200)
    around = np.c_[np.cos(angle), np.sin(angle), np.zeros(200)]
    pole = np.array([2.0, 0.0, 0.0]) + 0.03 * around + np.c_[np.zeros((200, 2)), height]
    mesh = reconstruct(np.r_[points, pole], np.r_[normals, around], device="cpu", mise_iter=0)
    assert mesh.stats["pieces"] == components(len(mesh.vertices), mesh.faces) == 2
    assert mesh.stats["pieces_removed"] == 0
    assert (mesh.vertices[:, 0] > 1.5).any()


def test_face_pieces_are_scipys_components_in_the_same_order() -> None:
    """The union-find numbering of the mesh's pieces (lowest vertex first) is SciPy's connected components over
    the faces, renumbered over the pieces that have faces: a sheet cut into hundreds of pieces, its vertex ids
    shuffled, with unused vertices."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from engine.surface.fragments import face_pieces

    rng = np.random.default_rng(2)
    side = 60
    grid = np.arange(side * side).reshape(side, side)
    quads = np.stack([grid[:-1, :-1], grid[1:, :-1], grid[1:, 1:], grid[:-1, 1:]], -1).reshape(-1, 4)
    faces = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    faces = faces[rng.random(faces.shape[0]) < 0.2]  # a sparse sheet: many pieces
    count = side * side + 40
    faces = rng.permutation(count)[faces]
    n, piece = face_pieces(count, faces)
    graph = coo_matrix((np.ones(2 * len(faces)), (np.r_[faces[:, 0], faces[:, 1]], np.r_[faces[:, 1], faces[:, 2]])),
                       shape=(count, count))
    _, label = connected_components(graph, directed=False)
    expected_count, expected = np.unique(label[faces[:, 0]], return_inverse=True)
    assert n == expected_count.shape[0] > 100
    assert np.array_equal(piece, expected.reshape(-1))
