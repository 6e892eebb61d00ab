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


@pytest.mark.parametrize("bits", [True, False])
def test_bit_grid_unique_equals_the_sort(monkeypatch: pytest.MonkeyPatch, bits: bool) -> None:
    """Large sets are ranked on a bit grid (CPU, compiled): the rows, their order and each input row's place among
    them as the sort gives, for sets with repeats, negative coordinates, one row, and spread wider than a word; a
    set too sparse for its grid (or ``bits`` False: no grid allowed) takes the sort."""
    import engine.solver.voxels as voxels

    def by_sort(ijk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (ijk[:, 2] * 10_000 + ijk[:, 1]) * 10_000 + ijk[:, 0]  # (z, y, x) order; coordinates within +-5000
        ukey, inverse = torch.unique(key, return_inverse=True)
        return ijk[torch.zeros_like(ukey).scatter_(0, inverse, torch.arange(ijk.shape[0]))], inverse

    monkeypatch.setattr(voxels, "BIT_UNIQUE_MIN", 1)
    monkeypatch.setattr(voxels, "compiled_pays", lambda n: True)
    if not bits:
        monkeypatch.setattr(voxels, "BIT_UNIQUE_WORDS_PER_ROW", 0)
    taken: list[bool] = []
    real = voxels._unique_bits

    def spy(ijk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        done = real(ijk)
        taken.append(done is not None)
        return done

    monkeypatch.setattr(voxels, "_unique_bits", spy)
    rng = np.random.default_rng(11)
    sets = [rng.integers(lo, hi, size=(n, 3)) for lo, hi, n in ((-8, 8, 5000), (-200, 150, 30_000), (60, 64, 40))]
    sets += [np.array([[3, -4, 5]]), np.repeat(rng.integers(-3, 3, size=(50, 3)), 9, axis=0)]
    for a in sets:
        ijk = torch.from_numpy(a)
        unique, inverse = voxels.unique_voxels_inverse(ijk)
        expected, expected_inverse = by_sort(ijk)
        assert torch.equal(unique, expected) and torch.equal(inverse, expected_inverse)
        assert torch.equal(unique[inverse], ijk)
    # the second set, 30k rows over 350^3 cells (25 words a row), takes the sort either way
    assert taken == ([True, False, True, True, True] if bits else [False] * 5)
    sparse = torch.tensor([[0, 0, 0], [4000, 4000, 4000]])
    assert real(sparse) is None


def test_grouping_rows_equals_a_stable_argsort() -> None:
    from engine.solver import kernels

    rng = np.random.default_rng(2)
    for groups, n in ((1, 10), (7, 1000), (5000, 3000)):
        group = rng.integers(0, groups, size=n)
        start, order = np.empty(groups + 1, np.int64), np.empty(n, np.int64)
        kernels.group_rows(group, start, order)
        assert np.array_equal(order, np.argsort(group, kind="stable"))
        assert np.array_equal(start, np.concatenate(([0], np.cumsum(np.bincount(group, minlength=groups)))))
