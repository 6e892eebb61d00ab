"""File formats: every reader and writer round-trips positions, normals and colours; bad files say what is wrong.

Optional packages (pypcd4, laspy with lazrs, pygltflib) are installed by build.py from
requirements/formats.txt, so their tests run in CI; importorskip only spares an install without them.
"""

from __future__ import annotations

import os
import stat
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh  # a test dependency (requirements/dev.txt): an independent reader of our OBJ and GLB
from plyfile import PlyData, PlyElement

from engine import formats
from engine.cloud import PointCloud, normalize_colors
from engine.errors import InputError, MissingPackageError
from engine.formats.gltf import srgb_to_linear
from engine.mesh import Mesh, vertex_normals
from tests import shapes
from tests.meshfiles import glb_world_z_up, read_glb, read_obj
from tests.mounts import fill, read_only_folder, tiny_fs
from tests.scanfiles import write_e57_sphere, write_splat_sphere

N = 40


@pytest.fixture(scope="module")
def cloud() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (offset like a survey), unit normals and uint8 RGB colours."""
    p, n = shapes.sphere(N, seed=3)
    rgb = np.random.default_rng(3).integers(0, 256, size=(N, 3)).astype(np.uint8)
    return p + [1000.0, -20.0, 5.0], n, rgb


def check(got: PointCloud, p: np.ndarray, n: np.ndarray | None, rgb: np.ndarray | None, atol: float = 1e-12) -> None:
    assert got.points.dtype == np.float64 and got.points.shape == (N, 3)
    np.testing.assert_allclose(got.points, p, rtol=0, atol=atol)
    if n is None:
        assert got.normals is None
    else:
        assert got.normals is not None
        np.testing.assert_allclose(got.normals, n, rtol=0, atol=1e-6)
    if rgb is None:
        assert got.colors is None
    else:
        assert got.colors is not None and got.colors.dtype == np.float32 and got.colors.shape == (N, 4)
        np.testing.assert_allclose(got.colors[:, :3] * 255, rgb, atol=1e-3)
        np.testing.assert_allclose(got.colors[:, 3], 1.0)


def bad(path: Path, *words: str) -> InputError:
    """read_cloud(path) raises an InputError whose message holds every word, and a hint."""
    with pytest.raises(InputError) as info:
        formats.read_cloud(path)
    text = info.value.message.lower()
    assert all(w.lower() in text for w in words), info.value.message
    assert info.value.hint
    return info.value


# ---------------------------------------------------------------- colours


def test_colour_scales() -> None:
    """uint8 by type; other types by range: 0-1, 0-255 (incl. 8-bit values in 16-bit fields), 0-65535."""
    half = np.full((2, 3), 0.5)
    np.testing.assert_allclose(normalize_colors(np.full((2, 3), 1, np.uint8))[:, :3], 1 / 255)
    np.testing.assert_allclose(normalize_colors(half)[:, :3], 0.5)
    np.testing.assert_allclose(normalize_colors(half * 255)[:, :3], 0.5)
    np.testing.assert_allclose(normalize_colors((half * 255).astype(np.uint16))[:, :3], 127 / 255)
    np.testing.assert_allclose(normalize_colors(np.full((2, 3), 65535, np.uint16))[:, :3], 1.0)
    rgba = normalize_colors(np.array([[255, 0, 0, 128]], np.int64))
    np.testing.assert_allclose(rgba, [[1, 0, 0, 128 / 255]], atol=1e-7)


# ---------------------------------------------------------------- PLY


@pytest.mark.parametrize("text", [False, True], ids=["binary", "ascii"])
@pytest.mark.parametrize("coord", ["f4", "f8"], ids=["float", "double"])
def test_ply(tmp_path: Path, cloud: tuple, text: bool, coord: str) -> None:
    p, n, rgb = cloud
    v = np.empty(N, dtype=[("x", coord), ("y", coord), ("z", coord), ("nx", "f4"), ("ny", "f4"), ("nz", "f4"),
                           ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    v["x"], v["y"], v["z"] = p.T
    v["nx"], v["ny"], v["nz"] = n.T
    v["red"], v["green"], v["blue"] = rgb.T
    PlyData([PlyElement.describe(v, "vertex")], text=text).write(str(tmp_path / "c.ply"))
    expected = p if coord == "f8" else p.astype(np.float32)
    check(formats.read_cloud(tmp_path / "c.ply"), expected, n, rgb, atol=1e-9 if text else 0)


def test_ply_other_colour_names_and_float_colours(tmp_path: Path, cloud: tuple) -> None:
    p, n, rgb = cloud
    v = np.empty(N, dtype=[("x", "f8"), ("y", "f8"), ("z", "f8"),
                           ("diffuse_red", "f4"), ("diffuse_green", "f4"), ("diffuse_blue", "f4")])
    v["x"], v["y"], v["z"] = p.T
    v["diffuse_red"], v["diffuse_green"], v["diffuse_blue"] = (rgb / 255.0).T
    PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp_path / "c.PLY"))  # extensions are case-blind
    check(formats.read_cloud(tmp_path / "c.PLY"), p, None, rgb)


# ---------------------------------------------------------------- PCD


def pcd_header(fields: str, size: str, kind: str, data: str) -> bytes:
    count = " ".join("1" for _ in fields.split())
    return (f"# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS {fields}\nSIZE {size}\nTYPE {kind}\n"
            f"COUNT {count}\nWIDTH {N}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {N}\nDATA {data}\n").encode()


def packed_rgb(rgb: np.ndarray) -> np.ndarray:
    return (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2]


def test_pcd_ascii_as_pcl_writes_it(tmp_path: Path, cloud: tuple) -> None:
    """PCL prints a float ``rgb`` field of an ASCII file as the packed integer."""
    pytest.importorskip("pypcd4")
    p, n, rgb = cloud
    rows = "".join(f"{a:.17g} {b:.17g} {c:.17g} {d:.9g} {e:.9g} {f:.9g} {g}\n"
                   for (a, b, c), (d, e, f), g in zip(p, n, packed_rgb(rgb), strict=True))
    path = tmp_path / "c.pcd"
    path.write_bytes(pcd_header("x y z normal_x normal_y normal_z rgb", "8 8 8 4 4 4 4", "F F F F F F F", "ascii")
                     + rows.encode())
    check(formats.read_cloud(path), p, n, rgb, atol=1e-9)


def test_pcd_binary_by_hand_with_rgba(tmp_path: Path, cloud: tuple) -> None:
    pytest.importorskip("pypcd4")
    p, n, rgb = cloud
    rec = np.empty(N, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgba", "<u4")])
    rec["x"], rec["y"], rec["z"] = p.T
    rec["rgba"] = packed_rgb(rgb) | np.uint32(128 << 24)
    path = tmp_path / "c.pcd"
    path.write_bytes(pcd_header("x y z rgba", "4 4 4 4", "F F F U", "binary") + rec.tobytes())
    got = formats.read_cloud(path)
    np.testing.assert_array_equal(got.points, p.astype(np.float32))
    assert got.normals is None and got.colors is not None
    np.testing.assert_allclose(got.colors[:, :3] * 255, rgb, atol=1e-3)
    np.testing.assert_allclose(got.colors[:, 3], 128 / 255, atol=1e-6)


@pytest.mark.parametrize("encoding", ["binary", "binary_compressed"])
def test_pcd_written_by_pypcd4(tmp_path: Path, cloud: tuple, encoding: str) -> None:
    pypcd4 = pytest.importorskip("pypcd4")
    p, n, rgb = cloud
    cols = [*p.astype(np.float32).T, *n.astype(np.float32).T, pypcd4.PointCloud.encode_rgb(rgb).ravel()]
    pc = pypcd4.PointCloud.from_points(cols, ("x", "y", "z", "normal_x", "normal_y", "normal_z", "rgb"),
                                       (np.float32,) * 7)
    pc.save(str(tmp_path / "c.pcd"), encoding=pypcd4.Encoding(encoding))
    check(formats.read_cloud(tmp_path / "c.pcd"), p.astype(np.float32), n, rgb, atol=0)


def test_pcd_truncated_and_malformed(tmp_path: Path, cloud: tuple) -> None:
    pytest.importorskip("pypcd4")
    p, _, _ = cloud
    rec = p.astype("<f4")
    (tmp_path / "short.pcd").write_bytes(pcd_header("x y z", "4 4 4", "F F F", "binary") + rec[:-3].tobytes())
    bad(tmp_path / "short.pcd", "pcd")
    (tmp_path / "cut.pcd").write_bytes(pcd_header("x y z", "4 4 4", "F F F", "binary") + rec.tobytes()[:-5])
    bad(tmp_path / "cut.pcd", "pcd")
    (tmp_path / "junk.pcd").write_bytes(b"VERSION 0.7\nFIELDS x y z\nSIZE banana\n")
    bad(tmp_path / "junk.pcd", "not a readable pcd")


# ---------------------------------------------------------------- XYZ / PTS / TXT / CSV


def write_rows(path: Path, table: np.ndarray, head: str = "", fmt: str = "%.17g", delimiter: str = " ") -> None:
    with open(path, "w") as fh:
        fh.write(head)
        np.savetxt(fh, table, fmt=fmt, delimiter=delimiter)


def test_xyz_column_layouts(tmp_path: Path, cloud: tuple) -> None:
    p, n, rgb = cloud
    ones = np.ones((N, 1))
    cases = {
        "xyz.xyz": (p, "", None, None),
        "xyzi.pts": (np.hstack([p, ones]), "", None, None),
        "xyzn.xyz": (np.hstack([p, n]), "", n, None),
        "xyzrgb.txt": (np.hstack([p, rgb]), "", None, rgb),
        "leica.pts": (np.hstack([p, ones * 7, rgb]), f"{N}\n", None, rgb),
        "xyznrgb.xyz": (np.hstack([p, n, rgb / 255.0]), "# 0-1 colours\n\n", n, rgb),
    }
    for name, (table, head, normals, colors) in cases.items():
        write_rows(tmp_path / name, table, head)
        check(formats.read_cloud(tmp_path / name), p, normals, colors)


def test_header_line_overrides_the_convention(tmp_path: Path, cloud: tuple) -> None:
    p, n, rgb = cloud
    write_rows(tmp_path / "cc.csv", np.hstack([p, rgb, n]), "//X,Y,Z,R,G,B,Nx,Ny,Nz\n", delimiter=",")
    check(formats.read_cloud(tmp_path / "cc.csv"), p, n, rgb)
    write_rows(tmp_path / "named.txt", np.hstack([n, p]), "normal_x\tnormal_y\tnormal_z\tx\ty\tz\n", delimiter="\t")
    check(formats.read_cloud(tmp_path / "named.txt"), p, n, None)


def test_bad_text_files(tmp_path: Path, cloud: tuple) -> None:
    p, n, _ = cloud
    write_rows(tmp_path / "five.xyz", np.hstack([p, n[:, :2]]))
    assert "x y z nx ny nz" in bad(tmp_path / "five.xyz", "5 columns").hint
    text = (tmp_path / "five.xyz").read_text()
    (tmp_path / "cut.xyz").write_text(text[: len(text) // 2].rsplit(" ", 1)[0])  # a row cut short
    bad(tmp_path / "cut.xyz", "not a readable column file")
    write_rows(tmp_path / "short.pts", p, f"{N + 5}\n")
    bad(tmp_path / "short.pts", f"says {N + 5} points", f"holds {N}")
    (tmp_path / "words.txt").write_text("x y z\n1 2 3\n4 five 6\n")
    bad(tmp_path / "words.txt", "not a readable")
    (tmp_path / "header.xyz").write_text("x y z nx\n1 2 3\n")
    bad(tmp_path / "header.xyz", "header names 4 columns")
    (tmp_path / "comments.xyz").write_text("# nothing but a comment\n\n")
    bad(tmp_path / "comments.xyz", "no points")
    (tmp_path / "binary.xyz").write_bytes(b"\xff\xfe\x00\x81" * 10)
    bad(tmp_path / "binary.xyz", "not a text file")


# ---------------------------------------------------------------- NPY / NPZ


def test_npy_layouts(tmp_path: Path, cloud: tuple) -> None:
    p, n, rgb = cloud
    for name, table, normals, colors in [("a3", p, None, None), ("a6", np.hstack([p, n]), n, None),
                                         ("a9", np.hstack([p, n, rgb / 255.0]), n, rgb)]:
        np.save(tmp_path / f"{name}.npy", table)
        check(formats.read_cloud(tmp_path / f"{name}.npy"), p, normals, colors)
    rec = np.empty(N, dtype=[("x", "f8"), ("y", "f8"), ("z", "f8"), ("nx", "f4"), ("ny", "f4"), ("nz", "f4"),
                             ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    rec["x"], rec["y"], rec["z"] = p.T
    rec["nx"], rec["ny"], rec["nz"] = n.T
    rec["red"], rec["green"], rec["blue"] = rgb.T
    np.save(tmp_path / "fields.npy", rec)
    check(formats.read_cloud(tmp_path / "fields.npy"), p, n, rgb)
    vec = np.empty(N, dtype=[("points", "f8", (3,)), ("normals", "f4", (3,))])
    vec["points"], vec["normals"] = p, n
    np.save(tmp_path / "vectors.npy", vec)
    check(formats.read_cloud(tmp_path / "vectors.npy"), p, n, None)


def test_npz_keys_and_aliases(tmp_path: Path, cloud: tuple) -> None:
    p, n, rgb = cloud
    np.savez(tmp_path / "plain.npz", points=p, normals=n, colors=rgb)
    check(formats.read_cloud(tmp_path / "plain.npz"), p, n, rgb)
    rgba = np.hstack([rgb / 255, np.ones((N, 1))])
    np.savez_compressed(tmp_path / "alias.npz", XYZ=p.astype(np.float32), normal=n, rgba=rgba)
    check(formats.read_cloud(tmp_path / "alias.npz"), p.astype(np.float32), n, rgb)
    np.savez(tmp_path / "single.npz", np.hstack([p, n]))
    check(formats.read_cloud(tmp_path / "single.npz"), p, n, None)


def test_bad_numpy_files(tmp_path: Path, cloud: tuple) -> None:
    p, n, _ = cloud
    np.save(tmp_path / "two.npy", p[:, :2])
    bad(tmp_path / "two.npy", "2 columns")
    np.save(tmp_path / "cube.npy", np.zeros((4, 4, 3)))
    bad(tmp_path / "cube.npy", "shape (4, 4, 3)")
    np.save(tmp_path / "objects.npy", np.array([p, None], dtype=object), allow_pickle=True)
    bad(tmp_path / "objects.npy", "not a readable numpy file")
    raw = (tmp_path / "two.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[: len(raw) - 50])
    bad(tmp_path / "cut.npy")
    np.savez(tmp_path / "nopoints.npz", a=p, b=n)
    assert "points" in bad(tmp_path / "nopoints.npz", "no points array", "a, b").hint
    np.savez(tmp_path / "rows.npz", points=p, normals=n[:-1])
    bad(tmp_path / "rows.npz", "'normals' has 39 rows")
    (tmp_path / "text.npz").write_text("not a zip")
    bad(tmp_path / "text.npz", "not a readable numpy file")


# ---------------------------------------------------------------- LAS / LAZ


@pytest.mark.parametrize("suffix", [".las", ".laz"])
def test_las_round_trip(tmp_path: Path, cloud: tuple, suffix: str) -> None:
    laspy = pytest.importorskip("laspy")
    if suffix == ".laz" and not laspy.LazBackend.detect_available():
        pytest.skip("no LAZ backend (lazrs) installed")
    p, n, rgb = cloud
    p = p + [5e5, 4e6, 0]  # UTM-like offsets, exact at the file's millimetre scale
    p = np.round(p, 3)
    header = laspy.LasHeader(point_format=2, version="1.2")
    header.offsets, header.scales = p.min(axis=0), [0.001, 0.001, 0.001]
    header.add_extra_dims([laspy.ExtraBytesParams(name=f"Normal{a}", type=np.float32) for a in "XYZ"])
    las = laspy.LasData(header)
    las.x, las.y, las.z = p.T
    las.red, las.green, las.blue = (rgb.astype(np.uint16) * 257).T  # 16-bit colours
    las.NormalX, las.NormalY, las.NormalZ = n.astype(np.float32).T
    las.write(str(tmp_path / f"c{suffix}"))
    got = formats.read_cloud(tmp_path / f"c{suffix}")
    check(got, p, n, rgb, atol=1e-6)


def test_las_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("laspy")
    (tmp_path / "junk.las").write_bytes(b"LASF" + b"\0" * 50)
    bad(tmp_path / "junk.las", "not a readable las")
    monkeypatch.setattr("laspy.LazBackend.detect_available", staticmethod(lambda: ()))
    (tmp_path / "c.laz").write_bytes(b"LASF" + b"\0" * 300)
    assert "pip install lazrs" in bad(tmp_path / "c.laz", "needs the optional package lazrs").hint


@pytest.mark.parametrize("module, suffix, words", [("laspy", ".las", "laspy"), ("pypcd4", ".pcd", "pypcd4")])
def test_missing_optional_reader_names_the_pip_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       module: str, suffix: str, words: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail, as if not installed
    (tmp_path / f"c{suffix}").write_bytes(b"anything")
    error = bad(tmp_path / f"c{suffix}", f"optional package {words}")
    assert isinstance(error, MissingPackageError) and f"pip install {words}" in error.hint


# ---------------------------------------------------------------- dispatch and generic failures


def test_unknown_missing_empty_and_folder(tmp_path: Path) -> None:
    (tmp_path / "c.fls").write_bytes(b"x")
    assert ".e57" in bad(tmp_path / "c.fls", "cannot read '.fls'").hint
    bad(tmp_path / "absent.ply", "no such file")
    (tmp_path / "dir.ply").mkdir()
    bad(tmp_path / "dir.ply", "not a file")
    for suffix in formats.READERS:
        (tmp_path / f"empty{suffix}").write_bytes(b"")
        bad(tmp_path / f"empty{suffix}", "empty")


def test_truncated_and_pointless_ply(tmp_path: Path, cloud: tuple) -> None:
    p, _, _ = cloud
    v = np.empty(N, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    v["x"], v["y"], v["z"] = p.T
    PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp_path / "c.ply"))
    raw = (tmp_path / "c.ply").read_bytes()
    (tmp_path / "cut.ply").write_bytes(raw[:-7])
    bad(tmp_path / "cut.ply", "declares 40 vertex rows", "holds only 39")
    PlyData([PlyElement.describe(v[:0], "vertex")]).write(str(tmp_path / "none.ply"))
    bad(tmp_path / "none.ply", "holds no points")
    w = np.empty(N, dtype=[("u", "f4"), ("v", "f4")])
    PlyData([PlyElement.describe(w, "vertex")]).write(str(tmp_path / "uv.ply"))
    bad(tmp_path / "uv.ply", "no x, y, z", "u, v")


@pytest.mark.parametrize("text", [False, True])
def test_ply_header_count_must_match_the_body(tmp_path: Path, cloud: tuple, text: bool) -> None:
    p, _, _ = cloud
    v = np.empty(N, dtype=[("x", "f8"), ("y", "f8"), ("z", "f8")])
    v["x"], v["y"], v["z"] = p.T
    PlyData([PlyElement.describe(v, "vertex")], text=text).write(str(tmp_path / "c.ply"))
    raw = (tmp_path / "c.ply").read_bytes()
    (tmp_path / "fewer.ply").write_bytes(raw.replace(f"element vertex {N}".encode(), b"element vertex 30"))
    error = bad(tmp_path / "fewer.ply", "declares 30 vertex rows", f"{N - 30} more rows after them")
    assert "element vertex" in error.hint and "points would be lost" in error.hint
    (tmp_path / "more.ply").write_bytes(raw.replace(f"element vertex {N}".encode(), b"element vertex 50"))
    bad(tmp_path / "more.ply", "declares 50 vertex rows", f"holds only {N}")
    (tmp_path / "newline.ply").write_bytes(raw + b"\n\n")  # blank lines after the data are no points
    check(formats.read_cloud(tmp_path / "newline.ply"), p, None, None)


# ---------------------------------------------------------------- writers


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    """An octahedron far from the origin, with colours and normals."""
    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float32) * 0.5
    f = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]], np.int32)
    colors = np.random.default_rng(5).random((6, 4)).astype(np.float32)
    return Mesh(local_vertices=v, faces=f, origin=np.array([512345.25, 4123456.5, 87.125]), colors=colors,
                normals=vertex_normals(v, f))


def test_ply_writer(tmp_path: Path, mesh: Mesh) -> None:
    formats.write_mesh(tmp_path / "m.ply", mesh)
    ply = PlyData.read(str(tmp_path / "m.ply"))
    v = ply["vertex"].data
    assert v["x"].dtype == np.float64  # georeferenced coordinates keep float64
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], 1), mesh.vertices64)
    np.testing.assert_allclose(np.stack([v["nx"], v["ny"], v["nz"]], 1), mesh.normals)
    assert mesh.colors is not None
    np.testing.assert_array_equal(np.stack([v[c] for c in ("red", "green", "blue", "alpha")], 1),
                                  np.round(mesh.colors * 255))
    np.testing.assert_array_equal(np.stack(list(ply["face"].data["vertex_indices"])), mesh.faces)


def test_obj_writer(tmp_path: Path, mesh: Mesh) -> None:
    formats.write_mesh(tmp_path / "m.obj", mesh)
    obj = read_obj(tmp_path / "m.obj")
    assert obj["v"].shape == (6, 6) and mesh.colors is not None and mesh.normals is not None
    np.testing.assert_array_equal(obj["v"][:, :3], mesh.vertices64)  # 17 digits: exact float64
    np.testing.assert_allclose(obj["v"][:, 3:], mesh.colors[:, :3], atol=1e-6)
    np.testing.assert_allclose(obj["vn"], mesh.normals, atol=1e-6)
    np.testing.assert_array_equal(obj["f"][:, :, 0] - 1, mesh.faces)
    np.testing.assert_array_equal(obj["f"][:, :, 1], obj["f"][:, :, 0])
    other = trimesh.load(str(tmp_path / "m.obj"), process=False)  # another reader takes the colour extension
    np.testing.assert_allclose(other.visual.vertex_colors[:, :3] / 255, mesh.colors[:, :3], atol=1 / 255)


def test_glb_writer(tmp_path: Path, mesh: Mesh) -> None:
    pytest.importorskip("pygltflib")
    formats.write_mesh(tmp_path / "m.glb", mesh)
    doc, attrs, faces = read_glb(tmp_path / "m.glb")
    assert mesh.colors is not None and mesh.normals is not None
    np.testing.assert_array_equal(attrs["POSITION"], mesh.local_vertices)
    np.testing.assert_array_equal(faces, mesh.faces)
    np.testing.assert_allclose(attrs["NORMAL"], mesh.normals)
    assert doc["accessors"][doc["meshes"][0]["primitives"][0]["attributes"]["COLOR_0"]]["componentType"] == 5126
    np.testing.assert_allclose(attrs["COLOR_0"][:, :3], srgb_to_linear(mesh.colors[:, :3]), atol=1e-7)
    np.testing.assert_allclose(attrs["COLOR_0"][:, 3], mesh.colors[:, 3])
    np.testing.assert_allclose(glb_world_z_up(doc, attrs["POSITION"]), mesh.vertices64, rtol=0, atol=1e-9)
    scene = trimesh.load(str(tmp_path / "m.glb"), process=False)  # another reader places the mesh the same way
    placed = scene.to_geometry() if hasattr(scene, "to_geometry") else scene.dump(concatenate=True)
    v = mesh.vertices64
    np.testing.assert_allclose(placed.vertices, np.stack([v[:, 0], v[:, 2], -v[:, 1]], 1), rtol=0, atol=1e-6)


def test_glb_of_an_empty_mesh(tmp_path: Path) -> None:
    gl = pytest.importorskip("pygltflib")
    empty = Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), np.zeros(3))
    formats.write_mesh(tmp_path / "e.glb", empty)
    doc = gl.GLTF2().load_binary(str(tmp_path / "e.glb"))
    assert doc.meshes == [] and doc.scenes[0].nodes == []
    assert struct.unpack("<4sII", (tmp_path / "e.glb").read_bytes()[:12])[0] == b"glTF"


def test_output_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path, words in [(tmp_path / "m.stl", "cannot write '.stl'"), (tmp_path / "no" / "m.ply", "does not exist")]:
        with pytest.raises(InputError, match=words) as info:
            formats.check_output(path)
        assert info.value.hint
    formats.check_output(tmp_path / "m.GLB")
    monkeypatch.setitem(sys.modules, "pygltflib", None)
    with pytest.raises(MissingPackageError, match="pygltflib") as missing:
        formats.check_output(tmp_path / "m.glb")
    assert "pip install pygltflib" in missing.value.hint


# ---------------------------------------------------------------- outputs that cost no data


def refused(output: Path, source: Path | None, *words: str) -> None:
    """check_output(output, source) raises an InputError naming every word, with a hint."""
    with pytest.raises(InputError) as info:
        formats.check_output(output, source)
    assert all(w in info.value.message for w in words), info.value.message
    assert info.value.hint


def test_output_that_is_the_input_is_refused_by_any_name(tmp_path: Path) -> None:
    src = tmp_path / "scan.ply"
    src.write_bytes(b"the only copy of the scan")
    (tmp_path / "link.ply").symlink_to(src)
    (tmp_path / "hard.ply").hardlink_to(src)
    (tmp_path / "sub").mkdir()
    for output in (src, tmp_path / "link.ply", tmp_path / "hard.ply", tmp_path / "sub" / ".." / "scan.ply"):
        refused(output, src, "is the input file")
        refused(src, output, "is the input file")  # the input named through the link, the output directly
    formats.check_output(tmp_path / "scan_mesh.ply", src)  # a new name is fine
    assert src.read_bytes() == b"the only copy of the scan"


def test_unwritable_output_is_refused_before_any_work(tmp_path: Path) -> None:
    with read_only_folder(tmp_path / "ro") as folder:
        refused(folder / "m.ply", None, "cannot create files in")
    (tmp_path / "m.ply").mkdir()
    refused(tmp_path / "m.ply", None, "is a folder")
    (tmp_path / "file").write_bytes(b"")
    refused(tmp_path / "file" / "m.ply", None, "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "m.ply", "ro"]  # the probe left nothing


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".glb"])
def test_full_disk_keeps_the_previous_output(tmp_path: Path, suffix: str) -> None:
    if suffix == ".glb":
        pytest.importorskip("pygltflib")
    rng = np.random.default_rng(1)
    big = Mesh(rng.random((40_000, 3)).astype(np.float32), rng.integers(0, 40_000, (80_000, 3)).astype(np.int32),
               np.zeros(3))
    with tiny_fs(tmp_path / "disk", "2m") as disk:
        out = disk / f"m{suffix}"
        out.write_bytes(b"previous result " * 1000)
        formats.check_output(out)  # there is room for the probe's empty file: the run would go ahead
        fill(disk, leave=64 * 1024)
        with pytest.raises(InputError, match="No space left on device") as info:
            formats.write_mesh(out, big)
        assert out.read_bytes() == b"previous result " * 1000
        assert sorted(p.name for p in disk.iterdir()) == ["filler", f"m{suffix}"]  # no temporary file left
        assert "previous file is unchanged" in info.value.message and "Free space" in info.value.hint


def test_written_files_get_the_usual_permissions(tmp_path: Path, mesh: Mesh) -> None:
    old = os.umask(0o027)
    try:
        formats.write_mesh(tmp_path / "new.ply", mesh)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.ply").stat().st_mode) == 0o640  # 0o666 less the umask, as open() gives
    (tmp_path / "kept.ply").write_bytes(b"old")
    (tmp_path / "kept.ply").chmod(0o604)
    formats.write_mesh(tmp_path / "kept.ply", mesh)
    assert stat.S_IMODE((tmp_path / "kept.ply").stat().st_mode) == 0o604  # a replaced file keeps its mode


def test_writing_through_a_symlink_replaces_its_target(tmp_path: Path, mesh: Mesh) -> None:
    (tmp_path / "real.ply").write_bytes(b"old")
    (tmp_path / "link.ply").symlink_to("real.ply")
    formats.write_mesh(tmp_path / "link.ply", mesh)
    assert (tmp_path / "link.ply").is_symlink()
    assert PlyData.read(str(tmp_path / "real.ply"))["face"].count == len(mesh.faces)


@pytest.mark.parametrize("offset", [0.0, 1e6])  # float32 and float64 coordinates
@pytest.mark.parametrize("extras", [False, True])  # with and without normals and colours
def test_fast_ply_mesh_writer_matches_plyfile_byte_for_byte(tmp_path: Path, offset: float, extras: bool) -> None:
    from plyfile import PlyData, PlyElement

    from engine.formats.ply import write_mesh
    from engine.mesh import Mesh

    rng = np.random.default_rng(3)
    verts = rng.normal(size=(50, 3)) + offset
    faces = rng.integers(0, 50, size=(80, 3)).astype(np.int32)
    normals = rng.normal(size=(50, 3)).astype(np.float32) if extras else None
    colors = rng.uniform(size=(50, 4)).astype(np.float32) if extras else None
    mesh = Mesh((verts - offset).astype(np.float32), faces, np.full(3, offset), colors, normals)
    write_mesh(tmp_path / "fast.ply", mesh)
    # The reference: the same records written by plyfile itself.
    coord = "f8" if offset else "f4"
    fields = [(n, coord) for n in "xyz"] + ([(n, "f4") for n in ("nx", "ny", "nz")] +
                                           [(n, "u1") for n in ("red", "green", "blue", "alpha")] if extras else [])
    v = np.empty(50, dtype=fields)
    for i, n in enumerate("xyz"):
        v[n] = mesh.vertices64[:, i]
    if extras:
        for i, n in enumerate(("nx", "ny", "nz")):
            v[n] = normals[:, i]
        c8 = np.clip(np.round(colors * 255), 0, 255).astype(np.uint8)
        for i, n in enumerate(("red", "green", "blue", "alpha")):
            v[n] = c8[:, i]
    f = np.empty(80, dtype=[("vertex_indices", "i4", (3,))])
    f["vertex_indices"] = faces
    PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(f, "face")]).write(str(tmp_path / "ref.ply"))
    assert (tmp_path / "fast.ply").read_bytes() == (tmp_path / "ref.ply").read_bytes()


# ---------------------------------------------------------------- sensor positions


def test_sensor_columns_in_ply_and_npz(tmp_path: Path, cloud: tuple) -> None:
    """Per-point sx sy sz (bench/scanner.py's columns) and an NPZ 'sensors' array become PointCloud.sensors."""
    p, _, _ = cloud
    s = p + np.random.default_rng(1).normal(size=p.shape) * 5
    v = np.empty(N, dtype=[(a, "f8") for a in ("x", "y", "z", "sx", "sy", "sz")])
    v["x"], v["y"], v["z"], v["sx"], v["sy"], v["sz"] = *p.T, *s.T
    PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp_path / "c.ply"))
    np.save(tmp_path / "c.npy", v)
    np.savez(tmp_path / "c.npz", points=p, sensors=s)
    for name in ("c.ply", "c.npy", "c.npz"):
        got = formats.read_cloud(tmp_path / name)
        assert got.sensors is not None, name
        np.testing.assert_array_equal(got.sensors, s)
    assert formats.read_cloud(tmp_path / "c.npz").sensors.dtype == np.float64


def test_pcd_viewpoint_is_the_sensor_unless_it_is_the_default(tmp_path: Path, cloud: tuple) -> None:
    pytest.importorskip("pypcd4")
    p, _, _ = cloud
    body = "\n".join(" ".join(f"{x:.17g}" for x in row) for row in p) + "\n"
    for viewpoint, want in (("0 0 0 1 0 0 0", None), ("1 2 3 0.7071068 0 0 0.7071068", [1.0, 2.0, 3.0])):
        head = (f"# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 8 8 8\nTYPE F F F\nCOUNT 1 1 1\nWIDTH {N}\n"
                f"HEIGHT 1\nVIEWPOINT {viewpoint}\nPOINTS {N}\nDATA ascii\n")
        (tmp_path / "c.pcd").write_text(head + body)
        got = formats.read_cloud(tmp_path / "c.pcd")
        if want is None:
            assert got.sensors is None
        else:
            assert got.sensors is not None and got.sensors.shape == (N, 3)
            np.testing.assert_array_equal(got.sensors, np.tile(want, (N, 1)))


# ---------------------------------------------------------------- E57


def test_e57_scans_land_where_their_poses_put_them(tmp_path: Path) -> None:
    pytest.importorskip("pye57")
    world, rgb, sensors = write_e57_sphere(tmp_path / "s.e57", n=300)
    got = formats.read_cloud(tmp_path / "s.e57")
    np.testing.assert_allclose(got.points, world, rtol=0, atol=1e-6)
    assert got.normals is None and got.colors is not None and got.sensors is not None
    np.testing.assert_allclose(got.colors[:, :3] * 255, rgb, atol=1e-3)
    np.testing.assert_array_equal(got.sensors, sensors)
    assert len(np.unique(sensors, axis=0)) == 2


def test_bad_e57_files(tmp_path: Path) -> None:
    pye57 = pytest.importorskip("pye57")
    (tmp_path / "text.e57").write_text("x y z\n1 2 3\n")
    bad(tmp_path / "text.e57", "text.e57", "not an e57 file")
    assert (tmp_path / "text.e57").exists()
    write_e57_sphere(tmp_path / "s.e57", n=300)
    whole = (tmp_path / "s.e57").read_bytes()
    (tmp_path / "cut.e57").write_bytes(whole[: len(whole) // 2])
    bad(tmp_path / "cut.e57", "cut.e57", "not a readable e57 file")
    assert (tmp_path / "cut.e57").exists()  # pye57 removes files it fails to open for writing; never ours
    pye57.E57(str(tmp_path / "none.e57"), mode="w").close()
    bad(tmp_path / "none.e57", "none.e57", "holds no scans")


# ---------------------------------------------------------------- 3D Gaussian Splatting PLY


def test_splat_ply(tmp_path: Path) -> None:
    """Centres, DC colours, shortest axes as normals (up to sign); floaters and degenerate splats counted."""
    truth = write_splat_sphere(tmp_path / "s.ply", n=500)
    got = formats.read_cloud(tmp_path / "s.ply")
    assert got.dropped == {"faint_splats": truth.faint, "degenerate_splats": truth.degenerate}
    np.testing.assert_array_equal(got.points, truth.points)
    assert got.colors is not None and got.normals is not None and not got.normals_oriented
    np.testing.assert_allclose(got.colors[:, :3], truth.colors, atol=1e-6)
    np.testing.assert_allclose(np.abs(np.einsum("ij,ij->i", got.normals, truth.normals)), 1.0, atol=1e-5)
    everything = formats.read_cloud(tmp_path / "s.ply", splat_min_opacity=0.0)
    assert everything.dropped["faint_splats"] == 0 and len(everything.points) == 500 + truth.faint
    bad_all = tmp_path / "faint.ply"
    write_splat_sphere(bad_all, n=20)
    with pytest.raises(InputError, match="faint splats"):
        formats.read_cloud(bad_all, splat_min_opacity=0.999)


def test_splat_ply_without_its_fields(tmp_path: Path) -> None:
    v = np.zeros(20, dtype=[(a, "f4") for a in ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                                                  "scale_0", "scale_1", "scale_2")])
    PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp_path / "s.ply"))
    error = bad(tmp_path / "s.ply", "s.ply", "gaussian-splat", "rot_0, rot_1, rot_2, rot_3")
    assert "export the splats again" in error.hint.lower()
