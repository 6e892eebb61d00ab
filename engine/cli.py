"""``python -m engine reconstruct IN OUT [options]``: the engine without Blender.

IN is any cloud :mod:`engine.formats` reads (.ply .pcd .xyz .pts .txt .csv .npy
.npz .las .laz .e57; 3D Gaussian Splatting PLY too), OUT any mesh it writes (.ply .obj .glb).  Exit codes: 0
success, 2 bad usage or bad input (unreadable, unsupported or malformed
files included; never a traceback), 3 engine failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from typing import Any

from . import formats, options
from .errors import EngineError, InputError
from .formats import splat
from .mesh import Mesh
from .scanfile import read_input

EXIT_OK, EXIT_USAGE, EXIT_FAILURE = 0, 2, 3


def _opacity(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1; got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine", description="Neural-kernel style surface reconstruction.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reconstruct", help="point cloud -> triangle mesh")
    r.add_argument("input", help=f"input point cloud, with or without normals: {' '.join(formats.READERS)}")
    r.add_argument("output", help=f"output mesh: {' '.join(formats.WRITERS)}")
    options.add_flags(r)
    r.add_argument("--sensor", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="the scanner's position: estimated normals face it (default: the sensor positions the file "
                        "records, if any, else outward/up by propagation)")
    r.add_argument("--splat-min-opacity", type=_opacity, default=splat.MIN_OPACITY, metavar="A",
                   help="3D Gaussian Splatting PLY input: splats below this opacity (0 to 1) are left out as "
                        f"floaters (default {splat.MIN_OPACITY:g})")
    r.add_argument("--json", action="store_true", help="print the run's statistics as one JSON line at the end")
    sub.add_parser("serve", help="persistent engine on stdin/stdout, framed protocol (engine/service/protocol.py)")
    return p


class _Bar:
    """A tqdm bar over the whole run, shown only on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, unit="‰", bar_format="{desc:<34}{bar}| {elapsed}", file=sys.stderr)
        self.stage = ""

    def __call__(self, stage: str, fraction: float, text: str) -> None:
        if self.bar is None:
            return
        order = ["clean", "resolution", "normals", "register", "hierarchy", "chunks", "system", "solve", "mesh", "trim",
                 "simplify", "colors", "weld", "vertex_normals"]
        done = order.index(stage) if stage in order else 0
        self.bar.n = int(1000 * (done + fraction) / len(order))
        self.bar.set_description_str(text or stage, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _summary(args: argparse.Namespace, mesh: Mesh, stages: dict[str, float], total: float,
             read: dict[str, Any]) -> dict[str, Any]:
    """The --json object: the engine's statistics plus the run's paths, stages, reading and headline figures."""
    s = mesh.stats
    iterations, residuals = s.get("solver_iterations", []), s.get("solver_residual", [])
    return {**s, **read, "input": str(args.input), "output": str(args.output), "total_seconds": total,
            "stages": stages, "iterations": int(sum(iterations)),
            "residual": float(residuals[-1]) if residuals else None}


def _fail(code: int, message: str, hint: str = "") -> int:
    print(f"error: {message}" + (f"\nhint: {hint}" if hint else ""), file=sys.stderr)
    return code


def run_reconstruct(args: argparse.Namespace) -> int:
    """The ``reconstruct`` command: read, reconstruct, write, report; returns the exit code."""
    t0 = time.perf_counter()
    bar = _Bar(sys.stderr.isatty())
    stages: dict[str, float] = {}
    try:
        formats.check_output(args.output, args.input)
        opts = options.from_flags(args)  # every range checked before the input is read or torch loads
        got = read_input(args.input, opts, args.sensor, splat_min_opacity=args.splat_min_opacity)
        read: dict[str, Any] = dict(got.info)
        stages["read"] = time.perf_counter() - t0 - got.seconds.get("orient_axes", 0.0)
        t = time.perf_counter()
        from .pipeline import reconstruct  # torch loads only once the input is known to be good

        stages["startup"] = time.perf_counter() - t
        stages.update({k: v for k, v in got.seconds.items() if k != "read"})
        mesh = reconstruct(got.points, got.normals, got.colors, opts, sensor=got.sensor, progress=bar)
        stages.update(mesh.stats.get("seconds", {}))
        t = time.perf_counter()
        formats.write_mesh(args.output, mesh)
        stages["write"] = time.perf_counter() - t
    except InputError as exc:
        bar.close()
        return _fail(EXIT_USAGE, exc.message, exc.hint)
    except EngineError as exc:
        bar.close()
        return _fail(EXIT_FAILURE, exc.message, exc.hint)
    except Exception:  # a bug or a device failure: keep the traceback for the report, exit as an engine failure
        bar.close()
        traceback.print_exc()
        return _fail(EXIT_FAILURE, "the engine failed unexpectedly (traceback above).",
                     "Try --device cpu; if it persists, report it with the traceback.")
    bar.close()
    total = time.perf_counter() - t0
    s = mesh.stats
    print(f"{args.output}: {s['vertices']} vertices, {s['faces']} faces from {s['points_used']} points, "
          f"voxel {s['voxel_size']:.4g}, {s['unknowns']} unknowns, {total:.2f} s on {s['device']}"
          + (f", {s['chunks']} chunks of {s['chunk_size']:.4g} on {s['executor']}" if "chunks" in s else ""))
    if "sensor" in (s.get("normals_orientation"), read.get("axes_orientation")):
        print("normals oriented towards the sensor " + ("given" if read["sensor_source"] == "option" else
                                                        "positions the file records"))
    for text in s.get("warnings", []):
        print(f"warning: {text}", file=sys.stderr)
    if any(got.info["read_dropped"].values()):
        print("left out on reading: " + ", ".join(f"{n} {k.replace('_', ' ')}"
                                                 for k, n in got.info["read_dropped"].items()))
    if args.json:
        print(json.dumps(_summary(args, mesh, stages, total, read)))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "serve":
        from .service.server import main as serve

        return serve()
    return run_reconstruct(args)
