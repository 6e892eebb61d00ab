"""The command line: every input and output format, the --json line, exit codes and clean error messages."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from engine.options import SPECS
from tests import shapes
from tests.meshcheck import boundary_edges
from tests.meshfiles import glb_world_z_up, read_glb, read_mesh, read_obj
from tests.mounts import read_only_folder
from tests.scanfiles import write_e57_sphere, write_splat_sphere

ROOT = Path(__file__).resolve().parents[2]


def engine_cli(*args: str, file_size_limit: int | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process; ``file_size_limit`` (bytes) makes the kernel fail larger writes (EFBIG)."""
    def limit() -> None:
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, preexec_fn=limit)


def write_cloud(path: Path, text: bool, coord: str, colors: bool = True, normals: bool = True) -> None:
    p, n = shapes.sphere(3000)
    fields = [("x", coord), ("y", coord), ("z", coord)]
    if normals:
        fields += [("nx", "f4"), ("ny", "f4"), ("nz", "f4")]
    if colors:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    v = np.empty(len(p), dtype=fields)
    v["x"], v["y"], v["z"] = (p + [100.0, 0.0, 0.0]).T
    if normals:
        v["nx"], v["ny"], v["nz"] = n.T
    if colors:
        v["red"], v["green"], v["blue"] = 200, 100, 50
    PlyData([PlyElement.describe(v, "vertex")], text=text).write(str(path))


@pytest.mark.parametrize("text, coord", [(False, "f4"), (True, "f8")])
def test_reconstruct_round_trip(tmp_path: Path, text: bool, coord: str) -> None:
    src, dst = tmp_path / "in.ply", tmp_path / "out.ply"
    write_cloud(src, text, coord)
    done = engine_cli("reconstruct", str(src), str(dst), "--json", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["points_in"] == 3000 and stats["faces"] > 0
    assert "vertices" in done.stdout.splitlines()[0]  # the one-line summary
    verts, faces = read_mesh(dst)
    assert len(faces) == stats["faces"] and boundary_edges(faces) == 0
    assert np.abs(np.linalg.norm(verts - [100.0, 0, 0], axis=1) - 1.0).max() < 0.02
    vertex = PlyData.read(str(dst))["vertex"].data
    assert vertex["red"].min() == 200 and vertex["blue"].max() == 50


def test_options_are_passed_on(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.ply", tmp_path / "out.ply"
    write_cloud(src, False, "f4")
    done = engine_cli("reconstruct", str(src), str(dst), "--voxel-size", "0.2", "--mise-iter", "0", "--json")
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert abs(stats["voxel_size"] - 0.2) < 1e-9


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    done = engine_cli("reconstruct", str(tmp_path / "nope.ply"), str(tmp_path / "out.ply"))
    assert done.returncode == 2 and "no such file" in done.stderr


def test_cloud_without_normals_gets_estimated_normals(tmp_path: Path) -> None:
    src = tmp_path / "in.ply"
    write_cloud(src, False, "f4", normals=False)
    done = engine_cli("reconstruct", str(src), str(tmp_path / "out.ply"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["normals_estimated"] is True
    assert (tmp_path / "out.ply").exists()


def test_bad_arguments() -> None:
    assert engine_cli("reconstruct", "a.ply").returncode == 2
    assert engine_cli("reconstruct", "a.ply", "b.ply", "--detail", "fine").returncode == 2


CENTRE = np.array([100.0, 0.0, 0.0])
JSON_KEYS = {"total_seconds", "stages", "device", "voxel_size", "points_in", "vertices", "faces", "iterations",
             "residual", "input", "output"}


def write_sphere(path: Path, n: int = 2000) -> None:
    """A unit sphere at CENTRE with normals and one colour (200, 100, 50), in the format of path's extension."""
    p, nrm = shapes.sphere(n)
    p = p + CENTRE
    rgb = np.tile([200, 100, 50], (n, 1))
    if path.suffix == ".xyz":
        np.savetxt(path, np.hstack([p, nrm, rgb]), fmt="%.9g")
    elif path.suffix == ".npz":
        np.savez(path, points=p, normals=nrm, colors=rgb.astype(np.uint8))
    else:
        raise ValueError(path)


def run_json(src: Path, dst: Path) -> dict:
    done = engine_cli("reconstruct", str(src), str(dst), "--json", "--device", "cpu", "--voxel-size", "0.1")
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert JSON_KEYS <= set(stats), JSON_KEYS - set(stats)
    assert stats["input"] == str(src) and stats["output"] == str(dst) and stats["points_in"] == 2000
    assert {"read", "solve", "mesh", "write"} <= set(stats["stages"])
    assert stats["iterations"] > 0 and 0 <= stats["residual"] <= SPECS["solver_tol"].default  # solved to the default
    assert abs(sum(stats["stages"].values()) - stats["total_seconds"]) < 0.1 * stats["total_seconds"] + 0.05
    return stats


def test_text_cloud_to_obj(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.xyz", tmp_path / "out.obj"
    write_sphere(src)
    stats = run_json(src, dst)
    obj = read_obj(dst)
    assert obj["v"].shape == (stats["vertices"], 6) and obj["f"].shape[0] == stats["faces"]
    assert boundary_edges(obj["f"][:, :, 0] - 1) == 0
    assert np.abs(np.linalg.norm(obj["v"][:, :3] - CENTRE, axis=1) - 1.0).max() < 0.03
    np.testing.assert_allclose(obj["v"][:, 3:], np.tile([200, 100, 50], (stats["vertices"], 1)) / 255, atol=1e-5)


def test_npz_cloud_to_glb(tmp_path: Path) -> None:
    pytest.importorskip("pygltflib")
    src, dst = tmp_path / "in.npz", tmp_path / "out.glb"
    write_sphere(src)
    stats = run_json(src, dst)
    doc, attrs, faces = read_glb(dst)
    assert attrs["POSITION"].shape == (stats["vertices"], 3) and faces.shape == (stats["faces"], 3)
    world = glb_world_z_up(doc, attrs["POSITION"])
    assert np.abs(np.linalg.norm(world - CENTRE, axis=1) - 1.0).max() < 0.03
    outward = np.einsum("ij,ij->i", attrs["NORMAL"], attrs["POSITION"] - attrs["POSITION"].mean(axis=0))
    assert (outward > 0).mean() > 0.99
    assert set(np.unique(attrs["COLOR_0"][:, 3])) == {1.0}


def no_traceback(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "hint:" in done.stderr
    assert all(w in done.stderr for w in words), done.stderr


def test_input_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    out = str(tmp_path / "out.ply")
    no_traceback(engine_cli("reconstruct", str(tmp_path / "absent.xyz"), out), "no such file")
    (tmp_path / "in.fls").write_bytes(b"E57")
    no_traceback(engine_cli("reconstruct", str(tmp_path / "in.fls"), out), "cannot read '.fls'", ".e57")
    write_sphere(tmp_path / "in.xyz", 50)
    no_traceback(engine_cli("reconstruct", str(tmp_path / "in.xyz"), str(tmp_path / "out.stl")),
                 "cannot write '.stl'", ".glb")
    (tmp_path / "cut.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 9\n"
                                       b"property float x\nproperty float y\nproperty float z\nend_header\n\0\0")
    no_traceback(engine_cli("reconstruct", str(tmp_path / "cut.ply"), out), "declares 9 vertex rows")
    np.save(tmp_path / "flat.npy", np.zeros((10, 5)))
    no_traceback(engine_cli("reconstruct", str(tmp_path / "flat.npy"), out), "5 columns")
    assert not (tmp_path / "out.ply").exists()


@pytest.mark.slow
def test_chunked(tmp_path: Path) -> None:
    p, n = shapes.sphere(20_000)
    np.savetxt(tmp_path / "in.xyz", np.hstack([p, n]), fmt="%.9g")
    done = engine_cli("reconstruct", str(tmp_path / "in.xyz"), str(tmp_path / "out.ply"), "--json",
                      "--chunk-size", "0.8", "--overlap-ratio", "0.2", "--executor", "inprocess")
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["chunks"] == 8 and stats["chunking"] == "set" and stats["executor"] == "inprocess"
    assert "8 chunks of" in done.stdout
    vertices, _ = read_mesh(tmp_path / "out.ply")
    assert np.abs(np.linalg.norm(vertices, axis=1) - 1).max() < 0.5 * stats["voxel_size"]


def test_chunk_options_refused_clearly(tmp_path: Path) -> None:
    write_sphere(tmp_path / "in.xyz", 50)
    out = str(tmp_path / "out.ply")
    no_traceback(engine_cli("reconstruct", str(tmp_path / "in.xyz"), out, "--chunk-size", "-2"),
                 "'chunk_size' must be a number above 0")
    no_traceback(engine_cli("reconstruct", str(tmp_path / "in.xyz"), out, "--executor", "mpi", "--chunk-size", "1"),
                 "'executor' must be 'inprocess', 'processes'", "Where chunks run")
    no_traceback(engine_cli("reconstruct", str(tmp_path / "in.xyz"), out, "--memory-limit", "0.01",
                            "--no-auto-chunk"), "more than the limit")
    assert not (tmp_path / "out.ply").exists()


def test_points_without_normals_get_estimated_ones(tmp_path: Path) -> None:
    p, _ = shapes.sphere(3000)
    np.savetxt(tmp_path / "in.xyz", p, fmt="%.9g")
    done = engine_cli("reconstruct", str(tmp_path / "in.xyz"), str(tmp_path / "out.ply"), "--json")
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["normals_estimated"] and stats["faces"] > 1000
    vertices, _ = read_mesh(tmp_path / "out.ply")
    assert np.abs(np.linalg.norm(vertices, axis=1) - 1).max() < 0.5 * stats["voxel_size"]



def test_the_engines_warnings_are_printed(tmp_path: Path) -> None:
    """A warning in the stats (here: given normals far off the points' planes) reaches the user on stderr."""
    p, n = shapes.sphere(5000)
    np.savez(tmp_path / "in.npz", points=p, normals=shapes.tilted(n, 10.0))
    done = engine_cli("reconstruct", str(tmp_path / "in.npz"), str(tmp_path / "out.ply"))
    assert done.returncode == 0, done.stderr
    assert "warning: the given normals lie a median" in done.stderr
    np.savez(tmp_path / "clean.npz", points=p, normals=n)
    done = engine_cli("reconstruct", str(tmp_path / "clean.npz"), str(tmp_path / "clean.ply"))
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    kept = engine_cli("reconstruct", str(tmp_path / "in.npz"), str(tmp_path / "kept.ply"), "--keep-normals")
    assert kept.returncode == 0 and "warning" not in kept.stderr, kept.stderr  # the given normals, as asked


def test_normals_cannot_be_both_estimated_and_kept(tmp_path: Path) -> None:
    p, n = shapes.sphere(2000)
    np.savez(tmp_path / "in.npz", points=p, normals=n)
    no_traceback(engine_cli("reconstruct", str(tmp_path / "in.npz"), str(tmp_path / "out.ply"), "--keep-normals",
                            "--estimate-normals"), "'estimate_normals' and 'keep_normals' cannot both be on",
                 "Turn one of them off")
    assert not (tmp_path / "out.ply").exists()


# ---------------------------------------------------------------- outputs that cost no data


def test_output_that_is_the_input_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "scan.ply"
    write_cloud(src, False, "f4")
    before = src.read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "alias.ply").symlink_to(src)
    for output in (src, tmp_path / "sub" / ".." / "scan.ply", tmp_path / "alias.ply"):
        no_traceback(engine_cli("reconstruct", str(src), str(output)), "is the input file", "new file name")
    assert src.read_bytes() == before


def test_unwritable_output_is_refused_before_the_solve(tmp_path: Path) -> None:
    write_sphere(tmp_path / "in.xyz")
    with read_only_folder(tmp_path / "ro") as folder:
        # the probe's message, not the writer's: the run stopped before reading and solving
        no_traceback(engine_cli("reconstruct", str(tmp_path / "in.xyz"), str(folder / "out.ply")),
                     "cannot create files in")


def test_failed_write_keeps_the_previous_output(tmp_path: Path) -> None:
    write_sphere(tmp_path / "in.xyz")
    out = tmp_path / "out.ply"
    out.write_bytes(b"yesterday's mesh " * 100)
    done = engine_cli("reconstruct", str(tmp_path / "in.xyz"), str(out), "--voxel-size", "0.1",
                      file_size_limit=4096)  # the new mesh is larger: the kernel refuses its write mid-way
    assert out.read_bytes() == b"yesterday's mesh " * 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.xyz", "out.ply"]  # no temporary file left
    no_traceback(done, "cannot write", "File too large", "previous file is unchanged")


def test_float32_georeferenced_cloud_names_float32_precision(tmp_path: Path) -> None:
    from tests.engine.test_bad_input import thin_pipe

    p, n = thin_pipe()
    v = np.empty(len(p), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    v["x"], v["y"], v["z"] = p.T  # as an exporter writing float32 stores a georeferenced scan
    PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp_path / "pipe.ply"))
    no_traceback(engine_cli("reconstruct", str(tmp_path / "pipe.ply"), str(tmp_path / "out.ply")),
                 "float32 precision", "double-precision")


def reconstruct_json(src: Path, dst: Path, *flags: str) -> dict:
    done = engine_cli("reconstruct", str(src), str(dst), "--json", "--device", "cpu", *flags)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_e57_scans_to_a_sphere_oriented_by_their_poses(tmp_path: Path) -> None:
    pytest.importorskip("pye57")
    centre = np.array([10.0, -5.0, 2.0])
    write_e57_sphere(tmp_path / "in.e57", n=1500, centre=centre)
    stats = reconstruct_json(tmp_path / "in.e57", tmp_path / "out.ply", "--voxel-size", "0.1")
    assert stats["sensor_source"] == "file" and stats["normals_orientation"] == "sensor"
    v = read_mesh(tmp_path / "out.ply")[0]
    assert np.abs(np.linalg.norm(v - centre, axis=1) - 1.0).max() < 0.05
    given = reconstruct_json(tmp_path / "in.e57", tmp_path / "given.ply", "--voxel-size", "0.1",
                             "--sensor", *(str(c) for c in centre + [0, 0, 5.0]))  # the given one wins
    assert given["sensor_source"] == "option"


def test_splat_ply_to_its_sphere_without_the_floaters(tmp_path: Path) -> None:
    truth = write_splat_sphere(tmp_path / "in.ply", n=3000, centre=(2.0, 0.0, 0.0))
    voxel = 0.05
    done = engine_cli("reconstruct", str(tmp_path / "in.ply"), str(tmp_path / "out.ply"), "--json", "--device",
                      "cpu", "--voxel-size", str(voxel))
    assert done.returncode == 0, done.stderr
    assert f"{truth.faint} faint splats, {truth.degenerate} degenerate splats" in done.stdout
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["read_dropped"] == {"faint_splats": truth.faint, "degenerate_splats": truth.degenerate}
    assert stats["axes_orientation"] == "propagation" and stats["points_in"] == 3000
    v = read_mesh(tmp_path / "out.ply")[0]
    assert np.abs(np.linalg.norm(v - [2.0, 0.0, 0.0], axis=1) - 1.0).max() < voxel  # no floater shells at 1.5-2
    fewer = engine_cli("reconstruct", str(tmp_path / "in.ply"), str(tmp_path / "o.ply"), "--splat-min-opacity", "2")
    assert fewer.returncode == 2 and "at least 0 and below 1" in fewer.stderr
