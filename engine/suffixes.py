"""The file extensions the engine reads, for processes that cannot import :mod:`engine.formats` (Blender).

Standard library only: the add-on imports it for its file browser's filter and
to tell which files its Blender command hands to the engine.  The format table
(``engine/formats/__init__.py``, ``READERS``) is the definition;
``tests/engine/test_file_request.py`` keeps this list equal to its keys.
"""

from __future__ import annotations

CLOUD_INPUTS: tuple[str, ...] = (".ply", ".pcd", ".xyz", ".pts", ".txt", ".csv", ".npy", ".npz", ".las", ".laz",
                                 ".e57")


def glob(suffixes: tuple[str, ...] = CLOUD_INPUTS) -> str:
    """A file browser's filter: ``*.ply;*.pcd;...``."""
    return ";".join(f"*{s}" for s in suffixes)
