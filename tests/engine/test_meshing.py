"""Marching cubes over sparse refined cells gives a closed, manifold, outward mesh of an analytic field."""

from __future__ import annotations

import numpy as np
import torch

from engine.surface.mc_table import CORNERS, EDGES, TRIANGLES
from engine.surface.meshing import candidate_cells, marching_cubes
from tests.meshcheck import boundary_edges, components, inconsistent_edges, non_manifold_edges, signed_volume


def test_table_uses_only_crossing_edges() -> None:
    for case in range(256):
        inside = [(case >> k) & 1 for k in range(8)]
        for tri in TRIANGLES[case]:
            for e in tri[tri >= 0]:
                a, b = EDGES[e]
                assert inside[a] != inside[b]
    assert (TRIANGLES[0] < 0).all() and (TRIANGLES[255] < 0).all()


def test_sphere_field_meshes_closed() -> None:
    centre, radius = torch.tensor([0.3, -0.2, 0.1]), 7.3

    def field(p: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(p - centre, dim=1) - radius

    start = torch.stack(torch.meshgrid(*[torch.arange(-2, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    cells, size, values = candidate_cells(start, 4.0, 3, field)
    assert size == 0.5
    assert torch.allclose(values, field((cells[:, None, :] + torch.tensor(CORNERS)).reshape(-1, 3) * size).view(-1, 8))
    verts, faces, _ = marching_cubes(cells, size, values)
    v, f = verts.double().numpy(), faces.numpy()
    assert boundary_edges(f) == 0 and non_manifold_edges(f) == 0 and inconsistent_edges(f) == 0
    assert components(len(v), f) == 1
    r = np.linalg.norm(v - centre.numpy(), axis=1)
    assert np.abs(r - radius).max() < 0.02
    assert abs(signed_volume(v, f) - 4 / 3 * np.pi * radius**3) < 0.01 * 4 / 3 * np.pi * radius**3


def test_two_close_spheres_stay_separate() -> None:
    """Thin gaps (less than a coarse cell) survive the coarse-to-fine refinement."""
    a, b, radius = torch.tensor([-3.6, 0.0, 0.0]), torch.tensor([3.6, 0.0, 0.0]), 3.3

    def field(p: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.linalg.vector_norm(p - a, dim=1), torch.linalg.vector_norm(p - b, dim=1)) - radius

    start = torch.stack(torch.meshgrid(*[torch.arange(-2, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    cells, size, values = candidate_cells(start, 4.0, 3, field)
    verts, faces, _ = marching_cubes(cells, size, values)
    assert components(len(verts), faces.numpy()) == 2
    assert boundary_edges(faces.numpy()) == 0


def test_mesh_edges_are_blenders_layout() -> None:
    """Unique undirected edges, and per corner the edge to the next corner of its face."""
    from engine.mesh import mesh_edges

    rng = np.random.default_rng(0)
    faces = rng.integers(0, 50, size=(300, 3)).astype(np.int32)
    edges, corner_edges = mesh_edges(faces, 50)
    assert edges.dtype == np.int32 and corner_edges.dtype == np.int32 and corner_edges.shape == (900,)
    pairs = {tuple(sorted(p)) for f in faces.tolist() for p in zip(f, f[1:] + f[:1], strict=True)}
    assert {tuple(e) for e in edges.tolist()} == pairs and len(edges) == len(pairs)
    corners = faces.reshape(-1)
    following = np.roll(faces, -1, axis=1).reshape(-1)
    got = np.sort(edges[corner_edges], axis=1)
    assert (got == np.sort(np.stack([corners, following], axis=1), axis=1)).all()
