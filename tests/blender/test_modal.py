"""The UI path's state machine (timer ticks and Esc), driven here as the modal operator drives it.

Blender never ticks modal operators in background mode, so the test calls
``Run.tick`` every 0.1 s itself, exactly as the operator's timer does.  It also
never invokes operators there (``bpy.ops`` runs ``execute``), so the tests of a
dropped operator let ``operators.is_modal`` say "modal": Blender then adds the
operator's real timer and modal handler to its window, and loading a file drops
them the way it does in the UI, calling the operator's ``cancel()``.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType

import bpy
import pytest

from .scenes import import_sphere_ply, scene_state, snapshot


def _run(addon: ModuleType, objects: list[bpy.types.Object]) -> object:
    depsgraph = bpy.context.evaluated_depsgraph_get()
    inputs = [addon.scene_io.read_point_set(o, depsgraph) for o in objects]
    options = {"detail_level": "auto", "voxel_size": None, "mise_iter": 1, "trim": True, "device": "cpu",
               "mesh_edges": True}
    return addon.operators.Run(objects, inputs, options)


def test_ticks_never_block_and_finish_with_a_mesh(scene: bpy.types.Scene, tmp_path: Path, addon: ModuleType) -> None:
    """From a cold start: the engine's start (seconds of torch import) is polled too, never waited for."""
    source = import_sphere_ply(tmp_path)
    addon.engine_link.session.shutdown()
    run = _run(addon, [source])
    t0 = time.perf_counter()
    run.start(addon.engine_link.session.begin(""))
    assert time.perf_counter() - t0 < 0.25 and run.status()[0] == "starting the engine"
    stages, slowest, deadline = [], 0.0, time.monotonic() + 120
    while True:
        t0 = time.perf_counter()
        finished = run.tick()
        slowest = max(slowest, time.perf_counter() - t0)
        stages.append(run.status()[0])
        if finished:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert slowest < 0.25, f"a timer tick blocked Blender for {slowest:.2f} s"
    assert len(set(stages)) >= 3, stages  # progress reached the UI between ticks
    made = run.finish(bpy.context)
    assert [o.name for o in made] == [f"{source.name}_nksr"]


def test_escape_cancels_and_leaves_the_scene_as_it_was(scene: bpy.types.Scene, tmp_path: Path,
                                                       addon: ModuleType) -> None:
    source = import_sphere_ply(tmp_path, n=60_000)
    before, kept = scene_state(), snapshot(source)
    client = addon.engine_link.session.client_for("")
    run = _run(addon, [source])
    run.start(client)
    deadline = time.monotonic() + 120
    while run.status()[0] not in {"system", "solve", "mesh"}:
        assert not run.tick() and time.monotonic() < deadline
        time.sleep(0.1)
    t0 = time.perf_counter()
    run.cancel(wait=False)  # what Esc does: returns at once, later ticks see the job end
    assert time.perf_counter() - t0 < 0.25
    while not run.stopped:
        run.job.poll()
        assert time.perf_counter() - t0 < 3.5  # within the grace, the engine answers or is replaced
        time.sleep(0.1)
    with pytest.raises(addon.engine_link.client_api().RemoteError, match="(?i)cancel"):
        run.tick()
    assert scene_state() == before and snapshot(source) == kept
    # The engine is still usable for the next run.
    assert bpy.ops.nksr.reconstruct(detail_level=0.3, mise_iter=0) == {"FINISHED"}


def _start_modal(addon: ModuleType, monkeypatch: pytest.MonkeyPatch) -> object:
    """``nksr.reconstruct`` on its modal path, its job in the solver: the running operator."""
    addon.engine_link.session.client_for("")  # a warm engine: the job is submitted at once
    window = bpy.context.window_manager.windows[0]
    with monkeypatch.context() as patch:
        patch.setattr(addon.operators, "is_modal", lambda op, context: True)
        with bpy.context.temp_override(window=window):
            assert bpy.ops.nksr.reconstruct(mise_iter=1, device="CPU") == {"RUNNING_MODAL"}
    (op,) = [o for o in window.modal_operators if isinstance(o, addon.operators.NKSR_OT_reconstruct)]
    assert addon.settings.run_state(bpy.context).running
    deadline = time.monotonic() + 120
    while op._task.work.status()[0] not in {"system", "solve", "mesh"}:  # ticked as the timer would
        assert op._task.tick() is addon.task.State.RUNNING and time.monotonic() < deadline
        time.sleep(0.1)
    return op


def _assert_cancelled(addon: ModuleType, job: object, since: float) -> None:
    assert job.done and job.cancelled, "the engine's job still runs"
    assert time.perf_counter() - since < 4.0  # the engine answers within the 3 s grace, or is replaced
    assert isinstance(job.error, addon.engine_link.client_api().RemoteError) and "cancel" in str(job.error).lower()
    assert not addon.settings.run_state(bpy.context).running


def test_a_file_loaded_mid_run_cancels_the_job_and_the_next_run_works(scene: bpy.types.Scene, tmp_path: Path,
                                                                       addon: ModuleType,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Blender drops a modal operator's handler when a file is loaded (or its window closes), calling cancel()."""
    source = import_sphere_ply(tmp_path, n=60_000)
    saved = tmp_path / "before.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(saved), copy=True)
    op = _start_modal(addon, monkeypatch)
    job, name = op._task.work.job, source.name
    t0 = time.perf_counter()
    bpy.ops.wm.open_mainfile(filepath=str(saved))
    assert not bpy.context.window_manager.windows[0].modal_operators  # Blender dropped the operator
    _assert_cancelled(addon, job, t0)
    assert not [m.name for m in bpy.data.meshes if m.name.endswith("_nksr")]
    assert bpy.ops.nksr.reconstruct(detail_level=0.3, mise_iter=0) == {"FINISHED"}
    assert f"{name}_nksr" in bpy.data.objects


def test_cancel_as_blender_calls_it_leaves_the_scene_as_it_was(scene: bpy.types.Scene, tmp_path: Path,
                                                              addon: ModuleType,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The window-close case, which background mode cannot do: Blender calls cancel(context) and frees the op."""
    source = import_sphere_ply(tmp_path, n=60_000)
    before, kept = scene_state(), snapshot(source)
    saved = tmp_path / "before.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(saved), copy=True)
    op = _start_modal(addon, monkeypatch)
    job = op._task.work.job
    t0 = time.perf_counter()
    with bpy.context.temp_override(window=bpy.context.window_manager.windows[0]):
        op.cancel(bpy.context)
    _assert_cancelled(addon, job, t0)
    assert op._timer is None and op._task is None
    assert scene_state() == before and snapshot(source) == kept
    assert bpy.ops.nksr.reconstruct(detail_level=0.3, mise_iter=0) == {"FINISHED"}
    bpy.ops.wm.open_mainfile(filepath=str(saved))  # Blender drops the handler it still holds: cancel() again
    assert not bpy.context.window_manager.windows[0].modal_operators
