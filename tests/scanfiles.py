"""Scan files the tests write themselves: a 3D Gaussian Splatting PLY and an E57 of a known shape."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from tests import shapes

SH_C0 = 0.28209479177387814


@dataclass
class Splats:
    """What a splat file holds: the surface splats' centres, unit normals and colours; the counts of the rest."""

    points: np.ndarray
    normals: np.ndarray
    colors: np.ndarray
    faint: int
    degenerate: int


def quaternion_from_matrix(r: np.ndarray) -> np.ndarray:
    """Rotation matrices (N, 3, 3) -> quaternions (N, 4) (w, x, y, z); well away from w = 0 here (trace > -1)."""
    w = 0.5 * np.sqrt(np.maximum(1.0 + np.trace(r, axis1=1, axis2=2), 1e-12))
    return np.stack([w, (r[:, 2, 1] - r[:, 1, 2]) / (4 * w), (r[:, 0, 2] - r[:, 2, 0]) / (4 * w),
                     (r[:, 1, 0] - r[:, 0, 1]) / (4 * w)], axis=1)


def write_splat_sphere(path: Path, n: int = 3000, centre: tuple[float, float, float] = (0.0, 0.0, 0.0),
                       faint: int = 40, degenerate: int = 7, seed: int = 0) -> Splats:
    """A unit sphere as 3DGS splats: flat, tangent, noisy centres, random in-plane turn and axis order, random
    quaternion scale; plus ``faint`` floaters at 1.5-2 radii and ``degenerate`` round or broken splats."""
    rng = np.random.default_rng(seed)
    p, nrm = shapes.sphere(n, seed=seed)
    p = p + rng.normal(scale=0.005, size=p.shape) + centre
    # an orthonormal frame per splat (t1, t2, normal), turned at random about the normal
    helper = np.where(np.abs(nrm[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
    t1 = np.cross(nrm, helper)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    t2 = np.cross(nrm, t1)
    angle = rng.uniform(0, 2 * np.pi, n)[:, None]
    t1, t2 = np.cos(angle) * t1 + np.sin(angle) * t2, -np.sin(angle) * t1 + np.cos(angle) * t2
    short = rng.integers(0, 3, n)  # which local axis carries the normal
    axes = np.zeros((n, 3, 3))
    scales = np.log(np.tile([0.03, 0.02, 0.02], (n, 1)))
    for i in range(n):
        others = [a for a in range(3) if a != short[i]]
        axes[i, :, short[i]], axes[i, :, others[0]], axes[i, :, others[1]] = nrm[i], t1[i], t2[i]
        scales[i, short[i]] = np.log(0.002)
        scales[i, others[0]] = np.log(0.03)
    flip = np.linalg.det(axes) < 0  # a proper rotation: flip the longest axis where the frame is left-handed
    longest = np.argmax(scales, axis=1)
    axes[flip, :, longest[flip]] *= -1
    quat = quaternion_from_matrix(axes) * rng.uniform(0.5, 2.0, (n, 1))  # files need not store unit ones
    dc = rng.uniform(-1.5, 1.5, (n, 3))
    opacity = rng.uniform(2.0, 6.0, n)  # logits: 0.88-1.0

    fp, _ = shapes.sphere(faint, seed=seed + 1)
    fp = fp * rng.uniform(1.5, 2.0, (faint, 1)) + centre
    f_opacity = np.full(faint, -4.0)  # 1.8%
    dp, _ = shapes.sphere(degenerate, seed=seed + 2)
    dp = dp * 1.7 + centre
    d_scales = np.log(np.full((degenerate, 3), 0.02))  # round: no shortest axis
    d_quat = np.tile([1.0, 0, 0, 0], (degenerate, 1))
    d_quat[0] = 0.0  # a zero quaternion
    d_scales[1, 0] = np.nan  # a broken scale
    rows = [(p, dc, opacity, scales, quat),
            (fp, np.zeros((faint, 3)), f_opacity, np.log(np.tile([0.03, 0.02, 0.002], (faint, 1))),
             np.tile([1.0, 0, 0, 0], (faint, 1))),
            (dp, np.zeros((degenerate, 3)), np.full(degenerate, 4.0), d_scales, d_quat)]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *[f"f_rest_{i}" for i in range(3)],
             "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    total = n + faint + degenerate
    v = np.zeros(total, dtype=[(name, "f4") for name in names])
    start = 0
    for pts, colour, op, sc, q in rows:
        part = slice(start, start + len(pts))
        for i, axis in enumerate("xyz"):
            v[axis][part] = pts[:, i]
        for i in range(3):
            v[f"f_dc_{i}"][part], v[f"scale_{i}"][part] = colour[:, i], sc[:, i]
        for i in range(4):
            v[f"rot_{i}"][part] = q[:, i]
        v["opacity"][part] = op
        start += len(pts)
    PlyData([PlyElement.describe(v, "vertex")]).write(str(path))
    colors = np.clip(0.5 + SH_C0 * dc.astype(np.float32).astype(np.float64), 0, 1)
    return Splats(p.astype(np.float32).astype(np.float64), nrm, colors, faint, degenerate)


def rotation_z(degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """A turn about +Z as a matrix (3, 3) and a quaternion (4,) (w, x, y, z)."""
    a = np.radians(degrees)
    m = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return m, np.array([np.cos(a / 2), 0, 0, np.sin(a / 2)])


def write_e57_sphere(path: Path, n: int = 1500, centre: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A unit sphere at ``centre`` as two E57 scans from two scanner poses, each in its scanner's own frame.

    Each scan holds the points of about ``n`` that its scanner sees (facing it), as a real scan would; a
    point both see goes to the first.  Returns the points (M, 3) in the file's frame (scan 0's, then scan
    1's), their uint8 colours, and each point's scanner position (M, 3).
    """
    import pye57

    centre = np.array([10.0, -5.0, 2.0]) if centre is None else centre
    p, nrm = shapes.sphere(2 * n, seed=5)
    world = p + centre
    rgb = np.random.default_rng(5).integers(0, 256, size=(2 * n, 3)).astype(np.uint8)
    poses = [(rotation_z(30.0), centre + [4.0, 0, 1.0]), (rotation_z(-120.0), centre + [-3.0, -3.0, -0.5])]
    seen = [np.einsum("ij,ij->i", nrm, t - world) > 0.2 * np.linalg.norm(t - world, axis=1) for _, t in poses]
    scans = [seen[0], seen[1] & ~seen[0]]
    e57 = pye57.E57(str(path), mode="w")
    for rows, ((m, q), t) in zip(scans, poses, strict=True):
        local = (world[rows] - t) @ m  # m.T @ (x - t), row-wise
        data = {"cartesianX": local[:, 0], "cartesianY": local[:, 1], "cartesianZ": local[:, 2],
                "colorRed": rgb[rows, 0], "colorGreen": rgb[rows, 1], "colorBlue": rgb[rows, 2],
                "intensity": np.linspace(0, 1, int(rows.sum())).astype(np.float32)}
        e57.write_scan_raw(data, rotation=q, translation=t)
    e57.close()
    sensors = np.concatenate([np.tile(t, (int(rows.sum()), 1)) for rows, (_, t) in zip(scans, poses, strict=True)])
    return (np.concatenate([world[rows] for rows in scans]), np.concatenate([rgb[rows] for rows in scans]),
            sensors)
