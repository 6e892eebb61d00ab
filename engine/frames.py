"""The coordinate frames of a run, named once (standard library and numpy; no torch).

A point passes through these frames, each a fixed affine map of the one before:

caller
    The caller's coordinates and units, float64 (may carry georeferenced offsets
    of 1e6).  Lengths in options and stats (``voxel_size``, ``chunk_size``,
    ``noise``) are in caller's units; :class:`engine.mesh.Mesh` gives vertices
    as ``origin + local_vertices``, local meaning caller's units relative to
    :attr:`Frame.center`, so float32 stays exact far from the origin.
canonical
    ``(caller - center) / diagonal``: centred on the bounding-box centre,
    bounding-box diagonal 1 (:func:`engine.cloud.prepare_cloud` recentres in
    float64 before the cast to float32).  The resolution, normals, trimming
    distances and the mesh before it goes back are canonical.
finest voxels
    ``canonical / voxel``, ``voxel`` the finest voxel size (canonical units):
    the solver's lattice, where integer points are voxel corners.  The
    hierarchy, the chunk grid and the fitted field (about a signed distance in
    voxels) live here.
level voxels
    ``voxels / 2**depth``: level ``depth``'s own lattice, whose voxels have
    edge :attr:`engine.solver.hierarchy.Level.size` ``= 2**depth`` finest voxels.
chunk-relative
    ``voxels - lo``, ``lo`` a chunk core's lower corner (integer finest
    voxels): a chunk's points and voxels (:mod:`engine.large.tasks`), so
    float32 stays exact in large scenes.

The Blender extension has a frame of its own before the caller's: it sends
world positions recentred on the objects' centre, ``world - center`` in float64
before the cast to float32 (``nksr_blender/scene_io.py``, ``PointSet.center``),
so to the engine the caller's frame is that recentred world; it adds the
centre back when it inserts the mesh.

The conversions below are written once and keep the arithmetic (and its
order) the pipeline has always used, so results are bit-identical; they work
on numpy arrays and torch tensors alike.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from .vectors import column_bounds

if TYPE_CHECKING:
    import torch

A = TypeVar("A", float, np.ndarray, "torch.Tensor")  # the conversions keep the type (and the device)


@dataclass(frozen=True)
class Frame:
    """caller <-> canonical (``center``, ``diagonal``, caller's units) <-> finest voxels (``voxel``, canonical).

    ``voxel`` is None until the resolution is chosen (:meth:`with_voxel`).
    """

    center: np.ndarray  # (3,) float64, caller's units
    diagonal: float  # bounding-box diagonal, caller's units
    voxel: float | None = None  # finest voxel edge, canonical units

    @classmethod
    def around(cls, points: np.ndarray, least: float = 0.0) -> Frame:
        """The frame of a cloud's bounding box (points (N, 3) float64); ``least`` bounds the diagonal below."""
        lo, hi = column_bounds(points)
        return cls(0.5 * (lo + hi), max(float(np.linalg.norm(hi - lo)), least))

    def with_voxel(self, voxel: float) -> Frame:
        return replace(self, voxel=voxel)

    def to_canonical(self, caller: np.ndarray) -> np.ndarray:
        """Caller's coordinates (..., 3), float64 -> canonical."""
        return (caller - self.center) / self.diagonal

    def from_canonical(self, canonical: A) -> A:
        """A canonical length or offset -> caller's units, relative to ``center`` (Mesh.local_vertices)."""
        return canonical * self.diagonal

    def to_voxels(self, canonical: A) -> A:
        """Canonical coordinates or lengths -> finest voxels."""
        return canonical / self._voxel()

    def from_voxels(self, voxels: A) -> A:
        """Finest voxels -> canonical."""
        return voxels * self._voxel()

    def _voxel(self) -> float:
        if self.voxel is None:
            raise ValueError("the frame has no voxel size yet: the resolution stage sets it (Frame.with_voxel)")
        return self.voxel
