"""The quadric edge collapse kernel (engine.surface.quadrics): bound, borders, orientation, topology."""

from __future__ import annotations

import numpy as np
import pytest

from engine.surface import quadrics
from engine.surface.quadrics import collapse_mesh
from tests import shapes
from tests.meshcheck import boundary_edges, components, inconsistent_edges, non_manifold_edges


def _normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def _border_points(v: np.ndarray, f: np.ndarray) -> set[tuple[float, ...]]:
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    u, c = np.unique(e, axis=0, return_counts=True)
    return {tuple(p) for p in v[np.unique(u[c == 1])]}


def test_a_flat_square_collapses_to_few_faces_with_its_border_in_place() -> None:
    v, f = shapes.square(20)
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
    v, f = shapes.square(20, bend=0.05)
    bound = 0.01 ** 2
    alpha = bound / 14.0 ** 7.0  # the threshold reaches the bound at the 12th pass
    v1, f1 = collapse_mesh(v, f, alpha, 7.0, 12, 4, False)
    assert f1.shape[0] < 0.8 * f.shape[0]
    assert np.abs(v1[:, 2] - 0.05 * (v1[:, 0] - 10) ** 2).max() <= 0.01
    flat = collapse_mesh(*shapes.square(20), alpha, 7.0, 12, 4, False)[1]
    assert flat.shape[0] < f1.shape[0]  # the bent sheet keeps more faces than the flat one


def test_a_budget_is_met_and_the_border_moves_only_when_allowed() -> None:
    v, f = shapes.square(20)
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
        v, f = shapes.square(6)
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


def test_a_merge_that_folds_a_face_against_its_neighbour_is_refused() -> None:
    """A flat hexagonal fan (normals +z) beside a steep face beyond one of its outer edges (80 degrees from +z):
    merging the centre with a ring vertex at a point below the centre turns each fan face by only 22 degrees, which
    the test of each face against its own old normal allows, but folds the face on that edge against the steep
    one (their normals then 102 degrees apart).  The crease test refuses it; above the centre it does not."""
    ring = np.array([[np.cos(t), np.sin(t), 0.0] for t in np.arange(6) * np.pi / 3])
    edge_middle = 0.5 * (ring[1] + ring[2])
    steep = edge_middle * 1.05 + [0.0, 0.0, -1.05 * np.linalg.norm(edge_middle) * np.tan(np.radians(80))]
    v = np.concatenate([[[0.0, 0.0, 0.0]], ring, [steep]])  # centre 0, ring 1-6, steep corner 7
    f = np.array([[0, 1 + i, 1 + (i + 1) % 6] for i in range(6)] + [[3, 2, 7]], np.uint32)
    outer = np.cross(v[2] - v[3], v[7] - v[3])
    assert 0.0 < outer[2] / np.linalg.norm(outer) < 0.2  # the steep face leans 80-90 degrees from +z
    dead = np.zeros(f.shape[0], np.bool_)
    ref_face, ref_corner = np.empty(64, np.uint32), np.empty(64, np.uint8)
    first, count = np.zeros(v.shape[0], np.int64), np.zeros(v.shape[0], np.int64)
    quadrics._build_refs(f, dead, ref_face, ref_corner, first, count)
    fan, fan_normal = np.empty((quadrics.FAN_LIMIT, 3), np.int64), np.empty((quadrics.FAN_LIMIT, 3))
    centre, far = 0, 5  # the ring vertex opposite the steep face's edge

    def verdicts(z: float) -> tuple[bool, bool]:
        """(the per-face turn test's, the crease test's) verdict on merging centre and far at (0, 0, z)."""
        turned = quadrics._folds(v, f, ref_face, ref_corner, first[centre], count[centre], dead, far, 0.0, 0.0, z) \
            or quadrics._folds(v, f, ref_face, ref_corner, first[far], count[far], dead, centre, 0.0, 0.0, z)
        return turned, quadrics._creases(v, f, ref_face, ref_corner, first, count, dead, centre, far, 0.0, 0.0, z,
                                         fan, fan_normal)

    assert verdicts(-0.35) == (False, True)
    assert verdicts(0.35) == (False, False)
    assert verdicts(0.0) == (False, False)
