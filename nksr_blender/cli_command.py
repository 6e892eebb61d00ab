"""``blender --background --command nksr IN OUT [options]``: batch reconstruction without the UI.

The handler is a plain ``fn(argv) -> int`` (the bpy module does not dispatch
``--command``, so tests and scripts call it directly).  A PLY or OBJ input is
imported with Blender's own importer and reconstructed by ``nksr.reconstruct``;
every other format the engine reads (PCD, LAS/LAZ, E57, XYZ/PTS/TXT/CSV,
NPY/NPZ) goes to the engine directly through ``nksr.reconstruct_file``, which
reads the file in the engine's process (blocking in background mode).  OUT is
written with Blender's exporter for its extension, or saved as a .blend.
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


# The engine options this command takes (flags, help and ranges from the engine's option table).
FLAGS = ("detail_level", "voxel_size", "mise_iter", "max_faces", "trim", "keep_fragments", "watertight",
         "register_views", "prior", "estimate_normals", "keep_normals", "chunk_size", "overlap_ratio",
         "memory_limit_gb", "workers")


def _engine_inputs() -> tuple[str, ...]:
    """The formats the engine reads itself (``engine/suffixes.py``)."""
    return tuple(engine_link.engine_module("suffixes").CLOUD_INPUTS)


def _inputs() -> list[str]:
    """Every input this command takes: Blender's importers first, then the engine's other formats."""
    return [*IMPORTERS, *(s for s in _engine_inputs() if s not in IMPORTERS)]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would call sys.exit inside Blender
        raise ValueError(f"{self.format_usage().strip()}\nnksr: error: {message}")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="blender --background --command nksr",
                description="Reconstruct a surface from a point cloud file with NKSR and write the mesh.")
    p.add_argument("input", help=f"point cloud ({', '.join(_inputs())}), with or without normals and colours")
    p.add_argument("output", help=f"mesh file ({', '.join(EXPORTERS)})")
    engine_link.options_api().add_flags(p, FLAGS)
    p.add_argument("--no-colors", action="store_true", help="do not carry colours onto the mesh")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
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


def _import(source: Path) -> str | None:
    """``source`` through Blender's importer, the imported objects selected; what went wrong, or None."""
    before = set(bpy.data.objects)
    try:
        IMPORTERS[source.suffix.lower()](str(source))
    except RuntimeError as exc:
        return f"Blender could not read {source}: {exc}"
    imported = [o for o in bpy.data.objects if o not in before]
    if not imported:
        return f"{source} holds no objects."
    view_layer = bpy.context.view_layer
    for obj in view_layer.objects:
        obj.select_set(obj in imported)
    view_layer.objects.active = imported[0]
    return None


def run(argv: list[str]) -> int:
    """The command's handler: returns the exit code, prints what went wrong and how to fix it."""
    try:
        args = parser().parse_args(argv)
        opts = engine_link.options_api().from_flags(args, FLAGS)
    except ValueError as exc:
        print(exc)
        return EXIT_USAGE
    except engine_link.options_api().OptionError as exc:
        print(f"nksr: {exc.message}\n{exc.hint}")
        return EXIT_USAGE
    source, target = Path(args.input), Path(args.output)
    if source.suffix.lower() not in _inputs() or target.suffix.lower() not in EXPORTERS:
        print(f"nksr: unsupported file type; input must be one of {', '.join(_inputs())}, "
              f"output one of {', '.join(EXPORTERS)}.")
        return EXIT_USAGE
    if not source.is_file():
        print(f"nksr: input file not found: {source}")
        return EXIT_USAGE
    problem = _output_problem(source, target)
    if problem is not None:
        print(f"nksr: {problem}")
        return EXIT_USAGE
    by_engine = source.suffix.lower() not in IMPORTERS
    if not by_engine and (problem := _import(source)) is not None:
        print(f"nksr: {problem}")
        return EXIT_USAGE
    # The operator's properties cannot be empty: 0 stands for unset (and 1 worker for the engine itself).
    options: dict[str, Any] = {"voxel_size": opts.voxel_size or 0.0,
                               "max_faces": opts.max_faces or 0, "trim": opts.trim,
                               "keep_fragments": opts.keep_fragments,
                               "watertight": opts.watertight, "register_views": opts.register_views,
                               "prior": opts.prior.upper(),
                               "keep_colors": not args.no_colors, "device": args.device.upper(),
                               "estimate_normals": opts.estimate_normals, "keep_normals": opts.keep_normals,
                               "chunk_size": opts.chunk_size or 0.0,
                               "overlap_ratio": opts.overlap_ratio, "memory_limit_gb": opts.memory_limit_gb or 0.0,
                               "workers": opts.workers or 1}
    if opts.detail_level != "auto":
        options["detail_level"] = opts.detail_level
    if opts.mise_iter != "auto":
        options["mise_iter"] = opts.mise_iter
    try:
        if by_engine:  # the engine reads the file: its points never load into Blender
            bpy.ops.nksr.reconstruct_file(filepath=str(source.resolve()), **options)  # type: ignore[attr-defined]
        else:
            bpy.ops.nksr.reconstruct(**options)  # type: ignore[attr-defined]
    except RuntimeError as exc:
        print(f"nksr: reconstruction failed: {exc}")
        return EXIT_FAILURE
    problem = _export(target)
    if problem is not None:
        print(f"nksr: {problem}")
        return EXIT_USAGE
    state = settings.run_state(bpy.context)
    print(f"nksr: wrote {target} ({state.last_summary})")
    for line in state.last_warnings.splitlines():
        print(f"nksr: warning: {line}")
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
