"""The quadric edge collapse kernel (engine.surface.quadrics): bound, borders, orientation, topology."""

from __future__ import annotations

import numpy as np
import pytest

from engine.surface.quadrics import collapse_mesh
from tests.meshcheck import boundary_edges, components, inconsistent_edges, non_manifold_edges


def _grid(n: int, bend: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """An n x n square of unit cells (2 triangles each, normals +z), optionally bent into z = bend * x^2."""
    x, y = np.meshgrid(np.arange(n + 1.0), np.arange(n + 1.0), indexing="ij")
    v = np.stack([x.ravel(), y.ravel(), bend * (x.ravel() - n / 2) ** 2], axis=1)
    i = (np.arange(n)[:, None] * (n + 1) + np.arange(n)[None, :]).ravel()
    f = np.concatenate([np.stack([i, i + n + 1, i + n + 2], 1), np.stack([i, i + n + 2, i + 1], 1)])
    return v, f


def _normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def _border_points(v: np.ndarray, f: np.ndarray) -> set[tuple[float, ...]]:
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    u, c = np.unique(e, axis=0, return_counts=True)
    return {tuple(p) for p in v[np.unique(u[c == 1])]}


def test_a_flat_square_collapses_to_few_faces_with_its_border_in_place() -> None:
    v, f = _grid(20)
    v1, f1 = collapse_mesh(v, f, 1e-12, 7.0, 12, 4, False)
    assert f1.shape[0] < 0.2 * f.shape[0], f1.shape[0]
    assert np.allclose(_normals(v1, f1), [0, 0, 1])  # nothing folded over
    assert np.allclose(v1[:, 2], 0)
    assert abs(np.abs(np.cross(v1[f1[:, 1]] - v1[f1[:, 0]], v1[f1[:, 2]] - v1[f1[:, 0]])[:, 2]).sum() / 2 - 400) < 1e-9
    # the border's 80 vertices stay, bit for bit (the inner ones may be pulled onto it, never the reverse)
    assert _border_points(v, f) <= {tuple(p) for p in v1}
    assert boundary_edges(f1) >= 80 and non_manifold_edges(f1) == 0 and inconsistent_edges(f1) == 0


def test_a_bent_sheet_keeps_its_shape_within_the_bound() -> None:
    """The quadric bound holds the vertices near the parabola: none farther than the bound allows."""
    v, f = _grid(20, bend=0.05)
    bound = 0.01 ** 2
    alpha = bound / 14.0 ** 7.0  # the threshold reaches the bound at the 12th pass
    v1, f1 = collapse_mesh(v, f, alpha, 7.0, 12, 4, False)
    assert f1.shape[0] < 0.8 * f.shape[0]
    assert np.abs(v1[:, 2] - 0.05 * (v1[:, 0] - 10) ** 2).max() <= 0.01
    flat = collapse_mesh(*_grid(20), alpha, 7.0, 12, 4, False)[1]
    assert flat.shape[0] < f1.shape[0]  # the bent sheet keeps more faces than the flat one


def test_a_budget_is_met_and_the_border_moves_only_when_allowed() -> None:
    v, f = _grid(20)
    pinned = collapse_mesh(v, f, 1e-9, 7.0, 20, 50, False)
    assert pinned[1].shape[0] > 50  # 80 border vertices cannot be held by 50 faces
    assert _border_points(v, f) <= {tuple(p) for p in pinned[0]}
    moved = collapse_mesh(v, f, 1e-9, 7.0, 20, 50, True)
    assert moved[1].shape[0] <= 55
    assert non_manifold_edges(moved[1]) == 0 and inconsistent_edges(moved[1]) == 0
    assert components(moved[0].shape[0], moved[1]) == 1


def test_a_tetrahedron_stays_and_an_edge_of_three_sheets_stays_put() -> None:
    tet = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    tf = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]])
    v1, f1 = collapse_mesh(tet, tf, 1.0, 7.0, 12, 1, False)  # any cost allowed, a target of one face
    assert f1.shape[0] == 4 and np.array_equal(v1, tet)
    # three fine square sheets on one edge (x = 0, z = 0): the edge's vertices are on more than two faces' edges
    sheets = []
    for angle in (0.0, 2.0, 4.0):
        v, f = _grid(6)
        v = v[:, [1, 0, 2]]  # the shared edge along y, at x = 0
        v = np.stack([v[:, 0] * np.cos(angle), v[:, 1], v[:, 0] * np.sin(angle)], axis=1)
        sheets.append((v, f))
    offset = np.cumsum([0] + [s[0].shape[0] for s in sheets[:-1]])
    v = np.concatenate([s[0] for s in sheets])
    f = np.concatenate([s[1] + o for s, o in zip(sheets, offset, strict=True)])
    _, key, ids = np.unique(np.round(v, 9), axis=0, return_index=True, return_inverse=True)
    v, f = v[key], ids.reshape(-1)[f]  # the sheets share the edge's vertices
    assert non_manifold_edges(f) == 6
    v1, f1 = collapse_mesh(v, f, 1e-9, 7.0, 20, 4, False)
    spine = {tuple(p) for p in v[np.abs(v[:, 0]) + np.abs(v[:, 2]) < 1e-12]}
    assert spine <= {tuple(p) for p in v1} and f1.shape[0] < f.shape[0]


def test_too_many_vertices_for_int32_indices_are_refused_not_wrapped() -> None:
    v = np.lib.stride_tricks.as_strided(np.zeros(3), shape=(2**31, 3), strides=(0, 8))  # no memory behind it
    with pytest.raises(ValueError, match="int32"):
        collapse_mesh(v, np.array([[0, 1, 2]]), 1e-9, 7.0, 1, 4, False)
