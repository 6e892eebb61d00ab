"""*Reconstruct File...* (``nksr.reconstruct_file``): the engine reads the file, only the mesh enters Blender."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import ModuleType

import bpy
import numpy as np
import pytest

from tests.shapes import sphere

from .conftest import write_ply
from .scenes import mesh_arrays, scene_state

# The engine's test hook: the job stands in the solve stage until cancelled (a real solve may end too soon).
LONG = {"device": "cpu", "_test_hold_seconds": 600.0, "mesh_edges": True}


def write_pcd(path: Path, points: np.ndarray, normals: np.ndarray) -> Path:
    """An ASCII PCD with normals, as PCL writes it."""
    head = (f"# .PCD v0.7\nVERSION 0.7\nFIELDS x y z normal_x normal_y normal_z\nSIZE 4 4 4 4 4 4\n"
            f"TYPE F F F F F F\nCOUNT 1 1 1 1 1 1\nWIDTH {len(points)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\n"
            f"POINTS {len(points)}\nDATA ascii\n")
    path.write_text(head)
    with path.open("a") as out:
        np.savetxt(out, np.hstack([points, normals]), fmt="%.9g")
    return path


def world_vertices(obj: bpy.types.Object) -> np.ndarray:
    """The object's vertices in world space, in float64 (the object is unrotated and unscaled)."""
    assert np.allclose(np.array(obj.matrix_world)[:3, :3], np.eye(3))
    return mesh_arrays(obj)[0].astype(np.float64) + np.array(obj.location, dtype=np.float64)


def radius_error(obj: bpy.types.Object, centre: np.ndarray, radius: float = 1.0) -> float:
    return float(np.abs(np.linalg.norm(world_vertices(obj) - centre, axis=1) - radius).max())


@pytest.mark.parametrize("kind", ["pcd", "npy"])
def test_a_file_becomes_a_mesh_where_its_points_are(scene: bpy.types.Scene, tmp_path: Path, addon: ModuleType,
                                                    kind: str) -> None:
    points, normals = sphere(3000, seed=3)
    centre = np.array([3.0, -2.0, 1.0])
    if kind == "pcd":
        path = write_pcd(tmp_path / "scan.pcd", points + centre, normals)
    else:
        path = tmp_path / "scan.npy"
        np.save(path, np.hstack([points + centre, normals]))
    assert bpy.ops.nksr.reconstruct_file(filepath=str(path), detail_level=0.4, mise_iter=0) == {"FINISHED"}
    (made,) = bpy.data.objects
    assert made.name == "scan_nksr" and made.select_get() and bpy.context.view_layer.objects.active == made
    assert len(made.data.polygons) > 500
    assert radius_error(made, centre) < 0.05
    assert made["nksr_source"] == str(path)
    assert "points" in addon.settings.run_state(bpy.context).last_summary


def test_a_georeferenced_scan_lands_on_its_data_with_the_offset_kept(scene: bpy.types.Scene, tmp_path: Path,
                                                                    addon: ModuleType) -> None:
    points, normals = sphere(3000, seed=4)
    centre = np.array([1.0e6 + 0.37, 2.0e6 - 0.81, 250.0])  # UTM-like offsets: float32 alone would lose decimetres
    path = write_ply(tmp_path / "utm.ply", points * 2.0 + centre, normals)
    assert bpy.ops.nksr.reconstruct_file(filepath=str(path), detail_level=0.4, mise_iter=0) == {"FINISHED"}
    (made,) = bpy.data.objects
    origin = np.array(made["nksr_origin"], dtype=np.float64)
    assert np.allclose(origin, np.array(made.location, dtype=np.float64), rtol=0, atol=0)  # location = the offset
    assert np.abs(origin - centre).max() < 0.5  # the cloud's centre
    assert np.abs(mesh_arrays(made)[0]).max() < 2.5  # vertices stay small, relative to the origin
    assert radius_error(made, centre, radius=2.0) < 0.1


def test_a_bad_file_leaves_the_scene_unchanged_with_a_clear_message(scene: bpy.types.Scene, tmp_path: Path,
                                                                    addon: ModuleType) -> None:
    bpy.ops.mesh.primitive_cube_add()
    before = scene_state()
    bad = tmp_path / "broken.pcd"
    bad.write_text("# .PCD v0.7\nFIELDS x y z\nthis is no header\n")
    with pytest.raises(RuntimeError, match=r"broken\.pcd: not a readable PCD file"):
        bpy.ops.nksr.reconstruct_file(filepath=str(bad))
    with pytest.raises(RuntimeError, match=r"missing\.npy: no such file"):
        bpy.ops.nksr.reconstruct_file(filepath=str(tmp_path / "missing.npy"))
    (tmp_path / "model.dwg").write_bytes(b"x")
    with pytest.raises(RuntimeError, match=r"cannot read '\.dwg'.*\.pcd"):
        bpy.ops.nksr.reconstruct_file(filepath=str(tmp_path / "model.dwg"))
    assert scene_state() == before


def test_cancel_leaves_the_scene_unchanged(scene: bpy.types.Scene, tmp_path: Path, addon: ModuleType) -> None:
    """Esc as the modal path does it: cancel without waiting, later ticks see the job end as cancelled."""
    points, normals = sphere(60_000, seed=5)
    np.save(tmp_path / "big.npy", np.hstack([points, normals]))
    before = scene_state()
    run = addon.operators.FileRun([], [tmp_path / "big.npy"], dict(LONG))
    run.start(addon.engine_link.session.client_for(""))
    deadline = time.monotonic() + 120
    while run.status()[0] not in {"system", "solve"}:
        assert not run.tick() and time.monotonic() < deadline
        time.sleep(0.1)
    t0 = time.perf_counter()
    run.cancel(wait=False)
    while not run.settle():
        assert time.perf_counter() - t0 < 3.5
        time.sleep(0.1)
    with pytest.raises(addon.engine_link.client_api().RemoteError, match="(?i)cancel"):
        run.tick()
    assert scene_state() == before


def test_a_missing_format_package_names_the_install_command(scene: bpy.types.Scene, tmp_path: Path,
                                                            addon: ModuleType, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """An engine Python without pypcd4 (hidden by a package that fails to import) says what to install."""
    hide = tmp_path / "hide" / "pypcd4"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={hide.parent} exec {os.environ['NKSR_ENGINE_PYTHON']} \"$@\"\n")
    wrapper.chmod(0o755)
    points, normals = sphere(500, seed=6)
    path = write_pcd(tmp_path / "scan.pcd", points, normals)
    session = addon.engine_link.session
    session.shutdown()
    monkeypatch.setenv("NKSR_ENGINE_PYTHON", str(wrapper))
    try:
        with pytest.raises(RuntimeError, match=r"(?s)needs the optional package pypcd4.*pip install pypcd4"):
            bpy.ops.nksr.reconstruct_file(filepath=str(path))
    finally:
        session.shutdown()
    assert not bpy.data.objects


def _requirement_names(path: Path) -> set[str]:
    """The packages a requirements file pins, following its ``-r`` includes as pip does (relative to the file)."""
    names: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r"):
            names |= _requirement_names(path.parent / line[2:].strip())
        elif line:
            names.add(line.split("==")[0].lower())
    return names


def test_the_engine_environment_gets_every_formats_package(addon: ModuleType, extension_zip: Path,
                                                           tmp_path: Path) -> None:
    """What Create Engine Environment installs (the zip's requirements) reads every listed format."""
    import zipfile

    formats = {"pypcd4", "laspy", "lazrs", "pye57", "pygltflib"}
    installed = addon.engine_link.requirements_file()
    assert installed.is_relative_to(Path(addon.__file__).parent)  # the zip's copy, as a user gets it
    assert formats | {"torch", "numpy", "scipy", "plyfile"} <= _requirement_names(installed)
    with zipfile.ZipFile(extension_zip) as zf:
        zf.extractall(tmp_path, [n for n in zf.namelist() if n.startswith("engine_source/")])
    assert formats <= _requirement_names(tmp_path / "engine_source" / "requirements.txt")


def test_the_modal_path_runs_and_blender_dropping_it_leaves_the_scene_unchanged(
        scene: bpy.types.Scene, tmp_path: Path, addon: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """As from the file browser: the operator goes modal, shows progress, and cancel() (window closed) stops it."""
    points, normals = sphere(60_000, seed=8)
    np.save(tmp_path / "big.npy", np.hstack([points, normals]))
    before = scene_state()
    addon.engine_link.session.client_for("")  # a warm engine: the job is submitted at once
    window = bpy.context.window_manager.windows[0]
    with monkeypatch.context() as patch:
        patch.setattr(addon.operators, "is_modal", lambda op, context: True)
        with bpy.context.temp_override(window=window):
            assert bpy.ops.nksr.reconstruct_file(filepath=str(tmp_path / "big.npy"), mise_iter=1,
                                                 device="CPU") == {"RUNNING_MODAL"}
    (op,) = [o for o in window.modal_operators if isinstance(o, addon.operators.NKSR_OT_reconstruct_file)]
    state = addon.settings.run_state(bpy.context)
    deadline = time.monotonic() + 120
    # Any stage of the engine's pipeline: the job is past the read and still running (a fast machine may
    # pass the solve between two ticks).
    working = {"clean", "resolution", "normals", "hierarchy", "system", "solve", "mesh", "trim", "simplify"}
    while op._task.work.status()[0] not in working:
        assert op._task.tick() is addon.task.State.RUNNING, op._task.work.status()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with bpy.context.temp_override(window=window):
        op._show(bpy.context)
    assert state.running and "big.npy" in op._progress(op._task.work)[0]
    job = op._task.work.job
    with bpy.context.temp_override(window=window):
        op.cancel(bpy.context)
    assert job.done and job.cancelled and not state.running
    assert scene_state() == before
