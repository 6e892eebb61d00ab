"""Load the compiled CPU kernels (numba) in a background thread, once per process.

Importing numba and loading the cached kernels of :mod:`engine.solver.kernels`
(assembly, evaluation, voxel sets), :mod:`engine.solver.sweeps` (the solve's preconditioner),
:mod:`engine.surface.kernels` (marching cubes, mesh pieces) and
:mod:`engine.surface.quadrics` (the simplifying collapse)
takes about 0.5 s in a fresh process, nearly all of it numba's own start (each
kernel after the first loads in a few milliseconds).  Started first, it
overlaps the stages before assembly, or in the Blender service the wait for the
first job; the first run after an install compiles them there too.
"""

from __future__ import annotations

import threading

# Points from which a pass over all points takes its compiled kernel even before numba has loaded (the outlier
# test's and normal estimation's neighbour search, the normals' spanning tree): below, the wait for numba's start
# (0.3-0.5 s beside the first stages of a fresh process) would cost more than the kernel saves.
COMPILED_MIN = 400_000

_warming: list[threading.Thread] = []  # the one loading thread of this process, once started


def warm_kernels() -> None:
    """Start loading the kernels in the background, unless this process already did."""
    if not _warming:
        _warming.append(threading.Thread(target=_load_kernels, name="nksr-kernels", daemon=True))
        _warming[0].start()


def kernels_loading() -> bool:
    """Whether this process's loading thread is running now (numba's start takes a core's worth of CPU)."""
    return bool(_warming) and _warming[0].is_alive()


def kernels_loaded() -> bool:
    """Whether this process's loading thread has finished (then a kernel's first call costs nothing more)."""
    return bool(_warming) and not _warming[0].is_alive()


def await_kernels() -> None:
    """Wait for this process's loading thread to finish (at once where none runs or it has finished).

    Normal estimation calls it first on the CPU: its compiled passes and its NumPy / SciPy ones pick differently
    among neighbours at equal distances and spanning-tree edges of equal cost, and which ran depended on whether
    numba had loaded by then: the stereo table scan gave 397,780 or 397,843 faces (54 or 55 doubtful normals)
    from one command.  Waiting makes every run take the compiled passes; numba is needed by the assembly a stage
    later anyway.
    """
    if _warming:
        _warming[0].join()


def compiled_pays(n: int) -> bool:
    """Whether a pass over ``n`` points should take its compiled kernel rather than its NumPy / SciPy one: where
    the kernels have loaded, or from :data:`COMPILED_MIN` points.

    The answer changes while numba loads, so it may only choose between passes that give the same result (the
    outlier test, the voxel sets); a stage whose two passes may differ awaits the kernels first
    (:func:`await_kernels`, as normal estimation does)."""
    return kernels_loaded() or n >= COMPILED_MIN


def _load_kernels() -> None:
    try:
        from .solver import kernels as solver_kernels
        from .solver import sweeps
        from .surface import kernels as surface_kernels
        from .surface import quadrics

        solver_kernels.warm()
        sweeps.warm()
        surface_kernels.warm()
        quadrics.warm()
    except Exception:  # noqa: BLE001 - the stages import them again and report what is wrong
        pass
