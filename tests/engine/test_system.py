"""The moment-based CSR assembly equals the energy assembled point by point (dense, brute force),
and the restructured assembly equals the straightforward one (tests/engine/system_reference.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.solver import system
from engine.solver.basis import TAP_OFFSETS, split_points, tap_weights
from engine.solver.hierarchy import build_levels
from engine.solver.system import LevelSystem, Weights, _smoothness_terms, assemble
from tests import shapes
from tests.engine.system_reference import reference_assemble, reference_level

W = Weights(point=0.7, normal=1.3, smooth=0.2)


def brute_force(level, x: torch.Tensor, tv: torch.Tensor, tg: torch.Tensor,
                scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    m, n = len(level), x.shape[0]
    a = np.zeros((m, m))
    b = np.zeros(m)
    cell, u = split_points(x / level.size)
    w, g = tap_weights(u.double(), level.size)
    rows = level.taps(cell).numpy()
    for p in range(n):
        r, wp, gp = rows[p], w[p].numpy(), g[p].numpy()
        a[np.ix_(r, r)] += W.point / n * np.outer(wp, wp) + W.normal / n * gp @ gp.T
        b[r] += W.point / n * wp * float(tv[p]) + W.normal / n * gp @ tg[p].numpy()
    index = {tuple(v): i for i, v in enumerate(level.ijk.tolist())}
    for c, v in enumerate(level.ijk.tolist()):
        for taps, coeffs, weight, support in _smoothness_terms():
            if not all(tuple(np.add(v, o)) in index for o in support):
                continue
            r = [index[tuple(np.add(v, o))] for o in taps]
            s = 1.0 if scale is None else float(scale[c])  # the learned prior's factor of the term centred on v
            a[np.ix_(r, r)] += s * W.smooth / m * weight * np.outer(coeffs, coeffs)
    a[np.diag_indices(m)] += 1e-4 * np.diag(a).mean()
    return a, b


COMPILED = pytest.mark.parametrize("compiled", [True, False], ids=["numba", "torch"])


@COMPILED
@pytest.mark.parametrize("depth_index", [0, 1])
def test_csr_matches_brute_force(depth_index: int, compiled: bool) -> None:
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.uniform(0, 5, size=(40, 3))).float()
    level = build_levels(x, 2)[depth_index]
    tv = torch.from_numpy(rng.normal(size=40)).float()
    tg = torch.from_numpy(rng.normal(size=(40, 3))).float()
    system = assemble(level, x, tv, tg, W, compiled=compiled)
    a, b = brute_force(level, x, tv, tg)
    assert system.upper == compiled  # numba stores the upper triangle (the levels are in (z, y, x) order)
    dense = system.full().to_dense().double().numpy()
    assert np.abs(dense - dense.T).max() < 1e-6 * np.abs(a).max()
    assert np.abs(dense - a).max() < 1e-5 * np.abs(a).max()
    assert np.abs(system.rhs.double().numpy() - b).max() < 1e-5 * np.abs(b).max()
    assert np.allclose(system.diagonal.numpy(), np.diag(a), rtol=1e-5)
    assert np.linalg.eigvalsh(a).min() > 0  # positive definite


@COMPILED
def test_per_voxel_smoothness_matches_brute_force(compiled: bool) -> None:
    """The learned prior's factors weigh each second-difference term by the factor of the voxel it is centred on."""
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.uniform(0, 5, size=(40, 3))).float()
    level = build_levels(x, 2)[0]
    tv = torch.from_numpy(rng.normal(size=40)).float()
    tg = torch.from_numpy(rng.normal(size=(40, 3))).float()
    scale = rng.uniform(0.1, 30.0, size=len(level))
    system = assemble(level, x, tv, tg, W, smooth_scale=torch.from_numpy(scale).float(), compiled=compiled)
    a, _ = brute_force(level, x, tv, tg, scale)
    plain, _ = brute_force(level, x, tv, tg)
    dense = system.full().to_dense().double().numpy()
    assert np.abs(dense - a).max() < 1e-5 * np.abs(a).max()
    assert np.abs(a - plain).max() > 1e-2 * np.abs(a).max()  # the factors changed the matrix
    ones = assemble(level, x, tv, tg, W, smooth_scale=torch.ones(len(level)), compiled=compiled)
    assert torch.equal(ones.matrix.to_dense(), assemble(level, x, tv, tg, W, compiled=compiled).matrix.to_dense())


def test_every_point_has_all_its_taps() -> None:
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.normal(size=(500, 3)) * 6).float()
    for level in build_levels(x, 3):
        cell, _ = split_points(x / level.size)
        assert (level.taps(cell) >= 0).all()
        assert (level.index.lookup(cell[:, None, :] + torch.from_numpy(TAP_OFFSETS)) >= 0).all()


SHAPES = {"sphere": shapes.sphere, "torus": shapes.torus, "box": shapes.box}


def _scan(shape: str, n: int = 3000, scale: float = 14.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points of a test shape in finest-voxel units (about 2 * scale voxels across) and random targets."""
    points, _ = SHAPES[shape](n, seed=5)
    rng = np.random.default_rng(6)
    x = torch.from_numpy(points * scale + 0.37).float()  # off the voxel grid's symmetry planes
    return x, torch.from_numpy(rng.normal(size=n)).float(), torch.from_numpy(rng.normal(size=(n, 3))).float()


def upper_part(matrix: torch.Tensor) -> torch.Tensor:
    """The entries of a CSR matrix on and above its diagonal, as CSR (int32 indices)."""
    crow, cols, vals = matrix.crow_indices().numpy(), matrix.col_indices().numpy(), matrix.values()
    rows = np.repeat(np.arange(crow.size - 1), np.diff(crow))
    keep = cols >= rows
    starts = np.zeros(crow.size, np.int32)
    np.cumsum(np.bincount(rows[keep], minlength=crow.size - 1), out=starts[1:])
    return torch.sparse_csr_tensor(torch.from_numpy(starts), torch.from_numpy(cols[keep]),
                                   vals[torch.from_numpy(keep)], size=matrix.shape, check_invariants=False)


def _assert_same_system(system: LevelSystem, ref: LevelSystem) -> None:
    """Same sparsity pattern (the reference's upper triangle where the system stores only that), values within
    1e-5 of the largest entry, same rhs and diagonal."""
    ref_matrix = upper_part(ref.matrix) if system.upper else ref.matrix
    assert torch.equal(system.matrix.crow_indices(), ref_matrix.crow_indices())
    assert torch.equal(system.matrix.col_indices(), ref_matrix.col_indices())
    scale = float(ref_matrix.values().abs().max())
    assert float((system.matrix.values() - ref_matrix.values()).abs().max()) <= 1e-5 * scale
    assert float((system.rhs - ref.rhs).abs().max()) <= 1e-6 * float(ref.rhs.abs().max())
    assert float((system.diagonal - ref.diagonal).abs().max()) <= 1e-5 * float(ref.diagonal.abs().max())


@COMPILED
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("bridge", [True, False])
def test_assembly_equals_the_reference(shape: str, depth: int, bridge: bool, compiled: bool) -> None:
    """Both assemblies (numba straight into CSR, and torch through the stencil) build the matrix, rhs and
    diagonal of the straightforward one, level by level; with the coarse levels' bridging ring and without
    (their smoothness then averaged over the count they would have with it)."""
    x, tv, tg = _scan(shape)
    for level in build_levels(x, depth, bridge):
        _assert_same_system(assemble(level, x, tv, tg, W, compiled=compiled), reference_assemble(level, x, tv, tg, W))


@COMPILED
def test_voxels_out_of_order_get_the_whole_matrix(compiled: bool) -> None:
    """Where a level's voxels are not in (z, y, x) order (watertight mode adds some at the end), a row's columns
    no longer increase with the offset, so the numba assembly stores the whole matrix, as torch's: the
    reference's; in order it stores the upper triangle, whose completion by its mirror is the reference's
    matrix (the reference also holds a few zeros that the mirror has not: entries joined through a voxel one
    way only)."""
    from engine.solver.hierarchy import Level
    from engine.solver.voxels import VoxelIndex

    x, tv, tg = _scan("torus")
    level = build_levels(x, 2)[0]
    assert system.in_scan_order(level.ijk)
    ref = reference_assemble(level, x, tv, tg, W)
    ordered = assemble(level, x, tv, tg, W, compiled=compiled)
    assert ordered.upper == compiled
    if compiled:
        crow, cols = ordered.matrix.crow_indices().numpy(), ordered.matrix.col_indices().numpy()
        assert (cols[crow[:-1]] == np.arange(len(level))).all()  # each row starts at its own column
        difference = (ordered.full().to_sparse_coo() - ref.matrix.to_sparse_coo()).coalesce().values()
        assert float(difference.abs().max()) <= 1e-5 * float(ref.matrix.values().abs().max())
    perm = torch.randperm(len(level), generator=torch.Generator().manual_seed(3))
    shuffled = Level(depth=level.depth, size=level.size, index=VoxelIndex(level.ijk[perm]))
    assert not system.in_scan_order(shuffled.ijk)
    assert not system.in_scan_order(level.ijk[[0, 1, 1, 2]]) and system.in_scan_order(level.ijk[:1])  # a voxel twice
    got = assemble(shuffled, x, tv, tg, W, compiled=compiled)
    assert not got.upper
    _assert_same_system(got, reference_assemble(shuffled, x, tv, tg, W))


def test_compiled_assembly_equals_torch_with_trust_and_factors() -> None:
    """The per-point trust and the per-voxel smoothness factors enter the numba assembly as they enter torch's."""
    x, tv, tg = _scan("torus")
    rng = np.random.default_rng(8)
    trust = torch.from_numpy(rng.uniform(0.2, 1.8, size=x.shape[0])).float()
    for level in build_levels(x, 2):
        scale = torch.from_numpy(rng.uniform(0.1, 30.0, size=len(level))).float()
        got = assemble(level, x, tv, tg, W, trust=trust, smooth_scale=scale, compiled=True)
        _assert_same_system(got, assemble(level, x, tv, tg, W, trust=trust, smooth_scale=scale, compiled=False))
        plain = assemble(level, x, tv, tg, W, compiled=True)
        assert float((got.matrix.values() - plain.matrix.values()).abs().max()) > 1e-3 * float(
            plain.matrix.values().abs().max())  # trust and factors changed the matrix


def test_large_level_path_equals_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Levels too large for one pass are compacted in row chunks, counted then filled: the same matrix."""
    x, tv, tg = _scan("torus")
    level = build_levels(x, 2)[0]
    monkeypatch.setattr(system, "KEEP_NONZEROS", 0)
    monkeypatch.setattr(system, "ROW_BATCH", 97)  # many chunks, none aligned with anything
    assert len(level) > 10 * system.ROW_BATCH
    _assert_same_system(assemble(level, x, tv, tg, W, compiled=False), reference_assemble(level, x, tv, tg, W))


def test_neighbour_table_equals_27_lookups() -> None:
    """The table built from half the lookups (and their mirrors) is the table of all 27 lookups."""
    x, _, _ = _scan("box")
    for level in build_levels(x, 3):
        assert torch.equal(level.neighbours, reference_level(level).neighbours)
        assert (level.neighbours >= 0).float().mean() < 0.95  # the shell has absent neighbours to get right


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_assembly_equals_the_reference() -> None:
    """The torch path is the CUDA path: on a GPU it builds the CPU reference's system."""
    x, tv, tg = _scan("torus")
    gpu = torch.device("cuda")
    for level, level_gpu in zip(build_levels(x, 2), build_levels(x.to(gpu), 2), strict=True):
        got = assemble(level_gpu, x.to(gpu), tv.to(gpu), tg.to(gpu), W)
        _assert_same_system(LevelSystem(got.matrix.cpu(), got.rhs.cpu(), got.diagonal.cpu()),
                            reference_assemble(level, x, tv, tg, W))


def test_row_counts_from_presence_bits_equal_the_column_table() -> None:
    """The large-level path counts each row's non-zeros from neighbour-presence bits; the (rows, 125) table agrees."""
    x, _, _ = _scan("box")
    for level in build_levels(x, 2):
        columns = system._csr_columns(level)
        counts = system._row_counts(level.neighbours, system._presence_bits(level.neighbours), 0, len(level))
        assert torch.equal(counts, (columns >= 0).sum(dim=1))
        assert 0 < int(counts.min()) < int(counts.max()) <= 125  # rows at the shell's edge miss more offsets


# A fresh interpreter's prelude: the kernel modules, and ``kernels()``, each compiled kernel as (module, name, kernel).
_KERNELS = ("import sys, numpy as np; from engine.solver import kernels as a, sweeps as d; "
            "from engine.surface import kernels as b, quadrics as c; from numba.core.registry import CPUDispatcher; "
            "kernels = lambda: [(m.__name__, n, f) for m in (a, b, c, d) for n, f in vars(m).items() "
            "if isinstance(f, CPUDispatcher)]; ")


def _in_fresh_python(script: str) -> None:
    """Run ``script`` in a fresh interpreter at the repository's root; it prints what is wrong and exits 1."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, (done.stdout, done.stderr[-3000:])


def test_warm_loads_every_kernel() -> None:
    """The background warm-up (:mod:`engine.warm`) loads every compiled kernel of the solver (assembly and
    sweeps), of meshing and of the collapse, on inputs whose arrays are large enough for what each kernel
    writes (a fresh process: a bad call would crash it, and a failure would pass silently in the warm-up
    itself).  Private kernels (``_name``) are called from the others only and compiled into them."""
    _in_fresh_python(_KERNELS + "a.warm(); b.warm(); c.warm(); d.warm(); "
                     "cold = [n for _, n, f in kernels() if not f.signatures and not n.startswith('_')]; "
                     "print(cold); sys.exit(1 if cold else 0)")


def test_a_run_calls_only_the_warmed_signatures() -> None:
    """Every kernel signature a reconstruction calls is one the warm-up loaded: a call with other argument types
    (a strided column view, another dtype) loads or compiles a second signature during the run itself, in every
    fresh process.  Checked on a two-view scan with normals (registration, assembly, solve, meshing, collapse) and
    without (normal estimation), in a fresh process."""
    _in_fresh_python(_KERNELS + "import engine.warm as w; w.warm_kernels(); w.await_kernels(); "
                     "from engine import reconstruct; "
                     "sigs = lambda: {(m, n): len(f.signatures) for m, n, f in kernels()}; before = sigs(); "
                     "rng = np.random.default_rng(0); p = rng.normal(size=(20000, 3)); "
                     "p /= np.linalg.norm(p, axis=1, keepdims=True); "
                     "s = np.where(p[:, :1] > 0, [[3.0, 0, 0]], [[-3.0, 0, 0]]); "
                     "reconstruct(p, p.copy(), sensor=s, device='cpu'); reconstruct(p, None, sensor=s, device='cpu'); "
                     "after = sigs(); new = [k for k in after if after[k] != before[k]]; "
                     "print(new); sys.exit(1 if new else 0)")


def test_engine_asks_torch_for_huge_pages_unless_told_otherwise() -> None:
    """Importing the engine, before torch, sets torch's THP_MEM_ALLOC_ENABLE, so that its large blocks are
    advised as transparent huge pages (a fresh process: the allocator reads it once); a user's own value stands.
    Where the kernel gives huge pages on advice (``madvise`` or ``always``), a 256 MB tensor gets them."""
    import os
    import subprocess
    import sys

    script = ("import os, re, engine, torch; t = torch.ones(64 << 20); p = '/proc/self/smaps_rollup'; "
              "print(os.environ['THP_MEM_ALLOC_ENABLE'], "
              "re.search(r'AnonHugePages:\\s+(\\d+)', open(p).read()).group(1) if os.path.exists(p) else 0)")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    root = Path(__file__).resolve().parents[2]
    runs = {}
    for setting in (None, "0"):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=root,
                              env=env if setting is None else {**env, "THP_MEM_ALLOC_ENABLE": setting})
        assert done.returncode == 0, done.stderr
        runs[setting] = done.stdout.split()
    assert runs[None][0] == "1" and runs["0"][0] == "0"
    assert int(runs["0"][1]) < 64 << 10  # kB: torch's tensor is not on huge pages when the user says no
    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if mode.exists() and "[never]" not in mode.read_text():
        assert int(runs[None][1]) >= 128 << 10  # kB: most of the 256 MB


@pytest.mark.parametrize("threads", [2, 3])
def test_compiled_assembly_is_the_same_on_any_thread_count(threads: int) -> None:
    """The kernels' threads take disjoint rows or cells, each entry summed in the same order: the system is bit
    for bit the one-thread system (also on more threads than this machine's cores), over several batches of cells."""
    from engine.solver.voxels import unique_voxels

    x, tv, tg = _scan("torus", 40_000, 60.0)
    trust = torch.from_numpy(np.random.default_rng(2).uniform(0.5, 1.5, x.shape[0])).float()
    level = build_levels(x, 1)[0]
    assert unique_voxels(split_points(x)[0]).shape[0] > 2 * system.ASSEMBLY_BATCH
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = assemble(level, x, tv, tg, W, trust, compiled=True)
        torch.set_num_threads(threads)
        many = assemble(level, x, tv, tg, W, trust, compiled=True)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one.matrix.crow_indices(), many.matrix.crow_indices())
    assert torch.equal(one.matrix.col_indices(), many.matrix.col_indices())
    assert torch.equal(one.matrix.values(), many.matrix.values())
    assert torch.equal(one.rhs, many.rhs) and torch.equal(one.diagonal, many.diagonal)

