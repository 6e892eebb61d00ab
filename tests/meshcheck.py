"""Topology checks of triangle meshes used by the tests."""

from __future__ import annotations

import numpy as np


def edge_counts(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique undirected edges (E, 2) and how many faces use each."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e.sort(axis=1)
    return np.unique(e, axis=0, return_counts=True)


def boundary_edges(faces: np.ndarray) -> int:
    _, counts = edge_counts(faces)
    return int((counts == 1).sum())


def non_manifold_edges(faces: np.ndarray) -> int:
    _, counts = edge_counts(faces)
    return int((counts > 2).sum())


def inconsistent_edges(faces: np.ndarray) -> int:
    """Directed edges used twice in the same direction (neighbouring faces with opposite winding)."""
    d = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    _, counts = np.unique(d, axis=0, return_counts=True)
    return int((counts > 1).sum())


def components(n_vertices: int, faces: np.ndarray) -> int:
    from scipy.sparse import coo_matrix  # here, not at the top: the Blender tests' environment has no scipy
    from scipy.sparse.csgraph import connected_components

    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_vertices, n_vertices))
    return int(connected_components(graph, directed=False)[0])


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    t = vertices[faces].astype(np.float64)
    return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0)


def surface_gaps(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
                 only_a: np.ndarray | None = None, only_b: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each mesh's vertices (``only_*``: those) to the other's surface, each way.

    The surface near a vertex is the plane of the other mesh's nearest vertex (its vertex normal):
    simplified meshes (engine/surface/simplify.py) put vertices in different places along flat parts,
    so vertex-to-vertex distances would measure the triangulation, not the surface.
    """
    from scipy.spatial import cKDTree  # here, not at the top: the Blender tests' environment has no scipy

    from engine.mesh import vertex_normals

    def one_way(p: tuple[np.ndarray, np.ndarray], q: tuple[np.ndarray, np.ndarray], only: np.ndarray | None
                ) -> np.ndarray:
        x = p[0] if only is None else p[0][only]
        nq = vertex_normals(q[0].astype(np.float64), q[1])
        _, i = cKDTree(q[0]).query(x, workers=-1)
        return np.abs(((x - q[0][i]) * nq[i]).sum(axis=1))

    return one_way(a, b, only_a), one_way(b, a, only_b)


def folded_edges(vertices: np.ndarray, faces: np.ndarray, least_area: float = 1e-3) -> int:
    """Edges whose two faces face apart (normals with a negative dot): a fold a render shows as a dark speck.
    Faces under ``least_area`` of the median area are left out: a needle's normal is rounding, and it covers no
    pixel."""
    v, f = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    area = np.linalg.norm(n, axis=1)
    ends = np.sort(np.stack([f, np.roll(f, -1, axis=1)], axis=2), axis=2).reshape(-1, 2)
    key = ends[:, 0] * v.shape[0] + ends[:, 1]  # int64: the square of a million vertices overflows int32
    order = np.argsort(key, kind="stable")
    shared = np.flatnonzero(key[order][1:] == key[order][:-1])  # the two faces beside each edge, once sorted
    a, b = order[shared] // 3, order[shared + 1] // 3
    seen = np.minimum(area[a], area[b]) >= least_area * np.median(area)
    return int(((n[a] * n[b]).sum(axis=1) < 0)[seen].sum())
