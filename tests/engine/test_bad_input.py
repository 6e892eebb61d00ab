"""Bad input gets a typed error that names the problem and the fix, never a crash or a hang."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from engine import reconstruct
from engine.errors import (
    DegenerateInputError,
    InputError,
    MemoryLimitError,
    NoSurfaceError,
    ShapeMismatchError,
    TooFewPointsError,
)
from engine.solver.resolution import VOLUME_VARIATION, surface_variation
from tests import shapes

P, N = shapes.sphere(3000)


def expect(error: type[InputError], match: str, *args: object, **kwargs: object) -> InputError:
    with pytest.raises(error, match=match) as info:
        reconstruct(*args, **kwargs)  # type: ignore[arg-type]
    assert info.value.hint, "every input error carries a hint for the user"
    return info.value


def test_empty() -> None:
    expect(TooFewPointsError, "empty", np.zeros((0, 3)), np.zeros((0, 3)))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_one_to_three_points(n: int) -> None:
    expect(TooFewPointsError, f"{n} usable points", P[:n], N[:n])


def test_collinear() -> None:
    t = np.linspace(0, 1, 100)[:, None]
    expect(DegenerateInputError, "straight line", t * [1.0, 2.0, 3.0], np.tile([0.0, 0.0, 1.0], (100, 1)))


def test_coplanar() -> None:
    rng = np.random.default_rng(1)
    p = np.c_[rng.uniform(size=(500, 2)), np.full(500, 4.0)]
    expect(DegenerateInputError, "one plane", p, np.tile([0.0, 0.0, 1.0], (500, 1)))


def test_a_cloud_of_stray_points_is_no_surface() -> None:
    """Uniform noise in a box (a scan that is all outliers) gets "no surface found", not a mesh of blobs."""
    box = np.random.default_rng(5).uniform(-1.0, 1.0, (20_000, 3))
    error = expect(NoSurfaceError, "No surface found", box)
    assert "--voxel-size" in error.hint
    mesh = reconstruct(box[:3000], voxel_size=0.4, mise_iter=0)  # the stated way to go on anyway
    assert mesh.faces.shape[0] > 0


@pytest.mark.parametrize("make", [shapes.sphere, shapes.torus, shapes.terrain])
def test_noisy_surfaces_are_still_surfaces(make: Callable[..., tuple[np.ndarray, np.ndarray]]) -> None:
    """Gaussian noise of 2% of the diagonal, twice the benchmark's worst, keeps a margin below the volume bound."""
    p = make(30_000)[0]
    diagonal = float(np.linalg.norm(p.max(axis=0) - p.min(axis=0)))
    noisy = p + np.random.default_rng(6).normal(scale=0.02 * diagonal, size=p.shape)
    assert surface_variation(noisy) < 0.75 * VOLUME_VARIATION


GEO = np.array([1e6, 2e6, 3e6])  # georeferenced coordinates: float32 steps there are 0.0625, 0.125 and 0.25


def thin_pipe(n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """A 5 m pipe of 2 cm radius along x at GEO (float64 points, outward normals)."""
    rng = np.random.default_rng(2)
    t, a = rng.uniform(0, 5, n), rng.uniform(0, 2 * np.pi, n)
    normals = np.c_[np.zeros(n), np.cos(a), np.sin(a)]
    return GEO + np.c_[t, 0.02 * normals[:, 1], 0.02 * normals[:, 2]], normals


def test_float32_rounding_is_named_rather_than_a_straight_line() -> None:
    p, n = thin_pipe()
    error = expect(DegenerateInputError, "3e.06, where float32 precision can only tell positions 0.25 apart",
                   p.astype(np.float32), n)  # every ring collapses onto the pipe's axis
    assert "straight line" in error.message and "double-precision" in error.hint and "offset" in error.hint
    roof = GEO + np.c_[np.random.default_rng(3).uniform(0, 5, (2000, 2)), 0.03 * np.random.default_rng(4).random(2000)]
    expect(DegenerateInputError, "one plane, but only because its coordinates are float32",
           roof.astype(np.float32), np.tile([0.0, 0.0, 1.0], (2000, 1)))


def test_nan_and_inf_rows_are_dropped_and_counted() -> None:
    p = P.copy()
    p[:10] = np.nan
    p[10:15, 1] = np.inf
    mesh = reconstruct(p, N, device="cpu")
    assert mesh.stats["points_dropped"] == 15
    assert mesh.stats["points_used"] == len(P) - 15
    assert np.isfinite(mesh.vertices).all()


def test_all_nan() -> None:
    err = expect(TooFewPointsError, "NaN/Inf", np.full((50, 3), np.nan), N[:50])
    assert "50 of them" in err.message


def test_zero_normals_rows_are_dropped_and_counted() -> None:
    """Some zero (or NaN) normals: those rows are dropped; all of them zero means "no normals" (estimated)."""
    n = N.copy()
    n[:20] = 0.0
    n[20:25, 2] = np.nan
    mesh = reconstruct(P, n, device="cpu")
    assert mesh.stats["points_dropped"] == 25 and not mesh.stats["normals_estimated"]
    err = expect(TooFewPointsError, "zero-length normals", P[:100], np.r_[np.zeros((95, 3)), N[:5]])
    assert "NaN/Inf" in err.hint


def test_missing_normals_are_estimated() -> None:
    mesh = reconstruct(P, None, device="cpu")
    assert mesh.stats["normals_estimated"] and mesh.stats["normals_source"] == "missing"
    assert mesh.stats["normals_orientation"] == "propagation" and mesh.stats["normal_k"] == 12


def test_mismatched_lengths() -> None:
    expect(ShapeMismatchError, "normals has 2999 rows but points has 3000", P, N[:-1])
    expect(ShapeMismatchError, "colors has 10 rows", P, N, np.zeros((10, 3)))


def test_wrong_shape() -> None:
    expect(ShapeMismatchError, r"shape \(N, 3\)", P[:, :2], N)
    expect(InputError, "numeric", np.array([["a", "b", "c"]] * 20), N[:20])


def test_voxel_size_over_memory_cap() -> None:
    p, n = shapes.sphere(100_000)
    err = expect(MemoryLimitError, "GiB, more than the limit of 1.0 GiB", p, n, voxel_size=0.002, memory_limit_gb=1.0,
                 auto_chunk=False)
    assert "chunk" in err.hint and "voxel size" in err.hint


def test_memory_cap_below_what_the_engine_itself_needs() -> None:
    err = expect(MemoryLimitError, "more than the limit of 0.1 GiB allows", P, N, voxel_size=0.002,
                 memory_limit_gb=0.1)
    assert "Raise the memory limit" in err.hint


def test_memory_estimate_is_not_below_the_real_size() -> None:
    import torch

    from engine.large.memory import estimate_unknowns
    from engine.solver.hierarchy import build_levels

    for count, voxel in [(20_000, 0.05), (20_000, 0.01), (3000, 0.002)]:
        p, _ = shapes.sphere(count)
        x = torch.from_numpy(p).float()
        real = sum(len(level) for level in build_levels(x / voxel, 4))
        assert real <= estimate_unknowns(x, voxel, 4) <= 2.5 * real, (count, voxel)


def test_voxel_size_absurdly_small() -> None:
    expect(MemoryLimitError, "voxels along", P, N, voxel_size=1e-9)


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan")])
def test_bad_voxel_size(bad: float) -> None:
    expect(InputError, "'voxel_size' must be a number above 0", P, N, voxel_size=bad)


@pytest.mark.parametrize("bad", [1.5, -0.1, "fine"])
def test_bad_detail(bad: object) -> None:
    expect(InputError, "detail_level", P, N, detail_level=bad)


def test_unknown_device() -> None:
    expect(InputError, "'device' must be 'auto', 'cpu', 'cuda' or 'cuda:N'", P, N, device="tpu")
