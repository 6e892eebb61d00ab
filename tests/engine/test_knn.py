"""The compiled all-points neighbour search (engine.solver.knn.cell_knn) against the k-d tree, and its chooser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

import engine.solver.knn as knn
import engine.warm as warm
from engine.solver import kernels
from tests import shapes


def _clouds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    torus, _ = shapes.torus(5000)
    g = np.arange(12, dtype=np.float64)
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3) * 0.1  # ties, cell faces
    flat = np.column_stack([rng.uniform(0, 1, (3000, 2)), np.zeros(3000)])  # one cell thick along z
    return {
        # duplicates, and strays far from everything: the second pass and the k-d tree take those
        "torus+strays": np.concatenate([torus, torus[:50], rng.uniform(-5, 5, size=(20, 3))]),
        "grid": grid,
        "flat": flat,
        "far from the origin": torus + 1e6,
        "one cluster, one point": np.concatenate([rng.normal(0, 0.01, (500, 3)), [[100.0, 0.0, 0.0]]]),
    }


@pytest.mark.parametrize("name", list(_clouds()))
@pytest.mark.parametrize("k", [1, 12, 17])
def test_the_compiled_search_finds_the_k_d_trees_distances(name: str, k: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Every point's k nearest distances as the k-d tree's, its indices at those distances, results in ``order``."""
    points = _clouds()[name]
    reaches: list[int] = []
    real = kernels.cell_knn
    monkeypatch.setattr(kernels, "cell_knn", lambda *a, **kw: reaches.append(a[7]) or real(*a, **kw))
    order, dist, idx = knn.cell_knn(points, k)
    assert sorted(order.tolist()) == list(range(len(points)))
    assert dist.dtype == np.float32 and dist.shape == idx.shape == (len(points), k)
    ref, _ = cKDTree(points).query(points[order], k=k)
    ref = ref.reshape(len(points), k)
    np.testing.assert_allclose(dist, ref, rtol=1e-6, atol=1e-9)
    got = np.linalg.norm(points[order][idx] - points[order][:, None, :], axis=2)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)
    if name == "torus+strays" and k > 1:
        assert set(reaches) == {1, 2}  # the strays were searched again


def test_isolated_points_go_to_the_k_d_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    """A point farther than the second pass's cells from any other is left to the k-d tree, and found."""
    queried: list[int] = []
    real = knn.cKDTree

    class Counting(real):  # type: ignore[misc, valid-type]
        def query(self, x: np.ndarray, *a: object, **kw: object) -> tuple[np.ndarray, np.ndarray]:
            queried.append(len(x))
            return super().query(x, *a, **kw)

    monkeypatch.setattr(knn, "cKDTree", Counting)
    points = _clouds()["one cluster, one point"]
    order, dist, _ = knn.cell_knn(points, 5)
    assert queried and queried[0] >= 1
    lone = int(np.flatnonzero(order == len(points) - 1)[0])
    assert dist[lone, 1] > 99.0


def test_tiny_clouds() -> None:
    """One point, and k above the point count: k shrinks to the points there are."""
    order, dist, idx = knn.cell_knn(np.zeros((1, 3)), 17)
    assert order.tolist() == [0] and dist.tolist() == [[0.0]] and idx.tolist() == [[0]]
    order, dist, _ = knn.cell_knn(np.eye(3), 17)
    assert dist.shape == (3, 3) and np.allclose(np.sort(dist[:, 1:], axis=1), np.sqrt(2.0))


@pytest.mark.parametrize("compiled", [False, True])
def test_self_knn_gives_the_same_neighbours_either_way(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The k-d tree path (small clouds in a fresh process) and the compiled one: the same distances, and indices
    that are positions in the returned order."""
    monkeypatch.setattr(warm, "COMPILED_MIN", 0 if compiled else 1 << 40)
    monkeypatch.setattr(warm, "kernels_loaded", lambda: False)
    calls: list[int] = []
    real = knn.cell_knn
    monkeypatch.setattr(knn, "cell_knn", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    points = _clouds()["torus+strays"]
    order, dist, idx = knn.self_knn(points, 17)
    assert bool(calls) == compiled
    ref, _ = cKDTree(points).query(points[order], k=17)
    np.testing.assert_allclose(dist, ref, rtol=1e-6, atol=1e-9)
    got = np.linalg.norm(points[order][idx] - points[order][:, None, :], axis=2)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)


def test_cell_order_is_a_spatial_permutation() -> None:
    """Every row once, in runs of one cell each (no cell's points split), far from the origin too."""
    points = _clouds()["far from the origin"]
    order = knn.cell_order(points, 0.05)
    assert sorted(order.tolist()) == list(range(len(points)))
    cells = np.floor((points[order] - points.min(axis=0)) / 0.05).astype(np.int64)
    runs = np.flatnonzero(np.any(np.diff(cells, axis=0) != 0, axis=1)).shape[0] + 1
    assert runs == np.unique(cells, axis=0).shape[0]
    assert knn.cell_order(np.zeros((0, 3)), 1.0).shape == (0,)


def test_a_bounded_query_finds_what_lies_within_the_bound() -> None:
    """Neighbours at most ``bound`` away as the unbounded search finds them; none beyond (inf, index N)."""
    rng = np.random.default_rng(3)
    points = rng.uniform(0, 1, (2000, 3))
    queries = np.concatenate([rng.uniform(-0.5, 1.5, (500, 3)), points[:5] + [0.1, 0.0, 0.0]])
    tree = knn.PointTree(points)
    full, full_idx = tree.query(queries, 1)
    bound = 0.1
    dist, idx = tree.query(queries, 1, bound=bound)
    inside = full[:, 0] <= bound
    assert 0 < inside.sum() < len(queries) and inside[-5:].all()
    assert np.array_equal(dist[inside], full[inside]) and np.array_equal(idx[inside], full_idx[inside])
    assert np.isinf(dist[~inside]).all() and (idx[~inside] == len(points)).all()


def test_the_cell_test_of_nearness_is_the_trees(monkeypatch: pytest.MonkeyPatch) -> None:
    """``grid_within`` (trimming's test on a GPU, here in torch on the CPU) marks the queries the k-d tree's
    ``within`` marks: far ones, near ones, ones in batches, none without points or radius."""
    monkeypatch.setattr(knn, "QUERY_BATCH", 97)
    rng = np.random.default_rng(5)
    points = shapes.sphere(3000, seed=4)[0].astype(np.float32)
    queries = np.concatenate([rng.uniform(-1.5, 1.5, (700, 3)), points[:300] * 1.03]).astype(np.float32)
    tree = knn.PointTree(points)
    for radius in (0.02, 0.05, 0.3):
        expected = tree.within(queries, radius)
        got = knn.grid_within(torch.from_numpy(points), torch.from_numpy(queries), radius).numpy()
        assert 0 < expected.sum() < len(queries)
        # the tree decides in float64, the cells in the points' float32: only a query at the radius may differ
        d = tree.query(queries, 1)[0][:, 0]
        assert np.array_equal(got[np.abs(d - radius) > 1e-6], expected[np.abs(d - radius) > 1e-6])
    assert not knn.grid_within(torch.zeros((0, 3)), torch.from_numpy(queries), 0.1).any()
    assert not knn.grid_within(torch.from_numpy(points), torch.from_numpy(queries), 0.0).any()


@pytest.mark.parametrize("loading", [False, True])
def test_tree_searches_leave_numbas_start_a_thread(loading: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the kernels load in the background a k-d tree search takes one thread fewer (at least one); the
    neighbours are the same."""
    monkeypatch.setattr(warm, "COMPILED_MIN", 1 << 40)
    monkeypatch.setattr(warm, "kernels_loaded", lambda: False)
    monkeypatch.setattr(warm, "kernels_loading", lambda: loading)
    for threads, want in ((2, 1), (1, 1), (16, 15)):
        monkeypatch.setattr(knn, "thread_count", lambda threads=threads: threads)
        assert knn.search_threads() == (want if loading else -1)
    seen: list[int] = []

    class Recording(knn.cKDTree):  # type: ignore[misc, name-defined]
        def query(self, *a: object, **kw: object) -> tuple[np.ndarray, np.ndarray]:
            seen.append(int(kw["workers"]))  # type: ignore[call-overload]
            return super().query(*a, **kw)

    monkeypatch.setattr(knn, "cKDTree", Recording)
    points = _clouds()["torus+strays"]
    order, dist, _ = knn.self_knn(points, 17)
    assert seen == [15 if loading else -1]
    ref, _ = cKDTree(points).query(points[order], k=17)
    np.testing.assert_allclose(dist, ref, rtol=1e-6, atol=1e-9)
