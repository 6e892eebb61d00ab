"""The UI path's state machine (timer ticks and Esc), driven here as the modal operator drives it.

Blender never ticks modal operators in background mode, so the test calls
``Run.tick`` every 0.1 s itself, exactly as the operator's timer does.
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
