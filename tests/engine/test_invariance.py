"""The result does not depend on where the cloud is, its unit, or (much) on its point count."""

from __future__ import annotations

import numpy as np
import pytest

from engine import reconstruct
from engine.solver.knn import PointTree
from tests import shapes


def asymmetric_cloud(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoid-like torus tilted off the axes, so a wrong transform cannot hide by symmetry."""
    p, nrm = shapes.torus(n, seed=seed)
    rot = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))[0]
    stretch = np.array([1.0, 0.8, 1.3])
    q = (p * stretch) @ rot.T
    m = (nrm / stretch) @ rot.T
    return q, m / np.linalg.norm(m, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def base() -> tuple[np.ndarray, np.ndarray, object]:
    p, n = asymmetric_cloud(10_000)
    return p, n, reconstruct(p, n, device="cpu")


@pytest.mark.parametrize("offset, scale", [(1e6, 1.0), (0.0, 1e-3), (0.0, 1e3), (-2.5e6, 1e3)])
def test_same_mesh_up_to_the_transform(base: tuple, offset: float, scale: float) -> None:
    p, n, ref = base
    shift = np.array([offset, -0.5 * offset, 0.25 * offset])
    mesh = reconstruct(p * scale + shift, n, device="cpu")
    back = (mesh.local_vertices.astype(np.float64) + mesh.origin - shift) / scale
    assert abs(mesh.faces.shape[0] - ref.faces.shape[0]) <= 0.01 * ref.faces.shape[0]
    h = ref.stats["voxel_size"]
    assert np.abs(mesh.stats["voxel_size"] / scale - h) < 1e-6 * h
    # Simplification puts a merged vertex where its quadric is least, which on flat parts is ill-conditioned
    # along the surface: the transform's 1e-6 differences slide it along the surface, not off it.  So each
    # vertex is compared with the reference's surface (the plane of its nearest vertex), not vertex by vertex.
    _, near = PointTree(ref.vertices64).query(back, 1)
    near = near[:, 0]
    off = np.abs(((back - ref.vertices64[near]) * ref.normals[near]).sum(axis=1))
    assert off.max() < 0.02 * h, off.max() / h


def test_doubling_the_points_changes_little(base: tuple) -> None:
    p, n, ref = base
    p2, n2 = asymmetric_cloud(20_000, seed=1)
    mesh = reconstruct(p2, n2, device="cpu", voxel_size=ref.stats["voxel_size"])
    h = ref.stats["voxel_size"]
    d1, _ = PointTree(ref.vertices64).query(mesh.vertices64, 1)
    d2, _ = PointTree(mesh.vertices64).query(ref.vertices64, 1)
    assert 0.5 * (d1.mean() + d2.mean()) < 0.15 * h
