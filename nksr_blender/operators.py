"""``nksr.reconstruct`` and the engine set-up operators.

One operator, two paths (Blender never ticks timers or modal handlers in
background mode): ``execute`` runs blocking, printing progress, for scripts, the
console and batch runs; ``invoke`` from the UI runs modal, polling the engine
from a 0.1 s timer without blocking, with Esc to cancel.  Meshes are created
only once every input has its result, so a failed or cancelled run leaves the
scene exactly as it was; a finished run is one undo step.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import bpy
import numpy as np

from . import engine_link, scene_io, settings

POLL_SECONDS = 0.1
Result = set[Literal["RUNNING_MODAL", "CANCELLED", "FINISHED", "PASS_THROUGH", "INTERFACE"]]


class RunError(Exception):
    """A failure to show the user: what went wrong and what to do."""


@dataclass
class Run:
    """One reconstruction over the selected objects: the state machine both paths drive.

    The modal path calls :meth:`tick` from its timer and :meth:`cancel` on Esc;
    the blocking path calls :meth:`run_blocking`.  Nothing touches the scene
    until :meth:`finish`, which adds every mesh or none.
    """

    objects: list[bpy.types.Object]
    inputs: list[scene_io.PointSet]
    options: dict[str, Any]
    viewpoint: np.ndarray | None = None  # world space; estimated normals face it
    results: list[Any] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    client: Any = None
    job: Any = None
    cancelled: bool = False

    @property
    def index(self) -> int:
        return len(self.results)

    @property
    def done(self) -> bool:
        return self.index == len(self.inputs)

    def label(self, stage: str, fraction: float) -> str:
        prefix = f"{self.inputs[self.index].name}: " if self.index < len(self.inputs) else ""
        count = f" ({self.index + 1}/{len(self.inputs)})" if len(self.inputs) > 1 else ""
        return f"NKSR{count} {prefix}{stage} {100 * fraction:.0f}%"

    def status(self) -> tuple[str, float]:
        if self.job is None:
            return "starting the engine", 0.0
        progress = self.job.progress
        return (progress.stage, progress.fraction) if progress is not None else ("sending", 0.0)

    def start(self, client: Any) -> None:
        """Submit the first input, or wait (in :meth:`tick`) for an engine that is still starting."""
        self.client = client
        if client.running:
            self._submit()

    def _submit(self) -> None:
        points = self.inputs[self.index]
        sensor = None if self.viewpoint is None else self.viewpoint - points.center  # the points' frame
        self.job = self.client.submit(points.points, points.normals, points.colors, sensor=sensor, **self.options)

    def tick(self) -> bool:
        """Read what the engine sent, without blocking; True once every input has its result.

        Raises the engine's error (a ClientError) when a job failed or the engine did not start.
        """
        if self.job is None:
            if self.client.poll_start() is None:
                return False
            self._submit()
        self.job.poll()
        if not self.job.done:
            return False
        self.results.append(self.job.result)
        if not self.done:
            self._submit()
        return self.done

    def cancel(self, wait: bool = True) -> None:
        """Stop the engine's job (Esc); the engine stays usable, or is replaced if it does not stop in 3 s.

        ``wait=False`` returns at once: later ticks see the job end (the UI path).
        """
        if self.job is not None:
            self.job.cancel(grace=3.0, wait=wait)
        elif self.client is not None and not self.client.running:
            self.client.close()  # still starting: nothing to cancel, the next run starts a fresh engine
        self.cancelled = True

    @property
    def stopped(self) -> bool:
        """After cancel(): True once nothing runs any more."""
        return self.job is None or self.job.done

    def run_blocking(self, client: Any) -> None:
        """Every input, one after the other, printing each stage (scripts and background mode)."""
        self.client = client
        last = ""

        def show(stage: str, fraction: float, text: str) -> None:
            nonlocal last
            line = self.label(stage, fraction)
            if line != last:
                print(line, flush=True)
                last = line

        while not self.done:
            self._submit()
            self.results.append(self.job.wait(on_progress=show))

    def finish(self, context: bpy.types.Context) -> list[bpy.types.Object]:
        """Every result becomes a new object beside its input (all or none)."""
        made: list[bpy.types.Object] = []
        meshes: list[bpy.types.Mesh] = []
        try:
            for obj, points, result in zip(self.objects, self.inputs, self.results, strict=True):
                mesh = scene_io.build_mesh(f"{obj.name}_nksr", points, result.local_vertices, result.faces,
                                           origin=result.origin, colors=result.colors, normals=result.normals,
                                           edges=result.edges, corner_edges=result.corner_edges)
                meshes.append(mesh)
                made.append(scene_io.add_object(context, obj, mesh))
        except Exception:
            for made_obj in made:
                bpy.data.objects.remove(made_obj)
            for mesh in meshes:
                bpy.data.meshes.remove(mesh)
            raise
        for selected in context.selected_objects:
            selected.select_set(False)
        for made_obj in made:
            made_obj.select_set(True)
        if made:
            context.view_layer.objects.active = made[-1]
        return made

    def record(self, context: bpy.types.Context) -> str:
        """The last run's figures, for the panel and the report."""
        state = settings.run_state(context)
        stats = [r.stats for r in self.results]
        state.points_in = int(sum(s.get("points_in", 0) for s in stats))
        state.faces_out = int(sum(s.get("faces", 0) for s in stats))
        state.voxel_size = float(stats[-1].get("voxel_size", 0.0)) if stats else 0.0
        state.seconds = time.perf_counter() - self.started
        state.chunks = int(sum(s.get("chunks", 0) for s in stats))
        state.last_summary = (f"{state.points_in:,} points -> {state.faces_out:,} faces, "
                              f"voxel {state.voxel_size:.4g}, {state.seconds:.1f} s"
                              + (f", {state.chunks} chunks" if state.chunks else ""))
        return state.last_summary


class NKSR_OT_reconstruct(settings.ReconstructOptions, bpy.types.Operator):
    """Reconstruct a surface mesh from each selected point cloud (a mesh of loose vertices or a point cloud)"""

    bl_idname = "nksr.reconstruct"
    bl_label = "Reconstruct Surface (NKSR)"
    bl_options = {"REGISTER", "UNDO"}

    _run: Run | None = None
    _timer: Any = None

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return not settings.run_state(context).running

    # -- options -----------------------------------------------------------------

    def _resolve(self, context: bpy.types.Context) -> dict[str, Any]:
        """Options a script did not set come from the panel's scene settings."""
        panel = settings.panel_settings(context)
        for name in settings.OPTION_NAMES:
            if not self.properties.is_property_set(name):
                setattr(self, name, getattr(panel, name))
        if self.properties.is_property_set("detail_level") and not self.properties.is_property_set("auto_detail"):
            self.auto_detail = False
        device = self.device
        if device == "PREFERENCES":
            prefs = settings.preferences(context)
            device = prefs.device if prefs is not None else "AUTO"
        return {
            "detail_level": "auto" if self.auto_detail else float(self.detail_level),
            "voxel_size": float(self.voxel_size) if self.voxel_size > 0 else None,
            "mise_iter": int(self.mise_iter),
            "trim": bool(self.trim),
            "device": device.lower(),
            "estimate_normals": bool(self.estimate_normals),
            "chunk_size": float(self.chunk_size) if self.chunk_size > 0 else None,
            "overlap_ratio": float(self.overlap_ratio),
            "memory_limit_gb": float(self.memory_limit_gb) if self.memory_limit_gb > 0 else None,
            "executor": "processes" if self.workers > 1 else "inprocess",
            "workers": int(self.workers),
            "mesh_edges": True,
        }

    def _prepare(self, context: bpy.types.Context) -> Run:
        options = self._resolve(context)
        selected = list(context.selected_objects)
        if not selected:
            raise RunError("Nothing is selected. Select a point cloud (a mesh of loose vertices or a point cloud "
                           "object) and run again.")
        usable = [o for o in selected if o.type in scene_io.POINT_TYPES]
        if not usable:
            names = ", ".join(f"'{o.name}' ({o.type.lower()})" for o in selected[:3])
            raise RunError(f"No selected object holds points: {names}. Select a mesh of loose vertices or a "
                           "point cloud object.")
        depsgraph = context.evaluated_depsgraph_get()
        try:
            inputs = [scene_io.read_point_set(o, depsgraph, self.keep_colors) for o in usable]
        except scene_io.SceneInputError as exc:
            raise RunError(str(exc)) from exc
        return Run(usable, inputs, options, viewpoint=self._viewpoint(context))

    def _viewpoint(self, context: bpy.types.Context) -> np.ndarray | None:
        """Where estimated normals should face, in world space (None: outward/up by propagation)."""
        if self.viewpoint == "CURSOR":
            return np.array(context.scene.cursor.location, dtype=np.float64)
        if self.viewpoint == "CAMERA":
            if context.scene.camera is None:
                raise RunError("Viewpoint is Active Camera, but the scene has no camera. Add one where the scan "
                               "was taken from, or choose the 3D Cursor or Automatic.")
            return np.array(context.scene.camera.matrix_world.translation, dtype=np.float64)
        return None

    def _client(self, context: bpy.types.Context) -> Any:
        try:
            return engine_link.session.client_for(settings.engine_python(context))
        except engine_link.EngineSetupError as exc:
            raise RunError(str(exc)) from exc

    def _fail(self, text: str) -> Result:
        self.report({"ERROR"}, text)
        return {"CANCELLED"}

    # -- blocking path (scripts, console, background) ------------------------------

    def execute(self, context: bpy.types.Context) -> Result:
        api = engine_link.client_api()
        try:
            run = self._prepare(context)
            run.run_blocking(self._client(context))
            run.finish(context)
        except (RunError, api.ClientError) as exc:
            return self._fail(str(exc))
        summary = run.record(context)
        self.report({"INFO"}, f"NKSR: {summary}")
        return {"FINISHED"}

    # -- modal path (the UI) ---------------------------------------------------------

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> Result:
        if bpy.app.background or context.window is None:
            return self.execute(context)
        api = engine_link.client_api()
        try:
            self._run = self._prepare(context)
            self._run.start(engine_link.session.begin(settings.engine_python(context)))
        except (RunError, engine_link.EngineSetupError, api.ClientError) as exc:
            self._cleanup(context)
            return self._fail(str(exc))
        state = settings.run_state(context)
        state.running, state.stage, state.fraction = True, "starting", 0.0
        context.window_manager.progress_begin(0, 1)
        self._timer = context.window_manager.event_timer_add(POLL_SECONDS, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> Result:
        assert self._run is not None
        if event.type == "ESC" and not self._run.cancelled:
            self._run.cancel(wait=False)  # the engine stops within a second, or is killed after 3 s
            context.workspace.status_text_set("NKSR: cancelling...")
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if self._run.cancelled:
            if self._run.job is not None:
                self._run.job.poll()
            if not self._run.stopped:
                return {"PASS_THROUGH"}
            self._cleanup(context)
            self.report({"WARNING"}, "NKSR: cancelled; the scene is unchanged.")
            return {"CANCELLED"}
        api = engine_link.client_api()
        try:
            if not self._run.tick():
                self._show(context)
                return {"PASS_THROUGH"}
            self._run.finish(context)
        except api.EngineUnavailable:
            return self._restart(context)
        except (RunError, api.ClientError) as exc:
            self._cleanup(context)
            return self._fail(str(exc))
        summary = self._run.record(context)
        self._cleanup(context)
        self.report({"INFO"}, f"NKSR: {summary}")
        return {"FINISHED"}

    def _restart(self, context: bpy.types.Context) -> Result:
        """The engine did not start: try every interpreter candidate (blocking), or say what each lacks."""
        assert self._run is not None
        try:
            self._run.start(self._client(context))
        except (RunError, engine_link.client_api().ClientError) as exc:
            self._cleanup(context)
            return self._fail(str(exc))
        return {"PASS_THROUGH"}

    def _show(self, context: bpy.types.Context) -> None:
        assert self._run is not None
        stage, fraction = self._run.status()
        state = settings.run_state(context)
        state.stage, state.fraction = stage, fraction
        context.window_manager.progress_update(fraction)
        context.workspace.status_text_set(self._run.label(stage, fraction) + "   (Esc to cancel)")
        for area in context.screen.areas if context.screen else []:
            if area.type == "VIEW_3D":
                area.tag_redraw()

    def _cleanup(self, context: bpy.types.Context) -> None:
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        state = settings.run_state(context)
        state.running, state.stage = False, ""
        if context.window is not None:
            wm.progress_end()
        if context.workspace is not None:
            context.workspace.status_text_set(None)


class NKSR_OT_check_engine(bpy.types.Operator):
    """Start the engine with the configured interpreter and show its torch version, devices and fVDB"""

    bl_idname = "nksr.check_engine"
    bl_label = "Check Engine"

    def execute(self, context: bpy.types.Context) -> Result:
        prefs = settings.preferences(context)
        try:
            client = engine_link.session.client_for(settings.engine_python(context))
        except engine_link.EngineSetupError as exc:
            if prefs is not None:
                prefs.engine_info = "Engine not working: see the message."
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        hello = client.hello or {}
        devices = ", ".join(f"{d.get('id')} ({d.get('name')})" for d in hello.get("devices", []))
        info = (f"Engine {hello.get('engine_version')} at {engine_link.session.python}\n"
                f"torch {hello.get('torch_version')}, devices: {devices}, "
                f"fVDB: {'yes' if hello.get('fvdb') else 'no'}")
        if prefs is not None:
            prefs.engine_info = info
        self.report({"INFO"}, info.replace("\n", "; "))
        return {"FINISHED"}


class NKSR_OT_setup_engine(bpy.types.Operator):
    """Create a private Python environment for the engine and install its pinned requirements (downloads torch)"""

    bl_idname = "nksr.setup_engine"
    bl_label = "Create Engine Environment"

    _steps: list[list[str]] = []
    _process: subprocess.Popen[bytes] | None = None
    _timer: Any = None
    _log: Any = None

    def _commands(self) -> list[list[str]]:
        venv = engine_link.private_env()
        python = engine_link.venv_python(venv)
        return [[sys.executable, "-m", "venv", str(venv)],
                [str(python), "-m", "pip", "install", "--disable-pip-version-check",
                 "-r", str(engine_link.requirements_file())]]

    def _refuse(self) -> str:
        if not bpy.app.online_access:
            return ("Blender's online access is off, and this downloads the engine's packages (torch). Allow it in "
                    "Preferences > System > Network, or make an environment yourself (python -m venv ENV; "
                    f"ENV/bin/pip install -r {engine_link.requirements_file()}) and set Engine Python to it.")
        return ""

    def execute(self, context: bpy.types.Context) -> Result:
        if reason := self._refuse():
            self.report({"ERROR"}, reason)
            return {"CANCELLED"}
        log = engine_link.user_folder("logs") / "setup.log"
        with open(log, "ab") as out:
            for step in self._commands():
                print("NKSR:", " ".join(step), flush=True)
                if subprocess.call(step, stdout=out, stderr=subprocess.STDOUT) != 0:
                    self.report({"ERROR"}, f"Creating the engine environment failed; see {log}.")
                    return {"CANCELLED"}
        self.report({"INFO"}, f"Engine environment ready: {engine_link.private_env()}")
        return {"FINISHED"}

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> Result:
        if bpy.app.background or context.window is None:
            return self.execute(context)
        if reason := self._refuse():
            self.report({"ERROR"}, reason)
            return {"CANCELLED"}
        self._steps = self._commands()
        self._log = open(engine_link.user_folder("logs") / "setup.log", "ab")  # noqa: SIM115 - closed in _end
        self._next()
        self._timer = context.window_manager.event_timer_add(0.5, window=context.window)
        context.window_manager.modal_handler_add(self)
        context.workspace.status_text_set("NKSR: creating the engine environment (downloads torch)...")
        return {"RUNNING_MODAL"}

    def _next(self) -> None:
        self._process = subprocess.Popen(self._steps.pop(0), stdout=self._log, stderr=subprocess.STDOUT)

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> Result:
        if event.type != "TIMER" or self._process is None or self._process.poll() is None:
            return {"PASS_THROUGH"}
        if self._process.returncode != 0:
            self._end(context)
            self.report({"ERROR"}, f"Creating the engine environment failed; see {self._log.name}.")
            return {"CANCELLED"}
        if self._steps:
            self._next()
            return {"PASS_THROUGH"}
        self._end(context)
        self.report({"INFO"}, f"Engine environment ready: {engine_link.private_env()}")
        return {"FINISHED"}

    def _end(self, context: bpy.types.Context) -> None:
        context.window_manager.event_timer_remove(self._timer)
        self._log.close()
        context.workspace.status_text_set(None)


CLASSES = (NKSR_OT_reconstruct, NKSR_OT_check_engine, NKSR_OT_setup_engine)


def menu_entry(self: Any, context: bpy.types.Context) -> None:
    self.layout.operator(NKSR_OT_reconstruct.bl_idname, icon="MESH_DATA")


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.VIEW3D_MT_object.append(menu_entry)


def unregister() -> None:
    bpy.types.VIEW3D_MT_object.remove(menu_entry)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
