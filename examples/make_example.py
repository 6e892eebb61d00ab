"""Make the bundled example cloud: a trefoil-knot tube sampled with exact normals and colours.

Procedural, so it is ours to redistribute.  Run once; the result is committed
as examples/trefoil.ply.  ``python -m examples.make_example [N]``
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tests.meshfiles import write_points

TUBE_RADIUS = 0.42


def curve(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trefoil centre line and its Frenet normal and binormal at parameters t (M,)."""
    c = np.stack([np.sin(t) + 2 * np.sin(2 * t), np.cos(t) - 2 * np.cos(2 * t), -np.sin(3 * t)], axis=1)
    d1 = np.stack([np.cos(t) + 4 * np.cos(2 * t), -np.sin(t) + 4 * np.sin(2 * t), -3 * np.cos(3 * t)], axis=1)
    d2 = np.stack([-np.sin(t) - 8 * np.sin(2 * t), -np.cos(t) + 8 * np.cos(2 * t), 9 * np.sin(3 * t)], axis=1)
    tangent = d1 / np.linalg.norm(d1, axis=1, keepdims=True)
    binormal = np.cross(d1, d2)
    binormal /= np.linalg.norm(binormal, axis=1, keepdims=True)
    return c, np.cross(binormal, tangent), binormal


def surface(t: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, n, b = curve(t)
    normal = np.cos(a)[:, None] * n + np.sin(a)[:, None] * b
    return c + TUBE_RADIUS * normal, normal


def sample(count: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uniform-by-area samples: rejection on the area element |dP/dt x dP/da|."""
    rng = np.random.default_rng(seed)
    pts, nrm, par = [], [], []
    eps = 1e-4
    while sum(len(p) for p in pts) < count:
        t = rng.uniform(0, 2 * np.pi, 4 * count)
        a = rng.uniform(0, 2 * np.pi, 4 * count)
        p, n = surface(t, a)
        dt = (surface(t + eps, a)[0] - p) / eps
        da = (surface(t, a + eps)[0] - p) / eps
        area = np.linalg.norm(np.cross(dt, da), axis=1)
        keep = rng.uniform(0, area.max() * 1.05, t.size) < area
        pts.append(p[keep]), nrm.append(n[keep]), par.append(t[keep])
    p, n, t = (np.concatenate(x)[:count] for x in (pts, nrm, par))
    hue = t / (2 * np.pi)
    rgb = 0.5 + 0.45 * np.cos(2 * np.pi * (hue[:, None] + np.array([0.0, 1 / 3, 2 / 3])))
    return p, n, (rgb * 255).round().astype(np.uint8)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 60_000
    p, n, c = sample(count)
    out = Path(__file__).with_name("trefoil.ply")
    write_points(out, p.astype(np.float32), n.astype(np.float32), c)
    print(f"{out}: {count} points")


if __name__ == "__main__":
    main()
