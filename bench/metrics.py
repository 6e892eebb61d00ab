"""Mesh-vs-ground-truth metrics: Chamfer-L1, F-score, normal consistency, topology."""
from __future__ import annotations

import numpy as np
from geom import count_components, edge_counts, face_geometry, sample_surface, weld


class SurfaceQuery:
    """Exact closest-point queries against a triangle mesh (Open3D RaycastingScene)."""

    def __init__(self, v: np.ndarray, f: np.ndarray) -> None:
        import open3d as o3d

        self._o3d = o3d
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(
            o3d.core.Tensor(np.ascontiguousarray(v, np.float32)),
            o3d.core.Tensor(np.ascontiguousarray(f, np.uint32)),
        )

    def closest(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distances (float64) and face normals of the closest surface points."""
        ans = self.scene.compute_closest_points(
            self._o3d.core.Tensor(np.ascontiguousarray(q, np.float32))
        )
        cp = ans["points"].numpy().astype(np.float64)
        d = np.linalg.norm(q.astype(np.float64) - cp, axis=1)
        return d, np.nan_to_num(ans["primitive_normals"].numpy().astype(np.float64))


def topology(v: np.ndarray, f: np.ndarray) -> dict:
    """Boundary / non-manifold edge counts and connected pieces after exact welding."""
    nv, g, dropped = weld(v, f)
    bnd, nonman, ne = edge_counts(g, nv)
    return {
        "welded_vertices": int(nv), "dropped_faces": dropped, "edges": ne,
        "boundary_edges": bnd, "nonmanifold_edges": nonman,
        "watertight": bool(bnd == 0 and nonman == 0 and len(g) > 0),
        "pieces": count_components(g, int(nv)),
    }


def evaluate(
    rv: np.ndarray, rf: np.ndarray, gt: SurfaceQuery, gt_samples: tuple[np.ndarray, np.ndarray],
    diag: float, n_samples: int = 100_000, seed: int = 1, taus: tuple[float, ...] = (0.01, 0.005),
) -> dict:
    """Compare a reconstruction (rv, rf) with the ground truth.

    Distances are divided by the GT bbox diagonal. `gt_samples` = (points, normals)
    sampled on the GT surface; the same number of samples is drawn on the reconstruction.
    """
    out: dict = {"vertices": int(len(rv)), "faces": int(len(rf))}
    _, area = face_geometry(rv, rf) if len(rf) else (None, np.zeros(0))
    if len(rf) == 0 or area.sum() <= 0:
        return out | {"error": "empty mesh"}
    out["area"] = float(area.sum())
    rp, rn, _ = sample_surface(rv, rf, n_samples, np.random.default_rng(seed))
    d_acc, n_at_gt = gt.closest(rp)                      # reconstruction -> GT
    gp, gn = gt_samples
    d_comp, n_at_rec = SurfaceQuery(rv, rf).closest(gp)  # GT -> reconstruction
    d_acc, d_comp = d_acc / diag, d_comp / diag
    dot_acc, dot_comp = (rn * n_at_gt).sum(1), (gn * n_at_rec).sum(1)
    out |= {
        "chamfer_l1": 0.5 * (d_acc.mean() + d_comp.mean()),
        "accuracy": d_acc.mean(), "completeness": d_comp.mean(),
        "acc_p99": float(np.quantile(d_acc, 0.99)), "comp_p99": float(np.quantile(d_comp, 0.99)),
        "hausdorff": float(max(d_acc.max(), d_comp.max())),
        "nc": 0.5 * (np.abs(dot_acc).mean() + np.abs(dot_comp).mean()),
        "nc_signed": 0.5 * (dot_acc.mean() + dot_comp.mean()),
    }
    for tau in taus:
        p, r = float((d_acc < tau).mean()), float((d_comp < tau).mean())
        key = f"{tau * 100:g}%"
        out[f"fscore@{key}"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
        out[f"precision@{key}"], out[f"recall@{key}"] = p, r
    out |= topology(rv, rf)
    return {k: (float(x) if isinstance(x, np.floating) else x) for k, x in out.items()}
