"""Step 3: the sparse voxel hierarchy and the field it carries.

Coordinates here are in finest-voxel units (:mod:`engine.frames`).  Level d
has voxels of edge ``2**d`` (:attr:`Level.size`); it holds every voxel whose basis support touches
an input point (the 27 taps of each occupied cell); where surface may leave the
finest band, levels d >= 1 are dilated once more so that coarse fields bridge
holes in the scan (:func:`build_levels`).  The field
is the sum over levels of ``a_v B_v(x)``; it is fitted coarse to fine
(:mod:`engine.solver.fitting`), each level solving for what the coarser ones left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from .basis import TAP_OFFSETS, split_points, weights_1d
from .threads import chunks, compiled_on, on_rows, run_parts
from .voxels import VoxelIndex, dilate, unique_voxels

BATCH = 1 << 18  # points per batch of field evaluations and lookups


@dataclass
class Level:
    """One level: voxel edge ``size`` = 2**depth finest voxels, voxels (M, 3) int64, coefficients (M,)."""

    depth: int
    size: float
    index: VoxelIndex
    coeffs: torch.Tensor | None = field(default=None)
    # Voxels the smoothness term is averaged over (lam / M): the level's own, or for a coarse level built without
    # its bridging ring, the count it would have with it, so that the ring changes which voxels exist and not the
    # weight of each smoothness stencil (:func:`build_levels`).
    smooth_count: int | None = None
    _neighbours: torch.Tensor | None = field(default=None, repr=False)
    _tap_coeffs: torch.Tensor | None = field(default=None, repr=False)
    _padded: torch.Tensor | None = field(default=None, repr=False)

    @property
    def ijk(self) -> torch.Tensor:
        return self.index.ijk

    def __len__(self) -> int:
        return len(self.index)

    @property
    def smooth_voxels(self) -> int:
        """M of the smoothness term lam / M: :attr:`smooth_count`, or the level's own voxels."""
        return len(self) if self.smooth_count is None else self.smooth_count

    @property
    def neighbours(self) -> torch.Tensor:
        """(M, 27) int32 rows of each voxel's 27 neighbours (tap order of :mod:`engine.solver.basis`); -1: absent."""
        if self._neighbours is None:
            self._neighbours = self.index.neighbour_table(BATCH)
        return self._neighbours

    def set_coeffs(self, coeffs: torch.Tensor, compiled: bool | None = None) -> None:
        """Store the solved coefficients (M,) and the (M, 27) table of each voxel's neighbours' coefficients.

        ``compiled``: gather the table in :func:`engine.solver.kernels.gather_taps` (None: on the CPU, for
        float32; the same table) rather than by torch's indexing (the reference, and the CUDA path).
        """
        self.coeffs = coeffs
        self._padded = torch.cat((coeffs, coeffs.new_zeros(1)))  # row -1 (absent) picks the trailing zero
        if compiled_on(coeffs.device, compiled) and coeffs.dtype == torch.float32:
            from . import kernels

            table = np.empty(tuple(self.neighbours.shape), np.float32)
            run_parts(partial(kernels.gather_taps, self._padded.numpy(), self.neighbours.numpy(), out=table),
                      chunks(0, len(self)))
            self._tap_coeffs = torch.from_numpy(table)
        else:
            self._tap_coeffs = self._padded[self.neighbours]

    def tap_coeffs(self, cells: torch.Tensor, compiled: bool | None = None) -> torch.Tensor:
        """(N, 27) coefficients of the voxels touching points in ``cells`` (N, 3), 0 where absent.

        ``compiled`` (None: on the CPU, for float32): in :func:`engine.solver.kernels.cell_taps`, one pass over
        the cells on the kernel threads; else torch's lookup and gather (the reference, and the CUDA path).
        """
        assert self._padded is not None and self._tap_coeffs is not None
        if compiled_on(cells.device, compiled) and self._tap_coeffs.dtype == torch.float32:
            from . import kernels

            index = self.index
            gathered = np.empty((cells.shape[0], 27), np.float32)
            run_parts(partial(kernels.cell_taps, np.ascontiguousarray(cells.to(torch.int64).numpy()),
                              index.origin.numpy(), index.bdims.numpy(), index.grid.numpy(), index.table.numpy(),
                              self._tap_coeffs.numpy(), self._padded.numpy(), out=gathered), chunks(0, cells.shape[0]))
            return torch.from_numpy(gathered)
        row = self.index.lookup(cells)
        out = self._tap_coeffs[row.clamp_min(0)]
        missing = row < 0
        if bool(missing.any()):
            out[missing] = self._padded[self._lookup_taps(cells[missing])]
        return out

    def taps(self, cells: torch.Tensor) -> torch.Tensor:
        """(N, 27) rows of the voxels touching points in ``cells`` (N, 3) int64, -1 where absent.

        One lookup per cell and a gather from the neighbour table; the rare cells
        outside the level (band edges) fall back to 27 lookups.
        """
        row = self.index.lookup(cells)
        out = self.neighbours[row.clamp_min(0)].to(torch.int64)
        missing = row < 0
        if bool(missing.any()):
            out[missing] = self._lookup_taps(cells[missing])
        return out

    def _lookup_taps(self, cells: torch.Tensor) -> torch.Tensor:
        """(N, 27) int64 rows of the 27 voxels around ``cells`` (N, 3), by 27 lookups each; -1 where absent."""
        return self.index.lookup(cells[:, None, :] + tap_offsets(cells.device))


def tap_offsets(device: torch.device) -> torch.Tensor:
    return torch.from_numpy(TAP_OFFSETS).to(device)


def rings(vox: torch.Tensor, count: int) -> torch.Tensor:
    """Voxels (M, 3) with ``count`` rings of their 26 neighbours added."""
    for _ in range(count):
        vox = dilate(vox, tap_offsets(vox.device))
    return vox


def level_voxels(x: torch.Tensor, size: float, extra_dilation: int) -> torch.Tensor:
    """Voxels (M, 3) at voxel size ``size`` touched by the points x (N, 3), dilated ``extra_dilation`` times."""
    cells, _ = split_points(x / size)
    return rings(unique_voxels(cells), 1 + extra_dilation)


# Extra dilations of the coarse levels (d > 0) beyond the ring every level gets, so that they carry the field
# across gaps in the data: where surface is kept away from the points (trim off closes holes, watertight mode
# closes the unseen regions, :func:`engine.pipeline.fit_field` answers anywhere near the data).  Trimmed surface
# lies within the finest band, and there the ring does not pay (``bridge=False``): on the 100k-point bench inputs
# level 1 shrinks 35-50% (bunny scan 84k -> 40k voxels, clean bunny 82k -> 49k), its assembly and solve with it.
# The smoothness keeps its weight per stencil (:attr:`Level.smooth_count`): averaged over the smaller level
# instead, it weighed up to twice as much and Chamfer-L1 went 0.2-1% up on the bunny with noise; so kept, the
# meshes stay within 1% either way (bench/README.md, session 19).
BRIDGE_RINGS = 1


def build_levels(x: torch.Tensor, depth: int, bridge: bool = True) -> list[Level]:
    """The hierarchy, finest first, for points x (N, 3) in finest-voxel units; ``bridge``: the coarse levels
    dilated :data:`BRIDGE_RINGS` more, to span gaps (without, each knows the count it would have had)."""
    levels = []
    for d in range(depth):
        size = float(2**d)
        vox = level_voxels(x, size, BRIDGE_RINGS if d > 0 and bridge else 0)
        count = int(rings(vox, BRIDGE_RINGS).shape[0]) if d > 0 and not bridge else None
        levels.append(Level(depth=d, size=size, index=VoxelIndex(vox), smooth_count=count))
    return levels


def contract(a: torch.Tensor, u: torch.Tensor, size: float, with_grad: bool
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Field values (N,) and gradients (N, 3) from tap coefficients a (N, 27) and local coordinates u (N, 3).

    Contracts one axis at a time (the basis is a tensor product), never forming
    the (N, 27, 3) gradient weights.
    """
    w, d = weights_1d(u.to(a.dtype))  # (N, 3 axes, 3 taps)
    per_axis = torch.stack((w, d), dim=2) if with_grad else w[:, :, None, :]  # (N, 3, c, 3)
    t = torch.einsum("nzyx,ncx->nzyc", a.view(-1, 3, 3, 3), per_axis[:, 0])
    t = torch.einsum("nzyc,ndy->nzcd", t, per_axis[:, 1])
    t = torch.einsum("nzcd,nez->ncde", t, per_axis[:, 2])
    if not with_grad:
        return t[:, 0, 0, 0], None
    grads = torch.stack((t[:, 1, 0, 0], t[:, 0, 1, 0], t[:, 0, 0, 1]), dim=1) / size
    return t[:, 0, 0, 0], grads


def evaluate_level(level: Level, x: torch.Tensor, with_grad: bool = False, compiled: bool | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Field of one level at x (N, 3) finest units: values (N,) and optionally gradients (N, 3).

    ``compiled``: contract the taps in :func:`engine.solver.kernels.evaluate_taps` (None: on the CPU;
    torch's three einsums over (N, 3, 3, 3) took most of the registration's evaluations) or in torch.
    """
    assert level.coeffs is not None
    values = torch.zeros(x.shape[0], dtype=level.coeffs.dtype, device=x.device)
    grads = torch.zeros(x.shape[0], 3, dtype=level.coeffs.dtype, device=x.device) if with_grad else None
    fast = compiled_on(x.device, compiled) and level.coeffs.dtype == torch.float32
    if fast:
        from . import kernels
    for start in range(0, x.shape[0], BATCH):
        cell, u = split_points(x[start:start + BATCH] / level.size)
        a = level.tap_coeffs(cell, compiled)
        if fast:
            on_rows(kernels.evaluate_taps, a.contiguous().numpy(), u.to(torch.float32).contiguous().numpy(),
                    1.0 / level.size, values[start:start + BATCH].numpy(),
                    grads[start:start + BATCH].numpy() if grads is not None else np.zeros((0, 3), np.float32))
            continue
        v, g = contract(a, u, level.size, with_grad)
        values[start:start + BATCH] = v
        if grads is not None and g is not None:
            grads[start:start + BATCH] = g
    return values, grads


def evaluate(levels: list[Level], x: torch.Tensor, with_grad: bool = False, compiled: bool | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The summed field of all solved levels at x (N, 3) finest units (``compiled``: :func:`evaluate_level`)."""
    values = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    grads = torch.zeros(x.shape[0], 3, dtype=x.dtype, device=x.device) if with_grad else None
    for level in levels:
        if level.coeffs is None:
            continue
        v, g = evaluate_level(level, x, with_grad, compiled)
        values += v
        if grads is not None and g is not None:
            grads += g
    return values, grads


def lattice_points(cells: torch.Tensor, size: float, n: int) -> torch.Tensor:
    """(P * n^3, 3) the points of :func:`evaluate_grid`'s lattices, cell by cell, [z, y, x] order within each.

    Whole lattice coordinates times one factor, so a point shared by two cells' lattices is the same float.
    """
    k = torch.arange(n, device=cells.device)
    offsets = torch.stack(torch.meshgrid(k, k, k, indexing="ij"), -1)[..., [2, 1, 0]].reshape(-1, 3)
    return ((cells[:, None, :] * (n - 1) + offsets).to(torch.float32) * (size / (n - 1))).reshape(-1, 3)


def evaluate_grid(levels: list[Level], cells: torch.Tensor, size: float, n: int, compiled: bool | None = None
                  ) -> torch.Tensor:
    """The summed field on an n x n x n lattice over each cell (P, 3) of edge ``size`` <= 1 finest voxel.

    Returns (P, n, n, n) values indexed [cell, z, y, x], at ``cells * size + size * k / (n - 1)``
    (:func:`lattice_points`).
    A cell no larger than the finest voxel lies in one cell of every level, so each level's 27
    coefficients are gathered once per cell and contracted with the per-axis weights of the n
    positions: n^3 values for one lookup, where :func:`evaluate` looks up every point (meshing's
    corners, issue 12).  Equal to :func:`evaluate` at those points up to float rounding: the
    upper lattice points sit on the cell's far faces, where the next cell's polynomial agrees
    (the basis is C1).  ``compiled``: contract in :func:`engine.solver.kernels.add_grid` (None: on the
    CPU) or with torch's einsums.
    """
    if size > 1.0:
        raise ValueError(f"evaluate_grid needs cells of at most one finest voxel, got {size}")
    out = torch.zeros(cells.shape[0], n, n, n, dtype=torch.float32, device=cells.device)
    steps = torch.arange(n, dtype=torch.float32, device=cells.device) * (size / (n - 1))
    fast = compiled_on(cells.device, compiled)
    if fast:
        from . import kernels
    for level in levels:
        if level.coeffs is None:
            continue
        for start in range(0, cells.shape[0], BATCH):
            origin = cells[start:start + BATCH].to(torch.float32) * size  # finest-voxel units
            cell = torch.floor(origin / level.size)
            u = (origin[:, :, None] + steps) / level.size - cell[:, :, None] - 0.5  # (B, 3 axes, n)
            a = level.tap_coeffs(cell.to(torch.int64), compiled)
            if fast and a.dtype == torch.float32:
                on_rows(kernels.add_grid, a.contiguous().numpy(), u.contiguous().numpy(),
                        out[start:start + BATCH].numpy())
                continue
            w, _ = weights_1d(u.reshape(-1, n))  # rows: (cell, axis), then (n, 3 taps)
            w = w.view(-1, 3, n, 3)
            a = a.view(-1, 3, 3, 3)  # [z, y, x] taps
            t = torch.einsum("pzyx,pix->pzyi", a, w[:, 0])
            t = torch.einsum("pzyi,pjy->pzji", t, w[:, 1])
            out[start:start + BATCH] += torch.einsum("pzji,pkz->pkji", t, w[:, 2])
    return out
