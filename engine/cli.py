"""``python -m engine reconstruct IN.ply OUT.ply [options]``: the engine without Blender.

Exit codes: 0 success, 2 bad usage or bad input, 3 engine failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .errors import EngineError, InputError

EXIT_OK, EXIT_USAGE, EXIT_FAILURE = 0, 2, 3


def _detail(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number in [0, 1], got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine", description="Neural-kernel style surface reconstruction.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reconstruct", help="point cloud (PLY with normals) -> mesh (PLY)")
    r.add_argument("input", help="input point cloud (.ply) with normals nx, ny, nz")
    r.add_argument("output", help="output mesh (.ply)")
    r.add_argument("--detail", type=_detail, default="auto", help="'auto' (default) or 0 (smooth) .. 1 (finest)")
    r.add_argument("--voxel-size", type=float, default=None,
                   help="finest voxel size in input units (overrides --detail)")
    r.add_argument("--mise-iter", type=int, default=1, help="refinement rounds below the finest voxel (default 1)")
    r.add_argument("--no-trim", action="store_true", help="keep surface far from the points (closes holes)")
    r.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    r.add_argument("--solver-tol", type=float, default=1e-5, help="relative residual of the solver (default 1e-5)")
    r.add_argument("--solver-max-iter", type=int, default=2000, help="solver iterations per level (default 2000)")
    r.add_argument("--json", action="store_true", help="print the run's statistics as one JSON line at the end")
    sub.add_parser("serve", help="persistent engine on stdin/stdout, framed protocol (engine/protocol.py)")
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
        order = ["clean", "resolution", "hierarchy", "system", "solve", "mesh", "trim", "colors"]
        done = order.index(stage) if stage in order else 0
        self.bar.n = int(1000 * (done + fraction) / len(order))
        self.bar.set_description_str(text or stage, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "serve":
        from .server import main as serve

        return serve()
    from .pipeline import reconstruct
    from .ply import read_points, write_mesh

    bar = _Bar(sys.stderr.isatty())
    try:
        t0 = time.perf_counter()
        cloud = read_points(args.input)
        mesh = reconstruct(cloud.points, cloud.normals, cloud.colors, detail_level=args.detail,
                           voxel_size=args.voxel_size, mise_iter=args.mise_iter, trim=not args.no_trim,
                           solver_tol=args.solver_tol, solver_max_iter=args.solver_max_iter,
                           device=args.device, progress=bar)
        write_mesh(args.output, mesh)
    except InputError as exc:
        bar.close()
        print(f"error: {exc.message}\nhint: {exc.hint}", file=sys.stderr)
        return EXIT_USAGE
    except EngineError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    bar.close()
    s = mesh.stats
    print(f"{args.output}: {s['vertices']} vertices, {s['faces']} faces from {s['points_used']} points, "
          f"voxel {s['voxel_size']:.4g}, {s['unknowns']} unknowns, {time.perf_counter() - t0:.2f} s on {s['device']}")
    if args.json:
        print(json.dumps({**s, "total_seconds": time.perf_counter() - t0}))
    return EXIT_OK
