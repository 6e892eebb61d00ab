"""Watertight mode: a scan with an unseen region becomes one closed, manifold, outward surface, near the truth."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from engine import options, reconstruct
from engine.errors import MemoryLimitError
from engine.options import OptionError, Options
from engine.surface.watertight import closed_piece
from tests import shapes
from tests.engine.test_cli import engine_cli, no_traceback
from tests.meshcheck import boundary_edges, components, edge_counts, inconsistent_edges, signed_volume

UNSEEN_BELOW = -0.7  # the scanner never sees the sphere's cap below this height (a hole 1.4 radii wide)


def underside_unseen_scan(n: int = 4000, strays: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A unit sphere scanned from the side and above: the cap below ``UNSEEN_BELOW`` has no points; a little depth
    noise, and a few stray points around it (each a fragment of its own)."""
    rng = np.random.default_rng(seed)
    p, n_ = shapes.sphere(n, seed=seed)
    keep = p[:, 2] > UNSEEN_BELOW
    p, n_ = p[keep] + rng.normal(scale=0.003, size=(int(keep.sum()), 3)), n_[keep]
    d, _ = shapes.sphere(strays, seed=seed + 1)
    return np.vstack([p, d * 1.4]), np.vstack([n_, d])


@pytest.fixture(scope="module")
def scanned() -> dict[str, object]:
    p, n = underside_unseen_scan()
    return {"default": reconstruct(p, n, device="cpu", mise_iter=0),
            "watertight": reconstruct(p, n, device="cpu", mise_iter=0, watertight=True)}


def test_the_default_leaves_the_unseen_region_open(scanned: dict) -> None:
    mesh = scanned["default"]
    assert boundary_edges(mesh.faces) > 0
    assert mesh.vertices64[:, 2].min() > UNSEEN_BELOW - 0.2, "trimmed near the data"


def test_watertight_is_one_closed_manifold_outward_piece(scanned: dict) -> None:
    mesh = scanned["watertight"]
    v, f = mesh.vertices64, mesh.faces
    assert components(len(v), f) == 1, "one piece: the stray points' blobs are dropped"
    # The strays go before the solve (the outlier test) or as pieces of their own after it.
    assert mesh.stats["outliers_removed"] + mesh.stats["watertight_pieces_dropped"] >= 12
    _, counts = edge_counts(f)
    assert (counts == 2).all(), "no boundary edges, every edge in exactly two faces"
    assert inconsistent_edges(f) == 0, "neighbouring faces wind the same way"
    assert signed_volume(v, f) > 0, "faces wind outward"


def test_watertight_closes_the_hole_without_ballooning(scanned: dict) -> None:
    """Stated bound: every vertex within 0.1 radii (about a voxel) of the true sphere, the volume within 3%."""
    mesh = scanned["watertight"]
    v, f = mesh.vertices64, mesh.faces
    assert np.abs(shapes.sphere_sdf(v)).max() < 0.1
    assert abs(signed_volume(v, f) / (4 / 3 * np.pi) - 1) < 0.03
    assert v[:, 2].min() < -0.95, "the unseen cap is covered"


def test_a_hole_left_in_the_largest_piece_is_closed_with_consistent_winding(scanned: dict) -> None:
    """The last safeguard: a boundary loop (here, the faces around one vertex taken out) is closed by a fan."""
    mesh = scanned["watertight"]
    v, f = mesh.vertices64, mesh.faces
    open_f = f[~(f == f[0, 0]).any(axis=1)]
    assert boundary_edges(open_f) > 0
    cv, cf, done = closed_piece(v, open_f, v, 0.01)
    assert done["watertight_holes_filled"] == 1
    _, counts = edge_counts(cf)
    assert (counts == 2).all() and inconsistent_edges(cf) == 0
    assert signed_volume(cv, cf) == pytest.approx(signed_volume(v, f), rel=1e-3)


def test_the_piece_the_points_lie_on_is_kept_not_the_largest(scanned: dict) -> None:
    """A large closed shell that no point supports (the field dipping below zero again near the domain's edge,
    as it did around the bunny's scan) loses to the smaller surface the points lie on."""
    mesh = scanned["watertight"]
    v, f = mesh.vertices64, mesh.faces
    shell_v, shell_f = 3.0 * v, f + v.shape[0]
    both_v, both_f = np.concatenate([v, shell_v]), np.concatenate([f, shell_f])
    kept_v, kept_f, done = closed_piece(both_v, both_f, v[::7], 0.01)
    assert done["watertight_pieces_dropped"] == 1
    assert kept_f.shape == f.shape and np.abs(kept_v).max() < 1.5


def test_option_is_checked_and_flagged() -> None:
    assert Options.of().watertight is False
    assert Options.of(watertight=True).watertight is True
    with pytest.raises(OptionError, match="'watertight' must be true or false"):
        Options.of(watertight=1)
    with pytest.raises(OptionError, match="'watertight' cannot be combined with 'chunk_size'") as info:
        Options.of(watertight=True, chunk_size=2.0)
    assert "Leave chunk_size unset" in info.value.hint
    p = argparse.ArgumentParser()
    options.add_flags(p)
    assert options.from_flags(p.parse_args(["--watertight"])).watertight is True
    assert options.from_flags(p.parse_args([])).watertight is False


def test_cli_refuses_watertight_with_a_chunk_size_before_reading(tmp_path: Path) -> None:
    out = tmp_path / "out.ply"
    no_traceback(engine_cli("reconstruct", str(tmp_path / "not-there.ply"), str(out), "--watertight",
                            "--chunk-size", "1"), "'watertight' cannot be combined with 'chunk_size'")
    assert not out.exists()


def test_automatic_chunking_does_not_drop_watertight() -> None:
    """Over the memory limit the scene would be chunked (as tests/engine/test_chunks.py's auto-chunk test shows for
    this scene and limit): watertight is refused before the solve, not silently lost."""
    p, n, c = shapes.city(200_000, size=60.0)
    stages: set[str] = set()
    with pytest.raises(MemoryLimitError, match="Watertight mode needs the scene solved in one piece") as info:
        reconstruct(p, n, c, device="cpu", memory_limit_gb=0.8, watertight=True,
                    progress=lambda stage, fraction, text: stages.add(stage))
    assert "would be split into chunks" in info.value.message
    assert "Raise the memory limit" in info.value.hint
    assert not stages & {"hierarchy", "system", "solve", "chunks"}, f"refused before the solve, not after {stages}"
