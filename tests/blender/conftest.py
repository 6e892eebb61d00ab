"""The Blender side's tests run in .venv-blender (the real bpy 5.0.1 module, numpy 1.26).

Blender's user folders point at a fresh temporary directory before bpy is
imported, so installing the extension never touches the user's Blender.  The
extension is built with ``build.py`` and installed from its zip, as a user
would; the engine runs from ``NKSR_ENGINE_PYTHON`` (``build.py test`` sets it to
.venv's Python, which has torch).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
USER_RESOURCES = Path(tempfile.mkdtemp(prefix="nksr-blender-user-"))
os.environ["BLENDER_USER_RESOURCES"] = str(USER_RESOURCES)
os.environ.setdefault("NKSR_ENGINE_PYTHON", str(ROOT / ".venv" / "bin" / "python"))

import bpy  # noqa: E402

ADDON = "bl_ext.user_default.nksr_blender"


def install(zip_path: Path) -> ModuleType:
    """Install and enable the zip the way Blender's Extensions preferences do; return the add-on module."""
    result = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default",
                                                      enable_on_install=True)
    assert result == {"FINISHED"}, result
    assert ADDON in sys.modules, "the extension was installed but not enabled"
    return sys.modules[ADDON]


@pytest.fixture(scope="session")
def extension_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(ROOT))
    import build

    return build.build_extension(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def installed(extension_zip: Path) -> Iterator[None]:
    install(extension_zip)
    yield
    if ADDON in sys.modules:
        sys.modules[ADDON].engine_link.session.shutdown()


@pytest.fixture
def addon(installed: None) -> ModuleType:
    """The enabled add-on's module (looked up per test: the uninstall test reinstalls it)."""
    return sys.modules[ADDON]


def write_ply(path: Path, points: np.ndarray, normals: np.ndarray | None = None,
              colors: np.ndarray | None = None) -> Path:
    """A small ASCII point-cloud PLY for Blender's own importer (the tests' environment has no plyfile)."""
    columns, props = [points], ["float x", "float y", "float z"]
    if normals is not None:
        columns.append(normals)
        props += ["float nx", "float ny", "float nz"]
    if colors is not None:
        columns.append(np.round(colors[:, :3] * 255))
        props += ["uchar red", "uchar green", "uchar blue"]
    header = ["ply", "format ascii 1.0", f"element vertex {len(points)}", *(f"property {p}" for p in props),
              "end_header"]
    path.write_text("\n".join(header) + "\n")
    with path.open("a") as out:
        np.savetxt(out, np.hstack(columns), fmt="%.9g")
    return path


@pytest.fixture
def scene(addon: ModuleType) -> Iterator[bpy.types.Scene]:
    """An empty scene for each test (objects and meshes of earlier tests removed)."""
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    for mesh in list(bpy.data.meshes):
        bpy.data.meshes.remove(mesh)
    for cloud in list(bpy.data.pointclouds):
        bpy.data.pointclouds.remove(cloud)
    yield bpy.context.scene
