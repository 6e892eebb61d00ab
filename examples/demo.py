"""The main job (``python3 build.py demo``): reconstruct the bundled example cloud.

Writes out/example_mesh.ply and a picture of it, out/example_mesh.png.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from engine import reconstruct
from engine.ply import read_points, write_mesh

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "trefoil.ply"


def render(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None, path: Path, title: str) -> None:
    """Flat-shaded painter's-algorithm rendering with matplotlib (no GPU, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    yaw, pitch = np.radians(30), np.radians(-55)
    rz = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    v = (vertices - vertices.mean(axis=0)) @ (rx @ rz).T
    tri = v[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    facing = normal[:, 2] > 0
    light = np.array([0.3, 0.5, 0.8]) / np.linalg.norm([0.3, 0.5, 0.8])
    shade = 0.25 + 0.75 * np.clip(normal @ light, 0, 1)
    base = colors[faces].mean(axis=1)[:, :3] if colors is not None else np.full((len(faces), 3), 0.8)
    fc = np.clip(base * shade[:, None], 0, 1)
    order = np.argsort(tri[:, :, 2].mean(axis=1))
    order = order[facing[order]]
    fig, ax = plt.subplots(figsize=(8, 6), dpi=110)
    ax.add_collection(PolyCollection(tri[order][:, :, :2], facecolors=fc[order], edgecolors=fc[order],
                                     linewidths=0.3, antialiaseds=False))
    ax.set_xlim(v[:, 0].min(), v[:, 0].max())
    ax.set_ylim(v[:, 1].min(), v[:, 1].max())
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    fig.savefig(path, bbox_inches="tight", facecolor="white")
    plt.close(fig)


class StagePrinter:
    """Prints each stage once, when it starts (a log, not a progress bar: the demo also runs under CI)."""

    def __init__(self) -> None:
        self.stage = ""
        self.t0 = time.perf_counter()

    def __call__(self, stage: str, fraction: float, text: str) -> None:
        if stage != self.stage:
            self.stage = stage
            print(f"{time.perf_counter() - self.t0:7.2f} s  {stage}", flush=True)


def main() -> int:
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    cloud = read_points(EXAMPLE)
    t0 = time.perf_counter()
    mesh = reconstruct(cloud.points, cloud.normals, cloud.colors, progress=StagePrinter())
    seconds = time.perf_counter() - t0
    write_mesh(out / "example_mesh.ply", mesh)
    s = mesh.stats
    title = (f"{EXAMPLE.name}: {s['points_used']} points -> {s['faces']} triangles, "
             f"voxel {s['voxel_size']:.3g}, {seconds:.1f} s on {s['device']}")
    render(mesh.vertices64, mesh.faces, mesh.colors, out / "example_mesh.png", title)
    print(f"wrote {out / 'example_mesh.ply'} and {out / 'example_mesh.png'}")
    print(title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
