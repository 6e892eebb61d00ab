"""``blender --background --command nksr IN OUT [options]``: batch reconstruction without the UI.

The handler is a plain ``fn(argv) -> int`` (the bpy module does not dispatch
``--command``, so tests and scripts call it directly).  It imports IN with
Blender's own importer, runs ``nksr.reconstruct`` (blocking in background mode)
and writes OUT with Blender's exporter for its extension, or saves a .blend.
Exit codes: 0 success, 2 bad arguments, input file or output path (checked
before the reconstruction: not the input, folder writable), 3 reconstruction
failed.  OUT is written as the engine's CLI writes (``engine/files.py``): to a
hidden temporary file beside it, renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bpy

from . import engine_link, settings

COMMAND = "nksr"
EXIT_OK, EXIT_USAGE, EXIT_FAILURE = 0, 2, 3
IMPORTERS: dict[str, Callable[[str], Any]] = {
    ".ply": lambda path: bpy.ops.wm.ply_import(filepath=path),
    ".obj": lambda path: bpy.ops.wm.obj_import(filepath=path),
}
EXPORTERS: dict[str, Callable[[str], Any]] = {
    ".ply": lambda path: bpy.ops.wm.ply_export(filepath=path, export_selected_objects=True, export_colors="LINEAR",
                                               export_normals=True, apply_modifiers=False),
    ".obj": lambda path: bpy.ops.wm.obj_export(filepath=path, export_selected_objects=True, export_colors=True,
                                               apply_modifiers=False, export_materials=False),
    ".stl": lambda path: bpy.ops.wm.stl_export(filepath=path, export_selected_objects=True),
    ".blend": lambda path: bpy.ops.wm.save_as_mainfile(filepath=path, copy=True),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would call sys.exit inside Blender
        raise ValueError(f"{self.format_usage().strip()}\nnksr: error: {message}")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="blender --background --command nksr",
                description="Reconstruct a surface from a point cloud file with NKSR and write the mesh.")
    p.add_argument("input", help=f"point cloud ({', '.join(IMPORTERS)}), with or without normals and colours")
    p.add_argument("output", help=f"mesh file ({', '.join(EXPORTERS)})")
    p.add_argument("--detail", default="auto", help="'auto' (default) or 0 (smooth) .. 1 (finest)")
    p.add_argument("--voxel-size", type=float, default=0.0, help="finest voxel size in scene units (0: from detail)")
    p.add_argument("--mise-iter", type=int, default=1, help="refinement rounds below the finest voxel")
    p.add_argument("--no-trim", action="store_true", help="keep surface far from the points")
    p.add_argument("--no-colors", action="store_true", help="do not carry colours onto the mesh")
    p.add_argument("--estimate-normals", action="store_true",
                   help="estimate normals even when the file has them (they are estimated when it has none)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--chunk-size", type=float, default=0.0,
                   help="solve in overlapping cubes of this edge, scene units (0: only when over the memory limit)")
    p.add_argument("--overlap-ratio", type=float, default=0.1, help="data around each chunk, share of its size")
    p.add_argument("--memory-limit", type=float, default=0.0, metavar="GB",
                   help="memory the engine may use (0: 3/4 of the free memory)")
    p.add_argument("--workers", type=int, default=1, help="chunks solved at once, each in its own process")
    return p


def _output_problem(source: Path, target: Path) -> str | None:
    """Why ``target`` cannot be written (it is the input, or its folder takes no files), or None; before any work."""
    files = engine_link.engine_module("files")
    try:
        files.check_not_input(source, target)
        target.parent.mkdir(parents=True, exist_ok=True)
        files.check_writable(target)
    except OSError as exc:  # from mkdir: a parent is a file, or a folder refuses new ones
        return f"cannot create the folder {target.parent} ({exc.strerror or exc}). Choose another output."
    except files.InputError as exc:
        return f"{exc.message} {exc.hint}"
    return None


def _export(target: Path) -> str | None:
    """Write the selection to ``target`` atomically; what went wrong, or None.

    Blender's mesh exporters report success when the disk fills up (measured
    with bpy 5.0.1: PLY, OBJ and STL return FINISHED with the file cut at the
    disk's size), so a disk left without free space after the export counts as
    a failed write: the previous file stays and the cut one is removed.
    """
    files = engine_link.engine_module("files")
    try:
        with files.atomic_output(target) as temp:
            temp.unlink()  # Blender creates the file itself (saving over a .blend would also leave a .blend1 backup)
            EXPORTERS[target.suffix.lower()](str(temp))
            if shutil.disk_usage(temp.parent).free == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(temp))
    except RuntimeError as exc:  # the exporter's own error report
        return f"Blender could not write {target} ({str(exc).strip()}); any previous file is unchanged."
    except files.InputError as exc:
        return f"{exc.message} {exc.hint}"
    return None


def run(argv: list[str]) -> int:
    """The command's handler: returns the exit code, prints what went wrong and how to fix it."""
    try:
        args = parser().parse_args(argv)
        detail = None if args.detail == "auto" else float(args.detail)
    except ValueError as exc:
        print(exc)
        return EXIT_USAGE
    source, target = Path(args.input), Path(args.output)
    if source.suffix.lower() not in IMPORTERS or target.suffix.lower() not in EXPORTERS:
        print(f"nksr: unsupported file type; input must be one of {', '.join(IMPORTERS)}, "
              f"output one of {', '.join(EXPORTERS)}.")
        return EXIT_USAGE
    if not source.is_file():
        print(f"nksr: input file not found: {source}")
        return EXIT_USAGE
    problem = _output_problem(source, target)
    if problem is not None:
        print(f"nksr: {problem}")
        return EXIT_USAGE
    before = set(bpy.data.objects)
    try:
        IMPORTERS[source.suffix.lower()](str(source))
    except RuntimeError as exc:
        print(f"nksr: Blender could not read {source}: {exc}")
        return EXIT_USAGE
    imported = [o for o in bpy.data.objects if o not in before]
    if not imported:
        print(f"nksr: {source} holds no objects.")
        return EXIT_USAGE
    view_layer = bpy.context.view_layer
    for obj in view_layer.objects:
        obj.select_set(obj in imported)
    view_layer.objects.active = imported[0]
    options: dict[str, Any] = {"voxel_size": args.voxel_size, "mise_iter": args.mise_iter, "trim": not args.no_trim,
                               "keep_colors": not args.no_colors, "device": args.device.upper(),
                               "estimate_normals": args.estimate_normals, "chunk_size": args.chunk_size,
                               "overlap_ratio": args.overlap_ratio, "memory_limit_gb": args.memory_limit,
                               "workers": args.workers}
    if detail is not None:
        options["detail_level"] = detail
    try:
        bpy.ops.nksr.reconstruct(**options)  # type: ignore[attr-defined]
    except RuntimeError as exc:
        print(f"nksr: reconstruction failed: {exc}")
        return EXIT_FAILURE
    problem = _export(target)
    if problem is not None:
        print(f"nksr: {problem}")
        return EXIT_USAGE
    print(f"nksr: wrote {target} ({settings.run_state(bpy.context).last_summary})")
    return EXIT_OK


_handle: Any = None


def register() -> None:
    global _handle
    _handle = bpy.utils.register_cli_command(COMMAND, run)


def unregister() -> None:
    global _handle
    if _handle is not None:
        bpy.utils.unregister_cli_command(_handle)
        _handle = None
