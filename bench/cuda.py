"""The engine on a CUDA device: end-to-end seconds, stages and GPU memory per input, then scored here (issue 12).

Two halves, because the GPU machine has torch but no Open3D and this one has Open3D but no GPU:

    # on the GPU machine (the engine's packages; bunny inputs made there from the cached ground truth)
    python bench/cuda.py run --work bench/_work --inputs bunny/1M/clean,bunny/1M/n0.5,FILE.npz --out DIR
    # here, in the benchenv: Chamfer, normal consistency and pieces of DIR's meshes against the ground truth
    .venv-bench/bin/python bench/cuda.py score DIR/cuda.json [--cpu bench/_work/bunny26_1m.json ...]

``run`` reconstructs every input with default settings in one process, as the Blender service does (the engine
stays loaded between requests): a first untimed run on the first input pays CUDA's start, cuBLAS/cuSPARSE
handles and numba's compilation of the CPU-side kernels (meshing's simplification and pieces run on the CPU
whatever the device), then each input ``--repeat`` times.  Seconds are the whole ``reconstruct`` call (numpy in,
numpy out, so the device is synchronised); the stages are the engine's own ``stats["seconds"]``.  GPU memory is
torch's peak allocation over the call.  Each input's fastest run's mesh is written as ``DIR/mesh_KEY.npz``.
``--cli`` adds one fresh ``python -m engine reconstruct`` per listed input (import, CUDA start and file I/O
included).  ``score`` prints a Markdown table with the CPU figures of a bench JSON (bench/quality.py) beside.
``stages INPUT --out FILE.json`` times, on the GPU machine, what a CUDA run does on the CPU each way (the outlier
test, trimming's nearness test: CPU against GPU, same verdicts) and the collapse of the run's mesh at 1-16 threads.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def mesh_name(key: str) -> str:
    """A file-name-safe form of an input key ('bunny/1M/clean' -> 'bunny_1M_clean')."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)


def load_input(spec: str, work: Path) -> tuple[str, Path]:
    """'SHAPE/SIZE/CASE' (made or reused in ``work`` like bench/quality.py) or an .npz file: (key, path)."""
    if spec.endswith(".npz"):
        return Path(spec).stem, Path(spec)
    import shapes

    shape, size, case = spec.split("/", 2)
    return spec, shapes.make_input(shape, shapes.parse_size(size), shapes.parse_case(case), work)


def one_run(data: Any, device: str) -> tuple[float, dict[str, Any], Any]:
    """One reconstruction on ``device``: (seconds, stats, mesh), with torch's peak GPU memory in the stats."""
    import torch

    from engine import reconstruct

    normals = data["normals"] if "normals" in data.files else None
    sensor = data["sensors"].astype(np.float64) if "sensors" in data.files else None  # simulated scans
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    mesh = reconstruct(data["points"], normals, device=device, sensor=sensor)
    seconds = time.perf_counter() - start
    stats = dict(mesh.stats)
    if torch.cuda.is_available():
        stats["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return seconds, stats, mesh


def wait_for_kernels() -> None:
    """Until the engine's background loading of its CPU kernels ends: a machine that starts bare compiles all of
    them there (numba's cache is empty), beside the first runs.  In session 27's first run on the H200 that
    overlapped the first input's timed runs (the 100k clean bunny's resolution stage 1.4-2.0 s against 0.12 s for
    the noisy one later in the same run)."""
    import engine.warm as warm

    while warm.kernels_loading():
        time.sleep(0.05)


def cli_run(path: Path, out: Path, device: str) -> dict[str, Any]:
    """One fresh ``python -m engine reconstruct`` of ``path``: its wall time and stats."""
    start = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "engine", "reconstruct", str(path), str(out), "--json",
                        "--device", device], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if p.returncode != 0:
        return {"ok": False, "wall": wall, "error": p.stderr[-3000:]}
    stats = json.loads(p.stdout.strip().splitlines()[-1])
    return {"ok": True, "wall": wall, "stages": sum(stats["seconds"].values()), "faces": stats["faces"]}


def machine() -> dict[str, Any]:
    """The device and software the figures were taken on."""
    import torch

    info: dict[str, Any] = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                            "torch": torch.__version__, "threads": torch.get_num_threads(),
                            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if torch.cuda.is_available():
        info |= {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
                 "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30}
    return info


def run(a: argparse.Namespace) -> int:
    """The GPU half: time every input, write the meshes and ``cuda.json``."""
    sys.path.insert(0, str(ROOT))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = [load_input(s, Path(a.work)) for s in a.inputs.split(",") if s]
    result: dict[str, Any] = {"meta": machine() | {"argv": sys.argv, "device": a.device}, "runs": {}}
    start = time.perf_counter()

    def save() -> None:
        tmp = out / "cuda.json.tmp"
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(out / "cuda.json")

    for i, (key, path) in enumerate(inputs):
        if time.perf_counter() - start > a.deadline:
            result["runs"][key] = {"ok": False, "error": "skipped: past the deadline"}
            continue
        data = np.load(path)
        rec: dict[str, Any] = {"file": str(path), "points": int(data["points"].shape[0])}
        try:
            if i == 0:  # CUDA's start, library handles, numba's compilation: not the reconstruction's
                rec["first_seconds"] = one_run(data, a.device)[0]
                wait_for_kernels()
            runs = [one_run(data, a.device) for _ in range(a.repeat)]
            best = min(runs, key=lambda r: r[0])
            rec |= {"ok": True, "seconds": [r[0] for r in runs], "stats": best[1]}
            np.savez_compressed(out / f"mesh_{mesh_name(key)}.npz", vertices=best[2].vertices.astype(np.float32),
                                faces=best[2].faces.astype(np.int32))
            print(f"{key}: {min(r[0] for r in runs):.3f} s (runs {', '.join(f'{r[0]:.3f}' for r in runs)}), "
                  f"{best[1]['faces']} faces, GPU peak {best[1].get('gpu_peak_mib', 0):.0f} MiB, stages "
                  + " ".join(f"{k} {v:.3f}" for k, v in best[1]["seconds"].items()), flush=True)
        except Exception as e:  # noqa: BLE001 - one input's failure is a figure too; the others still run
            import traceback

            rec |= {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            print(f"{key}: FAILED {rec['error']}\n{rec['traceback']}", flush=True)
        result["runs"][key] = rec
        save()
    for spec in (s for s in a.cli.split(",") if s):
        key, path = load_input(spec, Path(a.work))
        rec = cli_run(path, out / f"cli_{mesh_name(key)}.ply", a.device)
        (out / f"cli_{mesh_name(key)}.ply").unlink(missing_ok=True)
        result["runs"].setdefault(key, {})["cli"] = rec
        print(f"{key} (fresh CLI process): {rec}", flush=True)
        save()
    save()
    return 0 if all(r.get("ok", True) for r in result["runs"].values()) else 1


def stages(a: argparse.Namespace) -> int:
    """The CPU-side stages of a CUDA run, each way, and the collapse's scaling with threads, on one input."""
    sys.path.insert(0, str(ROOT))
    import torch

    import engine.pipeline as pipeline
    import engine.surface.collapse as collapse
    from engine.solver.knn import PointTree
    from engine.solver.outliers import outlier_mask, outlier_mask_torch
    from engine.surface.trimming import points_within

    def timed(fn: Any, reps: int = 2) -> tuple[list[float], Any]:
        times, result = [], None
        for _ in range(reps):
            start = time.perf_counter()
            result = fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(round(time.perf_counter() - start, 3))
        return times, result

    seen: dict[str, Any] = {}  # the run's inputs to the collapse and the trimming, taken on the way
    simplify, trim_far = pipeline.simplify, pipeline.trim_far
    pipeline.simplify = lambda v, f, voxel, *rest: (seen.setdefault("simplify", (v.copy(), f.copy(), voxel)),
                                                    simplify(v, f, voxel, *rest))[1]
    pipeline.trim_far = lambda v, f, within, d: (seen.setdefault("trim", (v.copy(), d)), trim_far(v, f, within, d))[1]
    _, path = load_input(a.input, Path(a.work))
    data = np.load(path)
    mesh = pipeline.reconstruct(data["points"], data["normals"] if "normals" in data.files else None, device=a.device)
    wait_for_kernels()
    out: dict[str, Any] = {"meta": machine(), "run_seconds": mesh.stats["seconds"]}
    points = np.ascontiguousarray(data["points"], np.float32)
    device = torch.device(a.device)
    out["outliers_cpu"], cpu_mask = timed(lambda: outlier_mask(points))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    on_device = torch.from_numpy(points).to(device)
    out["outliers_device"], dev_mask = timed(lambda: outlier_mask_torch(on_device).cpu().numpy())
    if torch.cuda.is_available():
        out["outliers_device_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    out["outliers_cpu_device_differ"] = [int(cpu_mask.sum()), int(dev_mask.sum()), int((cpu_mask != dev_mask).sum())]
    vertices, radius = seen["trim"]
    out["within_cpu"], cpu_near = timed(lambda: PointTree(points).within(vertices, radius))
    out["within_device"], dev_near = timed(lambda: points_within(points, device)(vertices, radius))
    out["within_differ"] = int((cpu_near != dev_near).sum())
    for threads, pieces in ((16, 8), (16, 16), (8, 8), (4, 4), (1, 1)):
        if threads <= (os.cpu_count() or 1):
            torch.set_num_threads(threads)
            collapse.MAX_PIECES = pieces
            times, (_, faces, _) = timed(lambda: simplify(*seen["simplify"], None))
            out[f"collapse_threads{threads}_slabs{pieces}"] = [*times, int(faces.shape[0])]
    print(json.dumps(out, indent=1))
    Path(a.out).write_text(json.dumps(out, indent=1))
    return 0


def cpu_figures(paths: list[str]) -> dict[str, dict[str, Any]]:
    """Ours' and Open3D depth 8's records per input key from bench/quality.py JSON files (last file wins)."""
    found: dict[str, dict[str, Any]] = {}
    for p in paths:
        for r in json.loads(Path(p).read_text())["runs"]:
            if r.get("ok"):
                found.setdefault(r["input"], {})[r["label"]] = r
    return found


def score(a: argparse.Namespace) -> int:
    """The scoring half (benchenv): each CUDA mesh against its ground truth, CPU figures beside."""
    from plyio import write_ply
    from quality import GroundTruth

    result = json.loads(Path(a.result).read_text())
    folder = Path(a.result).parent
    cpu = cpu_figures(a.cpu)
    truths: dict[str, GroundTruth] = {}
    print(f"GPU: {result['meta'].get('gpu', 'none')}, torch {result['meta']['torch']}, "
          f"CUDA {result['meta'].get('cuda')}, {result['meta']['cpus']} CPUs")
    print("| input | CUDA s | GPU peak MiB | faces | Chamfer-L1 x1e-3 | NC | pieces | fresh CLI s "
          "| CPU ours s | CPU Chamfer x1e-3 | Open3D d8 s (CPU) |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for key, rec in result["runs"].items():
        if not rec.get("ok"):
            print(f"| {key} | failed: {rec.get('error', '?')[:80]} |")
            continue
        mesh = folder / f"mesh_{mesh_name(key)}.npz"
        metrics: dict[str, Any] = {}
        shape = key.split("/")[0] if "/" in key else key.split("_")[1]
        if mesh.exists() and shape in ("bunny", "torus", "sphere"):
            truths.setdefault(shape, GroundTruth(shape, Path(a.work), 100_000))
            with np.load(mesh) as m:
                ply = folder / f"mesh_{mesh_name(key)}.ply"
                write_ply(ply, m["vertices"], m["faces"])
            metrics = truths[shape].evaluate(ply)
            rec["metrics"] = metrics
        ours_cpu = cpu.get(key, {}).get("ours", {})
        o3d = cpu.get(key, {}).get("open3d-d8", {})
        cli = rec.get("cli", {})

        def fig(value: Any, fmt: str, scale: float = 1.0) -> str:
            return "-" if value is None else format(value if scale == 1.0 else value * scale, fmt)

        print(f"| {key} | {min(rec['seconds']):.2f} | {rec['stats'].get('gpu_peak_mib', 0):.0f} "
              f"| {rec['stats']['faces']:,} | {fig(metrics.get('chamfer_l1'), '.4f', 1e3)} "
              f"| {fig(metrics.get('nc'), '.4f')} | {fig(metrics.get('pieces'), 'd')} | {fig(cli.get('wall'), '.2f')} "
              f"| {fig(ours_cpu.get('worker', {}).get('seconds'), '.2f')} "
              f"| {fig(ours_cpu.get('metrics', {}).get('chamfer_l1'), '.4f', 1e3)} "
              f"| {fig(o3d.get('worker', {}).get('seconds'), '.2f')} |")
    Path(a.result).with_suffix(".scored.json").write_text(json.dumps(result, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("run", help="time the engine on the GPU machine")
    r.add_argument("--inputs", required=True, help="comma-separated SHAPE/SIZE/CASE keys or .npz files")
    r.add_argument("--work", default=str(HERE / "_work"), help="bench/quality.py's work folder (ground truths)")
    r.add_argument("--out", required=True)
    r.add_argument("--device", default="cuda")
    r.add_argument("--repeat", type=int, default=3)
    r.add_argument("--deadline", type=float, default=1e9, help="seconds after which no further input starts")
    r.add_argument("--cli", default="", help="inputs also run once as a fresh CLI process")
    t = sub.add_parser("stages", help="the CPU-side stages each way and the collapse's threads, on the GPU machine")
    t.add_argument("input", help="a SHAPE/SIZE/CASE key or an .npz file")
    t.add_argument("--work", default=str(HERE / "_work"))
    t.add_argument("--device", default="cuda")
    t.add_argument("--out", required=True, help="the JSON file to write")
    s = sub.add_parser("score", help="score a run's meshes here (benchenv)")
    s.add_argument("result", help="the run's cuda.json")
    s.add_argument("--work", default=str(HERE / "_work"))
    s.add_argument("--cpu", nargs="*", default=[], help="bench/quality.py JSON files with the CPU figures")
    a = ap.parse_args()
    return {"run": run, "stages": stages, "score": score}[a.mode](a)


if __name__ == "__main__":
    raise SystemExit(main())
