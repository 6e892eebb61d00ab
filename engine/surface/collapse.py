"""pyfqmr's quadric edge collapse, whole or in spatial pieces on several processes (numpy and pyfqmr only).

pyfqmr holds the GIL, so one collapse uses one core: on the 1M-point clean
bunny it was the longest stage but one (5.6M faces, 12 s).  A large mesh is
therefore cut in slabs along its longest axis, and each slab collapsed in a
process of its own with its cut border pinned (pyfqmr's ``preserve_border``
leaves border vertices bit for bit where they were, so the slabs weld back on
them).  The strips along the cuts, where nothing could collapse, are then
collapsed again, each a band around its cut with the band's own border pinned.
This process collapses one piece itself, beside the workers.

Measured on the 1M-point clean bunny's mesh (5.6M faces, 2 cores, 2 pieces,
12 passes): 10.65 s whole -> 7.2 s (two halves alone take about half each,
but side by side they share the memory bandwidth), 778,070 faces instead of
780,678, closed and manifold; the run's peak memory over all its processes
3.58 GB (the engine's own 3.46 GB).

This module imports neither torch nor the rest of the engine, so a spawned
worker (``python -m`` this module, :class:`Workers`) starts in a fraction of a second.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from typing import Any, cast

import numpy as np

# Collapse passes; the error threshold grows over them to the bound.  Whole collapses in a fresh process, 20 -> 12
# passes: the 100k clean bunny's 557k faces 1.21 -> 1.08 s (149,398 -> 149,188 faces, the same Chamfer and NC on
# the bunny and the sphere), the 1M bunny's 5.6M faces 11.95 -> 10.65 s (778,476 -> 780,678 faces).
ITERATIONS = 12
BUDGET_ITERATIONS = 20  # passes toward a max_faces budget (12 left a small ellipsoid at 618 faces for 500)
AGGRESSIVENESS = 7.0  # threshold ~ (pass + 3)^7, so the cheapest collapses go first
MIN_FACES = 4  # a tetrahedron: the smallest closed mesh, the smallest budget max_faces accepts
# The smallest piece worth a worker, which costs about 0.2 s to start and feed: 557k faces (100k clean bunny) took
# 0.76 s whole and 0.79 s in two pieces.
PIECE_FACES = 500_000
MAX_PIECES = 8
BAND = 2.0  # half-width, in voxels, of the band around each cut collapsed again after the weld (4: 8% fewer
# faces than the whole collapse on a small ellipsoid, re-collapsing collapsed faces; 1: 2% more; 2: within 2.5%)


def schedule(bound: float) -> float:
    """pyfqmr's ``alpha`` for which the threshold alpha * (pass + K)^aggressiveness reaches ``bound`` at the end."""
    return bound / (ITERATIONS - 1 + 3) ** AGGRESSIVENESS


def collapse(v: np.ndarray, f: np.ndarray, bound: float | None, max_faces: int | None, move_border: bool
             ) -> tuple[np.ndarray, np.ndarray]:
    """Collapse to the quadric error ``bound`` (squared distance; None: skip), then to ``max_faces``.

    Open borders stay where they are, unless ``move_border`` and the budget cannot be met without moving them.
    """
    import pyfqmr

    s = pyfqmr.Simplify()
    s.setMesh(v, f.astype(np.int32))
    if bound is not None:
        s.simplify_mesh(target_count=MIN_FACES, aggressiveness=AGGRESSIVENESS, max_iterations=ITERATIONS,
                        alpha=schedule(bound), K=3, preserve_border=True, verbose=False)
    if max_faces is not None and s.getMesh()[1].shape[0] > max_faces:
        s.simplify_mesh(target_count=max_faces, aggressiveness=AGGRESSIVENESS, max_iterations=BUDGET_ITERATIONS,
                        preserve_border=True, verbose=False)
        if move_border and s.getMesh()[1].shape[0] > max_faces * 1.1:  # the open border alone is over the budget
            s.simplify_mesh(target_count=max_faces, aggressiveness=AGGRESSIVENESS,
                            max_iterations=BUDGET_ITERATIONS, preserve_border=False, verbose=False)
    v2, f2, _ = s.getMesh()
    return np.asarray(v2, np.float64), np.asarray(f2, np.int64)


def piece_count(faces: int, cores: int | None = None) -> int:
    """Pieces a mesh of ``faces`` is collapsed in: one per core, each of at least ``PIECE_FACES`` (1: whole)."""
    cores = cores if cores is not None else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_PIECES, faces // PIECE_FACES))


def collapse_in_pieces(v: np.ndarray, f: np.ndarray, bound: float, pieces: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`collapse` to ``bound`` (no budget) of ``pieces`` slabs at once: one here, the others in workers.

    Raises :class:`WorkerError` when a worker cannot start or fails, so the caller can collapse the whole mesh
    in its own process instead.
    """
    axis = int(np.argmax(v.max(axis=0) - v.min(axis=0)))
    centre = v[f, axis].mean(axis=1)
    cuts = np.quantile(centre, np.arange(1, pieces) / pieces)
    groups = [f[g] for g in _split(np.searchsorted(cuts, centre), pieces)]
    with Workers(pieces - 1) as pool:
        v1, f1 = _collapse_groups(pool, v, groups, bound, axis)
        # the strips along the cuts, where the pinned borders kept every face: a band of BAND voxels each
        # side of each cut (slabs are far wider, so bands do not meet), with the rest as it is
        centre = v1[f1, axis].mean(axis=1)
        near = np.abs(centre[:, None] - cuts[None, :]) <= BAND
        band = np.where(near.any(axis=1), np.argmax(near, axis=1), len(cuts))
        parts = _split(band, len(cuts) + 1)
        return _collapse_groups(pool, v1, [f1[g] for g in parts[:-1]], bound, axis, rest=f1[parts[-1]])


class WorkerError(RuntimeError):
    """A collapse worker could not start, or stopped without its answer."""


class Workers:
    """``count`` processes of ``python -m`` this module, each collapsing the meshes sent to its stdin, beside
    this process (which collapses one piece itself: one interpreter and one copy of a piece fewer).

    Plain subprocesses rather than multiprocessing: nothing re-imports the caller's main script (a script
    without the ``__main__`` guard would start the reconstruction again in each worker), and a worker imports
    numpy and pyfqmr only.  Each dies with this process (:func:`engine.large.workers.die_with_parent`), and
    ends when its stdin closes.
    """

    def __init__(self, count: int) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(count):
                self.procs.append(subprocess.Popen([sys.executable, "-m", __name__, str(os.getpid())], env=env,
                                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        except OSError as exc:
            self.close()
            raise WorkerError(f"cannot start a collapse worker: {exc}") from exc

    def map(self, jobs: list[tuple[np.ndarray, np.ndarray, float]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each job (vertices, faces, bound) collapsed: the last one here, the others in a worker each.

        The workers have read their meshes before this process starts its own collapse (which holds the GIL).
        """
        assert len(jobs) <= len(self.procs) + 1
        busy = self.procs[:len(jobs) - 1]
        try:
            for proc, (v, f, bound) in zip(busy, jobs, strict=False):
                assert proc.stdin is not None
                for array in (v, f, np.array([bound])):
                    _send(proc.stdin, array)
                proc.stdin.flush()
            here = collapse(*jobs[-1], None, False)
            out = []
            for proc in busy:
                assert proc.stdout is not None
                out.append((_receive(proc.stdout), _receive(proc.stdout)))
            return [*out, here]
        except (OSError, ValueError, EOFError) as exc:
            raise WorkerError(f"a collapse worker stopped: {exc}") from exc

    def close(self) -> None:
        for proc in self.procs:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _split(label: np.ndarray, count: int) -> list[np.ndarray]:
    """Indices of each label 0..count-1."""
    order = np.argsort(label, kind="stable")
    return np.split(order, np.searchsorted(label[order], np.arange(1, count)))


def _collapse_groups(pool: Workers, v: np.ndarray, groups: list[np.ndarray], bound: float, axis: int,
                     rest: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Collapse each face group (indices into ``v``) in ``pool`` with its border pinned; weld them and ``rest``."""
    everything = [*groups, *([] if rest is None else [rest])]
    uses = np.zeros(v.shape[0], np.int8)
    for g in everything:
        used = np.zeros(v.shape[0], bool)
        used[g] = True
        uses += used
    anchors = np.nonzero(uses > 1)[0]  # vertices of two groups: on a cut, pinned, so bit-equal after the collapse
    parts = pool.map([(*_submesh(v, g), bound) for g in groups])
    if rest is not None:
        parts.append(_submesh(v, rest))
    return _weld(parts, v[anchors], axis)


def _submesh(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The vertices ``f`` uses and ``f`` renumbered to them."""
    used = np.zeros(v.shape[0], bool)
    used[f] = True
    index = np.cumsum(used) - 1
    return v[used], index[f]


def _weld(parts: list[tuple[np.ndarray, np.ndarray]], anchors: np.ndarray, axis: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """One mesh of ``parts``, each vertex at an ``anchors`` position (the pinned cut) made one vertex.

    A part's vertices are first screened on their ``axis`` coordinate, then matched on all three.
    """
    key = np.ascontiguousarray(anchors).view(np.dtype((np.void, 24))).reshape(-1)
    order = np.argsort(key)
    verts, faces, count = [anchors], [], anchors.shape[0]
    for pv, pf in parts:
        ids = np.full(pv.shape[0], -1, np.int64)
        maybe = np.nonzero(np.isin(pv[:, axis], anchors[:, axis]))[0]
        if maybe.size and anchors.shape[0]:
            k = np.ascontiguousarray(pv[maybe]).view(np.dtype((np.void, 24))).reshape(-1)
            at = np.minimum(np.searchsorted(key, k, sorter=order), order.size - 1)
            hit = key[order[at]] == k
            ids[maybe[hit]] = order[at[hit]]
        own = ids < 0
        ids[own] = count + np.arange(int(own.sum()))
        count += int(own.sum())
        verts.append(pv[own])
        faces.append(ids[pf])
    return _submesh(np.concatenate(verts), np.concatenate(faces))  # anchors no face uses go


def _send(stream: Any, array: np.ndarray) -> None:
    """Write ``array`` to a pipe as an .npy header and its bytes (numpy's own writer needs a seekable file)."""
    array = np.ascontiguousarray(array)
    np.lib.format.write_array_header_1_0(stream, np.lib.format.header_data_from_array_1_0(array))
    stream.write(array.reshape(-1).view(np.uint8).data)


def _receive(stream: Any) -> np.ndarray:
    """Read an array :func:`_send` wrote; EOFError when the pipe ends first."""
    np.lib.format.read_magic(stream)
    shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    data = bytearray(int(np.prod(shape)) * dtype.itemsize)
    view, done = memoryview(data), 0
    while done < len(data):
        got = stream.readinto(view[done:])
        if not got:
            raise EOFError("the pipe ended inside an array")
        done += got
    return np.frombuffer(data, dtype).reshape(shape)


def _serve(parent: int) -> None:
    """A worker: collapse each (vertices, faces, bound) read from stdin, answer on stdout, until stdin ends."""
    from ..large.workers import die_with_parent

    answer = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, not into the answers
    sys.stdout = sys.stderr
    die_with_parent(parent)
    source = cast(io.BufferedReader, sys.stdin.buffer)
    while source.peek(1):
        v, f, bound = _receive(source), _receive(source), _receive(source)
        for array in collapse(v, f, float(bound[0]), None, False):
            _send(answer, array)
        answer.flush()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
