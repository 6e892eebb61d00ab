"""Large scenes: 10M points in bounded memory, chunked against whole, and Open3D Poisson as a peer.

    .venv/bin/python bench/large.py [--points 10M] [--compare-points 2M] [--memory-limit 16]
                                    [--peer-python .venv-bench/bin/python] [--out bench/_work/large.json]

The scene is the synthetic city of ``tests/shapes.py`` (200 m x 200 m of
terrain, buildings and thin poles, exact normals and colours).  Every run is
the engine's CLI in a fresh process; its peak RSS comes from the kernel
(``wait4``), so it counts everything the engine allocated, chunk workers
excepted (the default in-process executor has none).

1. ``--points`` (10M) with ``--memory-limit`` GB (16): the guard chooses the
   chunks; reported are the time, seconds per million points and peak RSS.
2. ``--compare-points`` (2M, where the whole job fits this machine): whole and
   chunked (under a limit the whole job exceeds), compared: Chamfer between
   the two meshes in voxels, faces, time and memory ratios.
3. With ``--peer-python`` (an interpreter with open3d, e.g. .venv-bench),
   Open3D screened Poisson at ``--peer-depth`` on the large input, same
   machine, same run: time and memory ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.meshcheck import surface_gaps  # noqa: E402
from tests.meshfiles import read_mesh, write_points  # noqa: E402
from tests.shapes import city  # noqa: E402

THREADS = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}


def parse_count(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def run(cmd: list[str], log: Path) -> tuple[str, int, float]:
    """A command in a fresh process: its stdout, its peak RSS in bytes (``wait4``), its wall time."""
    start = time.perf_counter()
    out_path = log.with_suffix(".out")
    with open(out_path, "w") as out, open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **THREADS, "PYTHONPATH": str(ROOT)},
                                stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return out_path.read_text(), usage.ru_maxrss * 1024, seconds


def ours(src: Path, dst: Path, *extra: str) -> dict[str, Any]:
    out, peak, wall = run([sys.executable, "-m", "engine", "reconstruct", str(src), str(dst), "--json",
                           "--device", "cpu", *extra], dst.with_suffix(".log"))
    stats = json.loads(out.strip().splitlines()[-1])
    row = {"wall_seconds": wall, "peak_bytes": peak, "engine_seconds": stats["total_seconds"],
           "faces": stats["faces"], "voxel_size": stats["voxel_size"], "chunks": stats.get("chunks", 0),
           "chunk_size": stats.get("chunk_size"), "executor": stats.get("executor"),
           "memory_estimate_bytes": stats["memory_estimate_bytes"], "stages": stats["stages"]}
    print(f"  {dst.name}: {row['engine_seconds']:.0f} s, peak {peak / 2**30:.2f} GiB, {row['faces']:,} faces, "
          f"{row['chunks']} chunks", flush=True)
    return row


def scene(n: int, work: Path) -> Path:
    path = work / f"city_{n}.ply"
    if not path.exists():
        p, nrm, c = city(n)
        write_points(path, p, nrm, c)
    return path


def compare(whole: Path, chunked: Path, voxel: float) -> dict[str, float]:
    """Each mesh's vertices to the other's surface (:func:`tests.meshcheck.surface_gaps`), in voxels: one of the
    two may be simplified (a chunked run under a tight limit skips it), which moves vertices along flat parts."""
    da, db = surface_gaps(read_mesh(whole), read_mesh(chunked))
    return {"chamfer_voxels": float((da.mean() + db.mean()) / 2 / voxel),
            "p99_voxels": float(np.percentile(np.concatenate([da, db]), 99) / voxel)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=parse_count, default=10_000_000)
    ap.add_argument("--compare-points", type=parse_count, default=2_000_000)
    ap.add_argument("--memory-limit", type=float, default=16.0, help="GB for the large run")
    ap.add_argument("--compare-limit", type=float, default=4.0, help="GB for the chunked comparison run")
    ap.add_argument("--peer-python", default=None, help="interpreter with open3d for the Poisson peer")
    ap.add_argument("--peer-depth", type=int, default=10)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "_work" / "large")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--skip-compare", action="store_true")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"points": a.points, "memory_limit_gb": a.memory_limit, "cpu_count": os.cpu_count(),
                              "loadavg_before": os.getloadavg()}

    if not a.skip_compare:
        print(f"whole against chunked, {a.compare_points:,} points", flush=True)
        src = scene(a.compare_points, a.work)
        w = ours(src, a.work / "whole.ply", "--memory-limit", "64", "--no-auto-chunk")
        c = ours(src, a.work / "chunked.ply", "--memory-limit", str(a.compare_limit))
        report["compare"] = {"points": a.compare_points, "whole": w, "chunked": c,
                             **compare(a.work / "whole.ply", a.work / "chunked.ply", w["voxel_size"]),
                             "time_ratio": c["engine_seconds"] / w["engine_seconds"],
                             "peak_ratio": c["peak_bytes"] / w["peak_bytes"],
                             "faces_ratio": c["faces"] / w["faces"]}

    print(f"large: {a.points:,} points, memory limit {a.memory_limit} GB", flush=True)
    src = scene(a.points, a.work)
    big = ours(src, a.work / "large.ply", "--memory-limit", str(a.memory_limit))
    big["seconds_per_million_points"] = big["engine_seconds"] / (a.points / 1e6)
    report["large"] = big

    if a.peer_python:
        npz = a.work / f"city_{a.points}.npz"
        if not npz.exists():
            p, nrm, _ = city(a.points)
            np.savez(npz, points=p.astype(np.float32), normals=nrm.astype(np.float32))
        out, peak, wall = run([a.peer_python, "bench/run_method.py", "open3d", str(npz), str(a.work / "poisson.ply"),
                               "--depth", str(a.peer_depth)], a.work / "poisson.log")
        peer = json.loads(out.strip().splitlines()[-1])
        report["open3d"] = {"depth": a.peer_depth, "seconds": peer.get("seconds"), "peak_bytes": peak, "wall": wall,
                            "faces": peer.get("faces")}
        report["large"]["time_ratio_open3d"] = big["engine_seconds"] / max(peer.get("seconds") or wall, 1e-9)
        report["large"]["peak_ratio_open3d"] = big["peak_bytes"] / peak

    print(json.dumps(report, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
