"""The engine's robust defaults (outlier pre-filter, fragment removal) against the same engine without them.

Each case is a scan simulator scan (bench/scanner.py) of a procedural shape,
scored against the true mesh: Chamfer-L1 (1e-3 of the diagonal, sampled: 100k
points each way), normal consistency (mean |cos| between area samples and their
nearest sample on the other surface, both ways), pieces, faces and seconds.
"before" is the engine with its pre-filter replaced by one that keeps every
point and ``keep_fragments=True``: what it did before the robust defaults.

    .venv/bin/python bench/robust.py [--cases torus:scanner+outliers ... sphere:clean sphere:noisy] [--points 100k]

Numpy, scipy and the engine only (runs in .venv).  Results: bench/README.md, "Robust defaults".
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np
from geom import count_components, sample_surface
from outliers import MESHES, SEEDS, Mesh, chamfer
from scanner import PRESETS, ScanParams, scan
from scipy.spatial import cKDTree

import engine.pipeline
from engine import reconstruct

# "noisy": the clean preset with the scanner preset's depth noise, no outliers or flying pixels.
CASE_PARAMS: dict[str, ScanParams] = {**PRESETS, "noisy": dataclasses.replace(PRESETS["clean"], depth_noise=0.002)}
DEFAULT_CASES = ["torus:scanner+outliers", "dumbbell:scanner+outliers", "sphere:scanner+outliers",
                 "sphere:clean", "sphere:noisy"]


def normal_consistency(out: Mesh, truth: Mesh, n: int = 100_000, seed: int = 0) -> float:
    """Mean |cos| between each area sample's normal and its nearest sample's on the other surface, both ways."""
    rng = np.random.default_rng(seed)
    (a, na, _), (b, nb, _) = sample_surface(*out, n, rng), sample_surface(*truth, n, rng)
    ab = np.abs((na * nb[cKDTree(b).query(a)[1]]).sum(axis=1)).mean()
    ba = np.abs((nb * na[cKDTree(a).query(b)[1]]).sum(axis=1)).mean()
    return float(0.5 * (ab + ba))


def run(case: str, points: int) -> None:
    shape, preset = case.split(":")
    truth = MESHES[shape]()
    s = scan(truth, dataclasses.replace(CASE_PARAMS[preset], points=points), SEEDS[shape])
    keep_all = engine.pipeline.drop_outliers
    for label in ("before", "after"):
        if label == "before":
            engine.pipeline.drop_outliers = lambda cloud: (cloud, 0)  # type: ignore[assignment]
        t = time.perf_counter()
        try:
            m = reconstruct(s.points, s.normals, device="cpu", keep_fragments=label == "before")
        finally:
            engine.pipeline.drop_outliers = keep_all
        seconds = time.perf_counter() - t
        mesh = (m.vertices64, m.faces.astype(np.int64))
        print(f"| {shape} | {preset} | {label} | {m.stats['outliers_removed']:,} | {chamfer(mesh, truth):.2f} | "
              f"{normal_consistency(mesh, truth):.4f} | {count_components(mesh[1], len(mesh[0]))} | "
              f"{len(mesh[1]):,} | {seconds:.1f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=DEFAULT_CASES)
    p.add_argument("--points", type=lambda t: int(float(t.lower().replace("k", "e3").replace("m", "e6"))),
                   default=100_000)
    a = p.parse_args(argv)
    print("| shape | scan | engine | outliers removed | Chamfer (1e-3) | normal consistency | pieces | faces "
          "| seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in a.cases:
        run(case, a.points)
    return 0


if __name__ == "__main__":
    sys.exit(main())
