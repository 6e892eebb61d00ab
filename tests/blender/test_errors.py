"""Every failure gives a message that says what to do, and leaves the scene exactly as it was."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import bpy
import pytest

from .scenes import import_sphere_ply, scene_state, snapshot


def _fails(match: str) -> None:
    before = scene_state()
    with pytest.raises(RuntimeError, match=match):
        bpy.ops.nksr.reconstruct()
    assert scene_state() == before


def test_nothing_selected(scene: bpy.types.Scene, tmp_path: Path) -> None:
    import_sphere_ply(tmp_path).select_set(False)
    _fails("Nothing is selected")


def test_object_without_points(scene: bpy.types.Scene) -> None:
    bpy.ops.object.camera_add()
    bpy.ops.object.light_add(type="POINT")
    bpy.context.view_layer.objects["Camera"].select_set(True)
    _fails(r"No selected object holds points: .*camera.*light")


def test_engine_interpreter_missing(scene: bpy.types.Scene, tmp_path: Path, addon: ModuleType,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import_sphere_ply(tmp_path)
    addon.engine_link.session.shutdown()
    monkeypatch.setenv("NKSR_ENGINE_PYTHON", str(tmp_path / "no-such-python"))
    # All three places are named, each with its fix.
    _fails(r"(?s)NKSR_ENGINE_PYTHON.*does not exist.*Engine Python.*not set.*private engine environment.*"
           r"Create Engine Environment")


def test_engine_interpreter_that_is_a_folder(scene: bpy.types.Scene, tmp_path: Path, addon: ModuleType,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import_sphere_ply(tmp_path)
    addon.engine_link.session.shutdown()
    (tmp_path / "env" / "bin").mkdir(parents=True)
    (tmp_path / "env" / "bin" / "python3").write_text("")
    monkeypatch.setenv("NKSR_ENGINE_PYTHON", str(tmp_path / "env"))  # the environment instead of its Python
    _fails(r"(?s)NKSR_ENGINE_PYTHON: .*env is a folder, not a Python interpreter; choose the interpreter inside "
           r"it: .*env/bin/python3")


def test_engine_interpreter_without_torch(scene: bpy.types.Scene, tmp_path: Path, addon: ModuleType,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import_sphere_ply(tmp_path)
    addon.engine_link.session.shutdown()
    monkeypatch.setenv("NKSR_ENGINE_PYTHON", sys.executable)  # Blender's test environment: no torch
    _fails(r"(?s)did not start the engine.*torch")


def test_engine_killed_mid_job_then_recovers(scene: bpy.types.Scene, tmp_path: Path, addon: ModuleType) -> None:
    source = import_sphere_ply(tmp_path, n=60_000)
    kept = snapshot(source)
    session = addon.engine_link.session
    session.shutdown()

    def kill_when_busy() -> None:  # the test may use a thread; the add-on never does
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            client = session.client
            job = getattr(client, "_job", None)
            if job is not None and job.progress is not None:  # the engine reported a stage: inside the job
                os.kill(client.pid, signal.SIGKILL)  # (a fixed delay raced the job once the engine got faster)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    _fails(r"(?i)engine.*(stopped|died|crashed|exit)")
    killer.join()
    assert snapshot(source) == kept
    assert bpy.ops.nksr.reconstruct(detail_level=0.3, mise_iter=0) == {"FINISHED"}  # a fresh engine
