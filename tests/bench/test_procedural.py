"""Procedural training shapes (bench/procedural.py): closed manifold meshes that agree with their SDFs."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import procedural  # noqa: E402
import scanner  # noqa: E402
from procedural import KINDS, Shape, make_shape  # noqa: E402
from scanner import SURFACE, ScanParams  # noqa: E402

RESOLUTION = 48  # coarser than the default 96: the same code, a quarter of the time


@functools.cache
def _shape(seed: int) -> Shape:
    return make_shape(seed, resolution=RESOLUTION)


def _kind_seed(kind: str, round_: int = 1) -> int:
    """A seed whose default kind is ``kind``."""
    return KINDS.index(kind) + len(KINDS) * round_


def _gradient(shape: Shape, p: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """Central-difference gradient of the shape's SDF at points p (N,3)."""
    return np.stack([(shape.sdf(p + h * e) - shape.sdf(p - h * e)) / (2 * h) for e in np.eye(3)], axis=1)


@pytest.mark.parametrize("kind", KINDS)
def test_mesh_is_closed_manifold_outward_and_normalised(kind: str) -> None:
    s = _shape(_kind_seed(kind))
    assert s.kind == kind and s.vertices.dtype == np.float64 and s.faces.dtype == np.int64
    assert len(s.faces) > 500
    f = s.faces
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _, count = np.unique(edges, axis=0, return_counts=True)
    assert count.min() == 2 and count.max() == 2  # every undirected edge in exactly two faces
    assert len(np.unique(f)) == len(s.vertices)  # no stray vertices
    v = s.vertices
    volume = np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6
    assert volume > 0  # faces wind outward
    lo, hi = v.min(axis=0), v.max(axis=0)
    assert np.allclose((lo + hi) / 2, 0.0, atol=1e-9) and np.linalg.norm(hi - lo) == pytest.approx(1.0)
    # the grid step is what the resolution says: about RESOLUTION cells across the longest side
    assert 0.85 * RESOLUTION < (hi - lo).max() / s.cell < 1.02 * RESOLUTION


@pytest.mark.parametrize("kind", KINDS)
def test_sdf_describes_the_mesh(kind: str) -> None:
    s = _shape(_kind_seed(kind))
    d = s.sdf(s.vertices)
    assert np.abs(d).max() < s.cell  # the mesh lies on the zero level, up to the grid
    # a little inside, along -grad: negative; the same step outward: positive (the plate is 0.02 thick at least)
    rng = np.random.default_rng(0)
    p = s.vertices[rng.choice(len(s.vertices), 500, replace=False)]
    g = _gradient(s, p)
    n = g / np.linalg.norm(g, axis=1)[:, None]
    dp = s.sdf(p)[:, None]
    assert (s.sdf(p - (dp + 0.003) * n) < 0).mean() > 0.97
    assert (s.sdf(p - (dp - 0.003) * n) > 0).mean() > 0.97
    # a distance, not just a sign: |grad| about 1 at the surface, never much above (no jumps)
    slope = np.linalg.norm(_gradient(s, s.vertices[::3]), axis=1)
    assert 0.97 < np.median(slope) < 1.03 and np.percentile(slope, 99) < 1.1
    # positive everywhere outside the bounding box (on a shell 2-30% beyond it)
    lo, hi = s.vertices.min(axis=0), s.vertices.max(axis=0)
    u = rng.uniform(-1, 1, (4000, 3))
    u /= np.abs(u).max(axis=1)[:, None]  # on the unit cube's surface
    q = (lo + hi) / 2 + u * (hi - lo) / 2 * rng.uniform(1.02, 1.3, (4000, 1)) + np.sign(u) * 0.01
    assert (s.sdf(q) > 0).all()


def test_same_seed_same_shape_other_seed_other_shape() -> None:
    a, b = _shape(3), make_shape(3, resolution=RESOLUTION)
    assert a.kind == b.kind == KINDS[3]
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces)
    p = np.random.default_rng(1).uniform(-0.6, 0.6, (1000, 3))
    assert np.array_equal(a.sdf(p), b.sdf(p))
    c = _shape(3 + len(KINDS))  # same kind, other seed
    assert c.kind == a.kind
    assert a.vertices.shape != c.vertices.shape or not np.allclose(a.vertices, c.vertices)
    assert not np.allclose(a.sdf(p), c.sdf(p))
    assert make_shape(3, kind="csg", resolution=24).kind == "csg"
    with pytest.raises(ValueError):
        make_shape(3, kind="teapot")


def test_splits_are_fixed_and_disjoint() -> None:
    train, validation = set(procedural.TRAIN_SEEDS), set(procedural.VALIDATION_SEEDS)
    assert len(train) == 10_000 and len(validation) == 100 and not train & validation
    assert procedural.split("train", 3) == [0, 1, 2]
    assert procedural.split("validation", 2) == [10_000, 10_001]
    assert {KINDS[s % len(KINDS)] for s in procedural.split("validation", 100)} == set(KINDS)
    with pytest.raises(ValueError):
        procedural.split("validation", 101)
    with pytest.raises(KeyError):
        procedural.split("test", 1)


@pytest.mark.parametrize("kind", ["room", "plate"])
def test_scanner_sees_the_sdf_zero_level(kind: str) -> None:
    s = _shape(_kind_seed(kind))
    scan = scanner.scan((s.vertices, s.faces), ScanParams(points=5000, views=4), seed=0)
    assert 2000 < len(scan.points) < 10_000
    hits = scan.clean[scan.labels == SURFACE]
    assert len(hits) == len(scan.points)
    assert np.abs(s.sdf(hits)).max() < s.cell
