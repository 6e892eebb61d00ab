"""``nksr.reconstruct`` and the engine set-up operators.

Both long-running operators share :class:`ModalOperator` (the way Blender's
Extensions add-on shares one mix-in among its operators): ``execute`` runs
blocking, printing progress, for scripts, the console and batch runs (Blender
never ticks timers or modal handlers in background mode); from the UI it runs
modal, a 0.1 s timer ticking a :class:`task.Task` without blocking, with Esc to
cancel, and ``cancel()`` stopping the work when Blender drops the operator (its
window closed, a file was loaded).  Meshes are created only once every input has
its result, so a failed or cancelled run leaves the scene exactly as it was; a
finished run is one undo step.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import bpy
import numpy as np
from bpy.props import StringProperty

from . import engine_link, scene_io, settings, task

POLL_SECONDS = 0.1
Result = set[Literal["RUNNING_MODAL", "CANCELLED", "FINISHED", "PASS_THROUGH", "INTERFACE"]]


class RunError(Exception):
    """A failure to show the user: what went wrong and what to do."""


def is_modal(op: Any, context: bpy.types.Context) -> bool:
    """Run modal (invoked from the UI, with a window to tick in) or blocking (scripts, background, redo)."""
    return not bpy.app.background and op.options.is_invoke and context.window is not None


def started_client(preference: str) -> Any:
    """A started engine client, trying every interpreter candidate in order (blocking); RunError naming each."""
    try:
        return engine_link.session.client_for(preference)
    except engine_link.EngineSetupError as exc:
        raise RunError(str(exc)) from exc


def select_only(context: bpy.types.Context, made: list[bpy.types.Object]) -> None:
    """The new objects become the selection, the last one active (what an importer does)."""
    for selected in context.selected_objects:
        selected.select_set(False)
    for made_obj in made:
        made_obj.select_set(True)
    if made:
        context.view_layer.objects.active = made[-1]


@dataclass
class Run:
    """One reconstruction over the selected objects: the :class:`task.Work` both paths drive.

    The modal path calls :meth:`tick` from its timer, :meth:`cancel` on Esc and
    when Blender drops the operator; the blocking path calls :meth:`run_blocking`.
    Nothing touches the scene until :meth:`finish`, which adds every mesh or none.
    """

    objects: list[bpy.types.Object]
    inputs: list[Any]  # scene_io.PointSet each (FileRun: the files' paths)
    options: dict[str, Any]
    viewpoint: np.ndarray | None = None  # world space; estimated normals face it
    results: list[Any] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    client: Any = None
    job: Any = None
    cancelled: bool = False
    restart: Callable[[], Any] | None = None  # a started client when the engine did not start (blocking)

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
        # A viewpoint chosen in the panel wins; else the object's ``sensor`` attribute, if any (the points' frame).
        sensor = points.sensors if self.viewpoint is None else self.viewpoint - points.center
        self.job = self.client.submit(points.points, points.normals, points.colors, sensor=sensor, **self.options)

    def tick(self) -> bool:
        """Read what the engine sent, without blocking; True once every input has its result.

        Raises the engine's error (a ClientError) when a job failed, or the engine
        did not start and there is no :attr:`restart` to try every interpreter.
        """
        try:
            return self._advance()
        except engine_link.client_api().EngineUnavailable:
            if self.restart is None:
                raise
            self.start(self.restart())
            return False

    def _advance(self) -> bool:
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
        """Stop the engine's job (Esc, or a dropped operator); the engine stays usable, or is replaced after 3 s.

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

    def settle(self) -> bool:
        """After cancel(wait=False): read the engine's answer without blocking; True once nothing runs."""
        if self.job is not None:
            self.job.poll()
        return self.stopped

    def run_blocking(self, client: Any = None) -> None:
        """Every input, one after the other, printing each stage (scripts and background mode)."""
        self.client = client if client is not None else self.client
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
        select_only(context, made)
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
        state.last_warnings = "\n".join(self.warnings())
        return state.last_summary

    def warnings(self) -> list[str]:
        """What the engine warned of in the last run (``stats["warnings"]``), each once, in order."""
        return list(dict.fromkeys(w for r in self.results for w in r.stats.get("warnings", [])))


@dataclass
class FileRun(Run):
    """Reconstruct File: the engine reads each of ``inputs`` (paths) itself, so a scan's points never pass
    through Blender's memory; only the meshes come back, placed where the files' points are."""

    keep_colors: bool = True

    def _submit(self) -> None:
        # The file's coordinates are world coordinates (its mesh is placed at its origin, unrotated).
        self.job = self.client.submit_file(self.inputs[self.index], sensor=self.viewpoint, **self.options)

    def finish(self, context: bpy.types.Context) -> list[bpy.types.Object]:
        """Every result becomes a new object at its file's origin (all or none)."""
        made: list[bpy.types.Object] = []
        try:
            for path, result in zip(self.inputs, self.results, strict=True):
                made.append(scene_io.add_file_object(context, f"{Path(path).stem}_nksr", result,
                                                     with_colors=self.keep_colors, source=str(path)))
        except Exception:
            for made_obj in made:
                mesh: Any = made_obj.data
                bpy.data.objects.remove(made_obj)
                bpy.data.meshes.remove(mesh)
            raise
        select_only(context, made)
        return made


class ModalOperator:
    """The shared run of the extension's long-running operators: a blocking path and a modal path.

    ``execute`` picks the path (:func:`is_modal`).  Blocking, it runs the work to
    the end.  Modal, a timer ticks a :class:`task.Task`, showing the status text
    and progress after each tick; Esc asks the work to stop; ``cancel()``, which
    Blender calls when it drops the handler (the window closed, a file was
    loaded), stops the work and waits, so nothing keeps running unseen.  Every
    way out -- finished, failed, cancelled, dropped, or an unexpected error --
    passes :meth:`_end`, which removes the timer and clears the status.

    A subclass says only what is its own: :meth:`_begin` (the work, or a failure
    to report), :meth:`_finish` (what a finished run does; returns the report),
    :meth:`_progress` (the status line) and, if it shows more, :meth:`_mirror`.
    """

    poll_seconds: ClassVar[float] = POLL_SECONDS
    cancelled_report: ClassVar[str] = "NKSR: cancelled."
    _task: task.Task | None = None
    _timer: Any = None

    # -- what each operator says -------------------------------------------------------

    def _failures(self) -> tuple[type[Exception], ...]:
        """The exceptions that are the user's to read (reported as errors); any other is a bug."""
        raise NotImplementedError

    def _begin(self, context: bpy.types.Context, modal: bool) -> task.Work:
        """The work to run (started when ``modal``: it must not block); raises a failure to report."""
        raise NotImplementedError

    def _finish(self, context: bpy.types.Context, work: Any) -> str:
        """What a finished run does (e.g. add the meshes); returns the INFO report.  May raise a failure."""
        raise NotImplementedError

    def _progress(self, work: Any) -> tuple[str, float]:
        """The status bar's line and the progress fraction (0-1) while the work runs."""
        raise NotImplementedError

    def _mirror(self, context: bpy.types.Context, work: Any) -> None:
        """Show the running work elsewhere too (a panel); ``work`` is None once the run ended."""

    # -- the two paths -----------------------------------------------------------------------

    def execute(self, context: bpy.types.Context) -> Result:
        modal = is_modal(self, context)
        try:
            work = self._begin(context, modal)
        except self._failures() as exc:
            return self._report_failure(exc)
        if modal:
            return self._start(context, work)
        try:
            work.run_blocking()
            message = self._finish(context, work)
        except self._failures() as exc:
            return self._report_failure(exc)
        except BaseException:  # Ctrl-C or a bug: stop what still runs before it propagates
            work.cancel(wait=True)
            raise
        self.report({"INFO"}, message)  # type: ignore[attr-defined]
        return {"FINISHED"}

    def _start(self, context: bpy.types.Context, work: task.Work) -> Result:
        self._task = task.Task(work, self._failures())
        wm = context.window_manager
        try:
            self._timer = wm.event_timer_add(self.poll_seconds, window=context.window)
            wm.progress_begin(0, 1)
            wm.modal_handler_add(self)  # type: ignore[arg-type]  # always mixed into an Operator
            self._show(context)
        except BaseException:
            self.cancel(context)
            raise
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> Result:
        current = self._task
        if current is None:  # already cancelled by Blender
            return {"CANCELLED"}
        try:
            if event.type == "ESC" and current.escape():
                context.workspace.status_text_set("NKSR: cancelling...")
                return {"RUNNING_MODAL"}
            if event.type != "TIMER":
                return {"PASS_THROUGH"}
            if current.tick() is task.State.RUNNING:
                self._show(context)
            if not current.ended:
                return {"PASS_THROUGH"}
            message = ""
            if current.state is task.State.FINISHED:
                try:
                    message = self._finish(context, current.work)
                except current.failures as exc:
                    current.fail(exc)
        except BaseException:  # a bug: stop the work and clean up before Blender drops us
            self.cancel(context)
            raise
        self._end(context)
        if current.state is task.State.FAILED:
            assert current.error is not None
            return self._report_failure(current.error)
        if current.state is task.State.CANCELLED:
            self.report({"WARNING"}, self.cancelled_report)  # type: ignore[attr-defined]
            return {"CANCELLED"}
        self.report({"INFO"}, message)  # type: ignore[attr-defined]
        return {"FINISHED"}

    def cancel(self, context: bpy.types.Context) -> None:
        """Blender dropped this operator (its window closed, a file was loaded): stop the work, waiting."""
        if self._task is not None and self._task.cancel() is task.State.CANCELLED:
            print(self.cancelled_report, flush=True)  # the report would reach no window
        self._end(context)

    # -- shared by both -------------------------------------------------------------------------

    def _show(self, context: bpy.types.Context) -> None:
        assert self._task is not None
        line, fraction = self._progress(self._task.work)
        context.window_manager.progress_update(fraction)
        context.workspace.status_text_set(line + "   (Esc to cancel)")
        self._mirror(context, self._task.work)

    def _end(self, context: bpy.types.Context) -> None:
        """Undo what :meth:`_start` set up (a no-op when it did not run, or :meth:`_end` already did)."""
        self._task = None
        if self._timer is None:
            return
        wm = context.window_manager
        wm.event_timer_remove(self._timer)
        self._timer = None
        wm.progress_end()
        if context.workspace is not None:
            context.workspace.status_text_set(None)
        self._mirror(context, None)

    def _report_failure(self, error: BaseException) -> Result:
        self.report({"ERROR"}, str(error))  # type: ignore[attr-defined]
        return {"CANCELLED"}


class ReconstructOperator(ModalOperator, settings.ReconstructOptions):
    """What both reconstruct operators share: options from the panel, the viewpoint, the engine, the report.

    A subclass says where the points come from (:meth:`_prepare`).
    """

    cancelled_report = "NKSR: cancelled; the scene is unchanged."
    if TYPE_CHECKING:  # bpy.types.Operator's, which each subclass also derives from (no annotation for Blender)
        properties: Any

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return not settings.run_state(context).running

    # -- options -----------------------------------------------------------------

    def _resolve(self, context: bpy.types.Context) -> dict[str, Any]:
        """Options a script did not set come from the panel's scene settings."""
        panel = settings.panel_settings(context)
        by_script = {name for name in settings.OPTION_NAMES if self.properties.is_property_set(name)}
        for name in settings.OPTION_NAMES:
            if name not in by_script:  # setting it here marks it set: hence by_script, taken before
                setattr(self, name, getattr(panel, name))
        if "detail_level" in by_script and "auto_detail" not in by_script:
            self.auto_detail = False
        if "mise_iter" in by_script and "auto_refinement" not in by_script:
            self.auto_refinement = False
        device = self.device
        if device == "PREFERENCES":
            prefs = settings.preferences(context)
            device = prefs.device if prefs is not None else "AUTO"
        return {
            "detail_level": "auto" if self.auto_detail else float(self.detail_level),
            "voxel_size": float(self.voxel_size) if self.voxel_size > 0 else None,
            "mise_iter": "auto" if self.auto_refinement else int(self.mise_iter),
            "max_faces": int(self.max_faces) if self.max_faces > 0 else None,
            "trim": bool(self.trim),
            "keep_fragments": bool(self.keep_fragments),
            "watertight": bool(self.watertight),
            "register_views": bool(self.register_views),
            "prior": str(self.prior).lower(),
            "device": device.lower(),
            "estimate_normals": bool(self.estimate_normals),
            "keep_normals": bool(self.keep_normals) and not self.estimate_normals,
            "chunk_size": float(self.chunk_size) if self.chunk_size > 0 else None,
            "overlap_ratio": float(self.overlap_ratio),
            "memory_limit_gb": float(self.memory_limit_gb) if self.memory_limit_gb > 0 else None,
            "executor": "processes" if self.workers > 1 else "inprocess",
            "workers": int(self.workers),
            "mesh_edges": True,
        }

    def _prepare(self, context: bpy.types.Context) -> Run:
        """The work, before the engine starts; raises a RunError to report."""
        raise NotImplementedError

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

    # -- what the shared run does here -----------------------------------------------------

    def _failures(self) -> tuple[type[Exception], ...]:
        return RunError, engine_link.EngineSetupError, engine_link.client_api().ClientError

    def _begin(self, context: bpy.types.Context, modal: bool) -> Run:
        run = self._prepare(context)
        preference = settings.engine_python(context)
        if not modal:
            run.client = started_client(preference)
            return run
        run.restart = partial(started_client, preference)  # the quick start failed: try every candidate
        run.start(engine_link.session.begin(preference))  # spawns the engine without waiting for it
        return run

    def _finish(self, context: bpy.types.Context, work: Run) -> str:
        work.finish(context)
        summary = work.record(context)
        for text in settings.run_state(context).last_warnings.splitlines():  # as record() kept them
            self.report({"WARNING"}, f"NKSR: {text}")  # type: ignore[attr-defined]
        return f"NKSR: {summary}"

    def _progress(self, work: Run) -> tuple[str, float]:
        stage, fraction = work.status()
        return work.label(stage, fraction), fraction

    def _mirror(self, context: bpy.types.Context, work: Run | None) -> None:
        state = settings.run_state(context)
        if work is None:
            state.running, state.stage = False, ""
            return
        state.running = True
        state.stage, state.fraction = work.status()
        for area in context.screen.areas if context.screen else []:
            if area.type == "VIEW_3D":
                area.tag_redraw()


class NKSR_OT_reconstruct(ReconstructOperator, bpy.types.Operator):
    """Reconstruct a surface mesh from each selected point cloud (a mesh of loose vertices or a point cloud)"""

    bl_idname = "nksr.reconstruct"
    bl_label = "Reconstruct Surface (NKSR)"
    bl_options = {"REGISTER", "UNDO"}

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


class NKSR_OT_reconstruct_file(ReconstructOperator, bpy.types.Operator):
    """Reconstruct a surface mesh from a point-cloud file the engine reads itself (large scans never load into \
Blender): PLY, PCD, LAS/LAZ, E57, XYZ/PTS/TXT/CSV, NPY/NPZ"""

    bl_idname = "nksr.reconstruct_file"
    bl_label = "Reconstruct File..."
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="File", subtype="FILE_PATH",  # type: ignore[valid-type]
                             description="The point-cloud file the engine reads")
    filter_glob: StringProperty(default=engine_link.engine_module("suffixes").glob(),  # type: ignore[valid-type]
                                options={"HIDDEN"})

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> Result:
        """The file browser, filtered to the engine's formats; choosing a file calls execute (modal from there)."""
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def _prepare(self, context: bpy.types.Context) -> FileRun:
        options = self._resolve(context)
        path = Path(bpy.path.abspath(self.filepath))
        suffixes = engine_link.engine_module("suffixes").CLOUD_INPUTS
        if path.suffix.lower() not in suffixes:
            raise RunError(f"{path.name}: the engine cannot read '{path.suffix or 'no extension'}' point clouds. "
                           f"Choose a file of one of: {', '.join(suffixes)}.")
        if not path.is_file():
            raise RunError(f"{path}: no such file. Choose a point-cloud file.")
        return FileRun([], [path], options, viewpoint=self._viewpoint(context), keep_colors=bool(self.keep_colors))

class NKSR_OT_check_engine(bpy.types.Operator):
    """Start the engine with the configured interpreter and show its torch version and devices"""

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
                f"torch {hello.get('torch_version')}, devices: {devices}")
        if prefs is not None:
            prefs.engine_info = info
        self.report({"INFO"}, info.replace("\n", "; "))
        return {"FINISHED"}


class NKSR_OT_setup_engine(ModalOperator, bpy.types.Operator):
    """Create a private Python environment for the engine and install its pinned requirements (downloads torch)"""

    bl_idname = "nksr.setup_engine"
    bl_label = "Create Engine Environment"

    poll_seconds = 0.5
    cancelled_report = "NKSR: creating the engine environment was cancelled; run it again to finish it."

    def _failures(self) -> tuple[type[Exception], ...]:
        return RunError, task.StepFailed, engine_link.EngineSetupError, OSError

    def _begin(self, context: bpy.types.Context, modal: bool) -> task.CommandChain:
        if not bpy.app.online_access:
            raise RunError("Blender's online access is off, and this downloads the engine's packages (torch). "
                           "Allow it in Preferences > System > Network, or make an environment yourself (python -m "
                           f"venv ENV; ENV/bin/pip install -r {engine_link.requirements_file()}) and set Engine "
                           "Python to it.")
        venv = engine_link.private_env()
        python = engine_link.venv_python(venv)
        steps = [[sys.executable, "-m", "venv", str(venv)],
                 [str(python), "-m", "pip", "install", "--disable-pip-version-check",
                  "-r", str(engine_link.requirements_file())]]
        chain = task.CommandChain(steps, engine_link.user_folder("logs") / "setup.log",
                                  "Creating the engine environment")
        if modal:
            chain.tick()  # starts the first step
        return chain

    def _finish(self, context: bpy.types.Context, work: task.CommandChain) -> str:
        return f"Engine environment ready: {engine_link.private_env()}"

    def _progress(self, work: task.CommandChain) -> tuple[str, float]:
        step, steps = max(work.started, 1), len(work.commands)
        return (f"NKSR: creating the engine environment (downloads torch), step {step}/{steps}",
                (step - 1) / steps)


CLASSES = (NKSR_OT_reconstruct, NKSR_OT_reconstruct_file, NKSR_OT_check_engine, NKSR_OT_setup_engine)


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
