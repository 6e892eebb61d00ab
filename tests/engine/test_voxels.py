"""Sparse voxel lookup agrees with a plain Python set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.solver.voxels import VoxelIndex, dilate, unique_voxels


@pytest.mark.parametrize("spread", [6, 40, 300])
def test_lookup_matches_a_set(spread: int) -> None:
    rng = np.random.default_rng(spread)
    vox = unique_voxels(torch.from_numpy(rng.integers(-spread, spread, size=(2000, 3))))
    index = VoxelIndex(vox)
    queries = torch.from_numpy(rng.integers(-spread - 20, spread + 20, size=(20_000, 3)))
    queries = torch.cat([queries, vox[:500]])
    rows = index.lookup(queries)
    members = {tuple(v) for v in vox.tolist()}
    expected = np.array([tuple(q) in members for q in queries.tolist()])
    assert np.array_equal(rows.numpy() >= 0, expected)
    found = rows >= 0
    assert torch.equal(vox[rows[found]], queries[found])


def test_unique_and_dilate() -> None:
    vox = torch.tensor([[0, 0, 0], [0, 0, 0], [5, -3, 2]])
    u = unique_voxels(vox)
    assert u.shape == (2, 3)
    d = dilate(u, torch.tensor([[0, 0, 0], [1, 0, 0], [-1, 0, 0]]))
    assert {tuple(v) for v in d.tolist()} == {(0, 0, 0), (1, 0, 0), (-1, 0, 0), (5, -3, 2), (6, -3, 2), (4, -3, 2)}


def test_box_dilation_one_axis_at_a_time_equals_all_shifts() -> None:
    """A box of offsets goes one axis at a time; other offset sets all at once; both give the voxels (and order)
    of shifting by every offset."""
    rng = np.random.default_rng(4)
    vox = unique_voxels(torch.from_numpy(rng.integers(-30, 30, size=(2000, 3))))
    taps = torch.tensor([(x, y, z) for z in (-1, 0, 1) for y in (-1, 0, 1) for x in (-1, 0, 1)])
    cross = torch.tensor([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    flat = torch.tensor([[0, 0, 0], [0, 2, 0], [3, 0, 0], [3, 2, 0]])  # a 2 x 2 x 1 box, not unit steps
    for offsets in (taps, cross, flat, torch.tensor([[0, 0, 0]])):
        every = unique_voxels((vox[:, None, :] + offsets[None, :, :]).reshape(-1, 3))
        assert torch.equal(dilate(vox, offsets), every)
    assert dilate(vox, taps).shape[0] > 5 * vox.shape[0]


@pytest.mark.parametrize("bits", [True, False])
def test_bit_grid_dilation_equals_all_shifts(monkeypatch: pytest.MonkeyPatch, bits: bool) -> None:
    """Large sets are dilated on a bit grid (CPU): the voxels and order of shifting by every offset, for boxes of
    any steps and signs (shifts across the grid's 64-bit words and its edges), on sets spread wider than a word;
    a grid over its word budget falls back to the sort (``bits`` False: the budget is zero)."""
    import engine.solver.voxels as voxels

    monkeypatch.setattr(voxels, "BIT_DILATION_MIN", 1)
    if not bits:
        monkeypatch.setattr(voxels, "BIT_DILATION_WORDS", 0)
    calls: list[bool] = []
    real = voxels._dilate_bits
    monkeypatch.setattr(voxels, "_dilate_bits", lambda *a: calls.append(True) or real(*a))
    rng = np.random.default_rng(7)
    sets = [unique_voxels(torch.from_numpy(rng.integers(lo, hi, size=(n, 3))))
            for lo, hi, n in ((-30, 30, 3000), (-200, 150, 4000), (60, 64, 40))]
    taps = torch.tensor([(x, y, z) for z in (-1, 0, 1) for y in (-1, 0, 1) for x in (-1, 0, 1)])
    wide = torch.tensor([(x, y, z) for z in (0, 2) for y in (-3, 1) for x in (-63, -5, 0, 7, 63)])
    far = torch.tensor([[64, 0, 0], [0, 0, 0]])  # a shift of a whole word: the sort, on either setting
    for vox in sets:
        for offsets in (taps, wide, far):
            every = unique_voxels((vox[:, None, :] + offsets[None, :, :]).reshape(-1, 3))
            assert torch.equal(dilate(vox, offsets), every)
    assert len(calls) == 9
    assert (real(sets[0], [np.array([-1, 0, 1])] * 3) is not None) == bits
    assert real(sets[0], [np.array([0, 64])] * 3) is None


@pytest.mark.parametrize("spread", [6, 40, 300])
def test_neighbour_table_matches_lookups(spread: int) -> None:
    """The table (torch: read from rimmed brick blocks; compiled: looked up per voxel) equals 27 lookups per
    voxel, across brick and grid edges."""
    rng = np.random.default_rng(spread + 1)
    vox = unique_voxels(torch.from_numpy(rng.integers(-spread, spread, size=(3000, 3))))
    index = VoxelIndex(vox)
    steps = torch.tensor([(x, y, z) for z in (-1, 0, 1) for y in (-1, 0, 1) for x in (-1, 0, 1)])
    expected = index.lookup(vox[:, None, :] + steps).to(torch.int32)
    table = index.neighbour_table(batch=700, compiled=False)  # several batches
    assert torch.equal(table, expected)
    assert torch.equal(index.neighbour_table(compiled=True), expected)
    assert (expected >= 0).any() and (expected < 0).any()
