"""Real scans (tests/data/real, see its README) reconstruct with default settings within stated bounds.

Neither scan has ground truth, so each test judges what holds on any scan:
time and peak memory of the engine's own process, every piece of the mesh
supported by enough input points, every face within the engine's trim distance
of the points (with the measured noise a small part of it), and, on the stereo
table scene, the table top as one piece.  The bounds are stated below with what
they were measured at.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from engine.formats import read_cloud
from engine.surface.trimming import trim_distance
from tests.meshfiles import read_mesh

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "real"
MIN_SUPPORT = 50  # input points within one voxel of a piece: the engine's fragment rule, checked independently
# No vertex farther from every point than this many times the trim distance (1.5 voxels + 2 noise, of the voxel
# and noise the run reports): the collapse may move a vertex a little past it.  The furthest vertex, measured at
# 9a916ec (the collapse at 0.035 voxel): 1.00x (table), 1.09x (LiDAR tile); at 48e79df 1.00x and 1.05x.
MAX_TRIM_MULTIPLE = 1.2


@dataclass(frozen=True)
class RealScan:
    """A scan, the flags a user would give, and its bounds (seconds and GiB of the engine's process)."""

    file: str
    flags: tuple[str, ...]
    max_seconds: float
    max_gib: float


# Measured on the development machine (2 cores, 24 GB, other work running), 2026-12-01:
# table 210 s / 1.9 GiB before the robust defaults; autzen 93 s / 1.5 GiB.  Bounds leave 2x for slower CI runs.
SCANS = {
    # The stereo camera sits at the origin; PCL writes that as its default VIEWPOINT, which says nothing,
    # so the user gives it (README: "Sensor positions").
    "table": RealScan("table_scene_mug_stereo_textured.pcd", ("--sensor", "0", "0", "0"), 480.0, 4.0),
    "autzen": RealScan("autzen_trim.laz", (), 300.0, 4.0),
}


@dataclass
class Run:
    stats: dict
    seconds: float
    peak_gib: float
    vertices: np.ndarray
    faces: np.ndarray
    points: np.ndarray


@pytest.fixture(scope="module", params=sorted(SCANS))
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[RealScan, Run]:
    """The CLI on one scan with default settings: its stats, wall time, peak memory, mesh and input points."""
    scan = SCANS[request.param]  # indirect parametrisation (one test takes the table only) passes the name too
    folder = tmp_path_factory.mktemp(request.param)
    src, out = DATA / scan.file, folder / "mesh.ply"
    with open(folder / "stdout", "w") as fo, open(folder / "stderr", "w") as fe:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "engine", "reconstruct", str(src), str(out), "--json",
                                 *scan.flags], cwd=ROOT, stdout=fo, stderr=fe)
        watchdog = threading.Timer(1800, proc.kill)  # a hung engine fails the test instead of CI
        watchdog.start()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak resident memory (KiB)
        watchdog.cancel()
        seconds = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, (folder / "stderr").read_text()[-3000:]
    stats = json.loads((folder / "stdout").read_text().strip().splitlines()[-1])
    verts, faces = read_mesh(out)
    pts = read_cloud(src).points
    return scan, Run(stats, seconds, usage.ru_maxrss / 2**20, verts.astype(np.float64), faces,
                     pts[np.isfinite(pts).all(axis=1)])


def face_pieces(n_vertices: int, faces: np.ndarray) -> np.ndarray:
    """The connected piece of each face (faces sharing a vertex are connected)."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_vertices, n_vertices))
    return connected_components(graph, directed=False)[1][faces[:, 0]]


def test_time_and_memory_within_bounds(run: tuple[RealScan, Run]) -> None:
    scan, r = run
    assert r.seconds <= scan.max_seconds, f"{scan.file}: {r.seconds:.0f} s"
    assert r.peak_gib <= scan.max_gib, f"{scan.file}: {r.peak_gib:.2f} GiB"
    assert r.stats["faces"] == len(r.faces) > 10_000


def test_every_piece_is_supported_by_the_points(run: tuple[RealScan, Run]) -> None:
    """No piece of the mesh stands on fewer than MIN_SUPPORT points within a voxel of its vertices."""
    scan, r = run
    pieces = face_pieces(len(r.vertices), r.faces)
    vertex_piece = np.full(len(r.vertices), -1)
    vertex_piece[r.faces.reshape(-1)] = np.repeat(pieces, 3)
    dist, nearest = cKDTree(r.vertices).query(r.points, distance_upper_bound=r.stats["voxel_size"])
    near = np.isfinite(dist)
    support = np.bincount(vertex_piece[nearest[near]], minlength=pieces.max() + 1)[np.unique(pieces)]
    assert support.min() >= MIN_SUPPORT, f"{scan.file}: {(support < MIN_SUPPORT).sum()} pieces under {MIN_SUPPORT}"
    assert r.stats["pieces"] == len(support)


def test_every_vertex_lies_near_the_points(run: tuple[RealScan, Run]) -> None:
    """The mesh stays within the trim distance of the input (no blobs, no balloons), checked independently."""
    scan, r = run
    dist, _ = cKDTree(r.points).query(r.vertices)
    # Noise well under the voxel (measured 0.19 and 0.03 voxels), so that a misread noise cannot widen the bound.
    assert r.stats["noise"] < 0.5 * r.stats["voxel_size"], f"{scan.file}: noise {r.stats['noise']:.3g}"
    trim = trim_distance(r.stats["voxel_size"], r.stats["noise"])
    worst = float(dist.max()) / trim
    assert worst <= MAX_TRIM_MULTIPLE, f"{scan.file}: a vertex {worst:.2f} trim distances from every point"


def table_top_shares(r: Run) -> np.ndarray:
    """The table-top area (faces on the points' dominant plane, facing along it) in each piece, largest first."""
    normal, point = dominant_plane(r.points, tolerance=0.005)
    tri = r.vertices[r.faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = np.linalg.norm(cross, axis=1) / 2
    facing = np.abs(cross @ normal) > 0.9 * 2 * np.maximum(area, 1e-30)
    on_plane = facing & (np.abs((tri.mean(axis=1) - point) @ normal) < 0.005)
    assert on_plane.sum() > 10_000
    pieces = face_pieces(len(r.vertices), r.faces)[on_plane]
    share = np.bincount(np.unique(pieces, return_inverse=True)[1], weights=area[on_plane])
    return np.sort(share / share.sum())[::-1]


@pytest.mark.parametrize("run", ["table"], indirect=True)
def test_the_table_top_is_not_torn(run: tuple[RealScan, Run]) -> None:
    """The table's plane (found in the points) is one piece but for islands the camera's dropouts cut off.

    Measured 2026-12-01: 99.5% of the table top's area in one piece; the rest is
    one island (0.5%) ringed by a stereo dropout about 6 voxels wide.
    """
    shares = table_top_shares(run[1])
    assert shares[0] >= 0.99, f"largest share of the table top {shares[0]:.4f}"
    assert len(shares) <= 3, f"the table top in {len(shares)} pieces"


@pytest.mark.xfail(strict=True, reason="the real-scans issue's goal, not met: a stereo dropout ring about 6 voxels "
                                       "wide cuts one island (0.5% of the area) off the table top")
@pytest.mark.parametrize("run", ["table"], indirect=True)
def test_the_table_top_is_one_piece(run: tuple[RealScan, Run]) -> None:
    assert len(table_top_shares(run[1])) == 1


def dominant_plane(points: np.ndarray, tolerance: float, tries: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """The plane through most points (RANSAC, fixed seed): unit normal and a point on it."""
    rng = np.random.default_rng(0)
    best, plane = -1, (np.zeros(3), np.zeros(3))
    for _ in range(tries):
        a, b, c = points[rng.choice(len(points), 3, replace=False)]
        n = np.cross(b - a, c - a)
        if np.linalg.norm(n) == 0:
            continue
        n = n / np.linalg.norm(n)
        count = int((np.abs((points - a) @ n) < tolerance).sum())
        if count > best:
            best, plane = count, (n, a)
    return plane
