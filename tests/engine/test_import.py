"""The engine's ``read`` request (the add-on's *Import > Point Cloud*): a real engine process reads real files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData

from engine import formats
from engine.importing import check_import_options, import_offset, voxel_rows
from engine.options import OptionError
from engine.service.client import EngineClient, InvalidRequest, RemoteError
from tests import shapes
from tests.engine.engines import ENV, PYTHON
from tests.meshfiles import write_points
from tests.scanfiles import write_e57_sphere, write_splat_sphere


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineClient]:
    c = EngineClient(PYTHON, log_path=tmp_path_factory.mktemp("import") / "engine.log", env=ENV)
    yield c
    c.close()


def test_ply_with_normals_and_colours_comes_back_whole(client: EngineClient, tmp_path: Path) -> None:
    points, normals = shapes.sphere(500)
    colors = np.clip(np.abs(normals), 0, 1)
    write_points(tmp_path / "s.ply", points, normals, colors)
    stages: list[str] = []
    got = client.read_file(tmp_path / "s.ply", on_progress=lambda s, f, t: stages.append(s))
    assert got.format == "PLY" and got.total == 500 and got.dropped == {}
    assert got.points.dtype == np.float32 and np.array_equal(got.offset, np.zeros(3))  # near the origin: as stored
    assert np.array_equal(got.points, points.astype(np.float32))
    assert np.allclose(got.normals, normals, atol=1e-6)
    assert np.allclose(got.colors[:, :3], np.round(colors * 255) / 255, atol=1e-6) and got.sensors is None
    assert "read" in stages


def test_splat_axes_come_back_oriented(client: EngineClient, tmp_path: Path) -> None:
    """A splat's shortest axis has no side; a ``normal`` attribute must have one (outward on a sphere)."""
    write_splat_sphere(tmp_path / "splats.ply", n=2000, centre=(2.0, 0.0, 0.0))
    ply = PlyData.read(str(tmp_path / "splats.ply"))  # half the splats turned half round: their axes point in
    v = ply["vertex"].data
    q = np.stack([v[f"rot_{i}"] for i in range(4)], axis=1).astype(np.float64)
    longest = np.eye(3)[np.argmax(np.stack([v[f"scale_{i}"] for i in range(3)], axis=1), axis=1)]
    turned = np.concatenate([-(q[:, 1:] * longest).sum(axis=1, keepdims=True),  # q * (0, e_longest)
                             q[:, :1] * longest + np.cross(q[:, 1:], longest)], axis=1)
    half = np.random.default_rng(5).random(len(v)) < 0.5
    for i in range(4):
        v[f"rot_{i}"][half] = turned[half, i]
    ply.write(str(tmp_path / "turned.ply"))
    got = client.read_file(tmp_path / "turned.ply")
    assert got.dropped and got.normals is not None
    stored = formats.read_cloud(tmp_path / "turned.ply")
    assert stored.normals is not None and 0.3 < (np.einsum("ij,ij->i", stored.normals, stored.points - [2.0, 0, 0])
                                                 > 0).mean() < 0.7  # the file's axes: either side
    outward = np.einsum("ij,ij->i", got.normals, got.points - [2.0, 0.0, 0.0])
    assert (outward > 0).mean() > 0.95, (outward > 0).mean()


def test_georeferenced_coordinates_keep_their_precision(client: EngineClient, tmp_path: Path) -> None:
    points, _ = shapes.sphere(400, radius=20.0)
    geo = points + [652_345.123456, 5_412_987.654321, 312.5]
    np.save(tmp_path / "geo.npy", geo)
    got = client.read_file(tmp_path / "geo.npy")
    assert np.array_equal(got.offset, np.round(0.5 * (geo.min(axis=0) + geo.max(axis=0))))
    assert np.abs(got.points).max() < 25  # local: float32 is fine there
    assert np.abs(got.offset + got.points.astype(np.float64) - geo).max() < 1e-5  # float32 at 5e6 is 0.5 off


def test_sensors_come_back_relative_to_the_offset(client: EngineClient, tmp_path: Path) -> None:
    points, _ = shapes.sphere(300, radius=3.0)
    points += [5000.0, 0.0, 0.0]
    data = np.zeros(len(points), dtype=[(n, "f8") for n in ("x", "y", "z", "sx", "sy", "sz")])
    for i, n in enumerate("xyz"):
        data[n] = points[:, i]
        data["s" + n] = [5000.0, 0.0, 10.0][i]
    np.save(tmp_path / "scan.npy", data)
    got = client.read_file(tmp_path / "scan.npy")
    assert got.sensors is not None and got.normals is None
    assert np.allclose(got.offset + got.sensors, [5000.0, 0.0, 10.0], atol=1e-5)


def test_e57_scans_with_their_poses(client: EngineClient, tmp_path: Path) -> None:
    pytest.importorskip("pye57")
    world, rgb, sensors = write_e57_sphere(tmp_path / "two.e57", n=400)
    got = client.read_file(tmp_path / "two.e57")
    assert got.format == "E57" and len(got.points) == len(world)
    assert np.abs(got.offset + got.points - world).max() < 1e-4
    assert np.abs(got.offset + got.sensors - sensors).max() < 1e-4
    assert np.allclose(got.colors[:, :3], rgb / 255, atol=1e-6)


def test_every_kth_point(client: EngineClient, tmp_path: Path) -> None:
    points = np.random.default_rng(0).random((1000, 3))
    np.save(tmp_path / "r.npy", points)
    got = client.read_file(tmp_path / "r.npy", every=7)
    assert got.total == 1000 and np.array_equal(got.points, points[::7].astype(np.float32))


def test_voxel_grid_keeps_one_point_per_cell(client: EngineClient, tmp_path: Path) -> None:
    points = np.random.default_rng(1).random((5000, 3)) * 10
    np.save(tmp_path / "r.npy", points)
    got = client.read_file(tmp_path / "r.npy", voxel_size=2.5)
    cells = np.floor((points - points.min(axis=0)) / 2.5)
    assert len(got.points) == len(np.unique(cells, axis=0)) == 64
    kept = np.floor((got.points.astype(np.float64) - points.min(axis=0)) / 2.5)
    assert len(np.unique(kept, axis=0)) == 64  # one each
    assert np.array_equal(voxel_rows(points, 100.0), [0])


@pytest.mark.parametrize("options, pattern", [
    ({"every": 0}, "every"), ({"every": 2.5}, "every"), ({"voxel_size": -1.0}, "voxel_size"),
    ({"voxel_size": float("nan")}, "voxel_size"), ({"every": 3, "voxel_size": 1.0}, "both"),
    ({"colour": True}, "Unknown import option"),
])
def test_bad_options_are_refused_before_sending(client: EngineClient, options: dict, pattern: str) -> None:
    with pytest.raises(OptionError, match=pattern):
        check_import_options(options)
    with pytest.raises(InvalidRequest, match=pattern):
        client.submit_read("anything.ply", **options)


def test_bad_files_are_errors_naming_the_file(client: EngineClient, tmp_path: Path) -> None:
    (tmp_path / "junk.ply").write_bytes(b"not a ply at all\n" * 10)
    for path, pattern in [(tmp_path / "junk.ply", "not a readable PLY"), (tmp_path / "none.pcd", "no such file"),
                          (tmp_path / "c.dwg", "cannot read '.dwg'")]:
        with pytest.raises(RemoteError, match=pattern) as info:
            client.read_file(path)
        assert info.value.code == "input" and str(path) in info.value.message


def test_cancel_ends_the_read_and_the_engine_goes_on(client: EngineClient, tmp_path: Path) -> None:
    np.save(tmp_path / "big.npy", np.random.default_rng(2).random((3_000_000, 3)))
    client.start()
    pid = client.pid
    job = client.submit_read(tmp_path / "big.npy", voxel_size=0.001)
    job.cancel(grace=10.0)
    with pytest.raises(RemoteError, match="(?i)cancel") as info:
        job.result  # noqa: B018 - raises the job's error
    assert info.value.code == "cancelled" and client.pid == pid  # stopped by the engine, not killed
    np.save(tmp_path / "small.npy", np.random.default_rng(3).random((50, 3)))
    assert len(client.read_file(tmp_path / "small.npy").points) == 50


def test_offset_is_zero_near_the_origin_and_rounded_far_away() -> None:
    assert np.array_equal(import_offset(np.array([[0.0, 0, 0], [999.0, 5, 5]])), np.zeros(3))
    assert np.array_equal(import_offset(np.array([[1e6, 0, 0], [1e6 + 3, 2, 2]])), [1e6 + 2, 1, 1])
