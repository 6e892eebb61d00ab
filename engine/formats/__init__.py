"""Which files the engine reads and writes, chosen by extension (case-insensitive).

``read_cloud(path) -> PointCloud`` and ``write_mesh(path, mesh)`` are the one
entry to every format; each format lives in its own module.  Packages that
only one format needs (pypcd4, laspy/lazrs, pye57, pygltflib) are imported when that
format is used; ``check_output`` asks for the writer's package before a run,
so a missing one is reported before minutes of solving, not after, as is an
unwritable folder or an output that is the input.  Every writer writes through
:func:`engine.files.atomic_output`: a temporary file renamed into place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import files
from ..cloud import PointCloud
from ..errors import InputError
from ..mesh import Mesh
from ..optional import import_optional
from . import columns, e57, gltf, las, obj, pcd, ply


@dataclass(frozen=True)
class Reader:
    name: str
    read: Callable[..., PointCloud]  # read(path, **options) for the options it names
    options: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Writer:
    name: str
    write: Callable[[Path, Mesh], None]
    package: str | None = None  # optional package the writer imports


_TEXT = Reader("XYZ/PTS/TXT/CSV text", columns.read_text)
READERS: dict[str, Reader] = {
    ".ply": Reader("PLY", ply.read_points, frozenset({"splat_min_opacity"})),  # 3DGS splats too
    ".pcd": Reader("PCD", pcd.read_pcd),
    ".xyz": _TEXT, ".pts": _TEXT, ".txt": _TEXT, ".csv": _TEXT,
    ".npy": Reader("NPY", columns.read_npy),
    ".npz": Reader("NPZ", columns.read_npz),
    ".las": Reader("LAS", las.read_las),
    ".laz": Reader("LAZ", las.read_las),
    ".e57": Reader("E57", e57.read_e57),
}
WRITERS: dict[str, Writer] = {
    ".ply": Writer("PLY", ply.write_mesh),
    ".obj": Writer("OBJ", obj.write_obj),
    ".glb": Writer("GLB", gltf.write_glb, "pygltflib"),
}


def _reader(path: Path) -> Reader:
    found = READERS.get(path.suffix.lower())
    if found is None:
        raise InputError(f"{path}: cannot read '{path.suffix or 'no extension'}' point clouds.",
                         f"Supported inputs: {', '.join(READERS)}.")
    return found


def _writer(path: Path) -> Writer:
    found = WRITERS.get(path.suffix.lower())
    if found is None:
        raise InputError(f"{path}: cannot write '{path.suffix or 'no extension'}' meshes.",
                         f"Supported outputs: {', '.join(WRITERS)}.")
    return found


def read_cloud(path: str | Path, **options: object) -> PointCloud:
    """The cloud in ``path``, by extension; any unreadable, empty or malformed file is an :class:`InputError`.

    ``options`` go to the readers that take them (``splat_min_opacity``: PLY) and are ignored by the rest.
    """
    path = Path(path)
    reader = _reader(path)
    if not path.exists():
        raise InputError(f"{path}: no such file.", "Check the input path.")
    if not path.is_file():
        raise InputError(f"{path}: not a file.", "Give the path of a point-cloud file.")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty.", f"Export the cloud as {reader.name} again.")
    try:
        cloud = reader.read(path, **{k: v for k, v in options.items() if k in reader.options})
    except InputError:
        raise
    except PermissionError:
        raise InputError(f"{path}: permission denied.", "Make the file readable.") from None
    except Exception as exc:  # a parser's own error on a malformed file: never a traceback for bad input
        raise InputError(f"{path}: not a readable {reader.name} file ({type(exc).__name__}: {exc}).",
                         f"Export the cloud as {reader.name} again.") from None
    if cloud.points.shape[0] == 0:
        lost = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in cloud.dropped.items() if n)
        raise InputError(f"{path}: the file holds no points" + (f" once {lost} are left out." if lost else "."),
                         "Export a cloud that has points" + (", or lower --splat-min-opacity." if lost else "."))
    return cloud


def check_output(path: str | Path, source: str | Path | None = None) -> None:
    """Refuse, before any work, an output that is the ``source`` file, or whose format, folder, write
    permission or writer's package is missing."""
    path = Path(path)
    writer = _writer(path)
    if source is not None:
        files.check_not_input(source, path)
    files.check_writable(path)
    if writer.package is not None:
        import_optional(writer.package, f"Writing {writer.name} files", writer.package)


def write_mesh(path: str | Path, mesh: Mesh) -> None:
    """``mesh`` to ``path`` in the format its extension names, atomically (the previous file survives a failure)."""
    path = Path(path)
    writer = _writer(path)
    with files.atomic_output(path) as temp:
        writer.write(temp, mesh)
