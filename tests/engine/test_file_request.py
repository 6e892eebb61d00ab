"""``reconstruct_file``: the engine reads a cloud from a path itself (as the CLI does) and sends back only the mesh."""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine import Mesh, reconstruct
from engine.service import protocol
from engine.service.client import EngineClient, RemoteError
from tests.engine.engines import ENV, LONG, NORMALS, POINTS, ROOT
from tests.engine.test_server import Raw, echo
from tests.scanfiles import write_e57_sphere


def write_pcd(path: Path, points: np.ndarray) -> None:
    """An ASCII PCD of x y z, as PCL writes it."""
    head = (f"# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 8 8 8\nTYPE F F F\nCOUNT 1 1 1\nWIDTH {len(points)}\n"
            f"HEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {len(points)}\nDATA ascii\n")
    path.write_text(head + "\n".join(" ".join(repr(float(c)) for c in p) for p in points) + "\n")


def file_request(raw: Raw, path: Path, sensors: np.ndarray | None = None, **fields: object) -> list:
    arrays = {"sensors": sensors} if sensors is not None else {}
    options = fields.pop("options", {"device": "cpu"})
    raw.send(protocol.frame("reconstruct_file", arrays, options=options, path=str(path), **fields))
    return raw.until("result", "error")


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Raw]:
    r = Raw(tmp_path_factory.mktemp("serve") / "engine.log")
    r.hello = r.next()
    yield r
    if r.proc.poll() is None:
        r.proc.kill()
        r.proc.wait()


@functools.cache
def as_read() -> Mesh:
    """The reference: the file's numbers reconstructed in this process.  Readers keep normals as float32 (as
    files store them); float64 normals differ in the last bit after normalising, and the simplifier's collapse
    order can turn that into different faces, so the reference takes the numbers the reader gives."""
    return reconstruct(POINTS, NORMALS.astype(np.float32), device="cpu")


def test_a_file_request_gives_the_mesh_of_the_same_points_sent_as_arrays(raw: Raw, tmp_path: Path) -> None:
    np.save(tmp_path / "cloud.npy", np.hstack([POINTS, NORMALS]))
    *frames, result = file_request(raw, tmp_path / "cloud.npy")
    assert result.type == "result", result.fields
    assert frames[0]["stage"] == "read"  # the reading is a stage of its own: a large file takes a while
    ref = as_read()
    assert np.array_equal(result.arrays["faces"], ref.faces)
    assert result["origin"] == ref.origin.tolist()  # georeferenced: vertices come back relative to the origin
    # as test_client: simplified vertices carry float32 noise
    np.testing.assert_allclose(result.arrays["vertices"], ref.local_vertices, atol=1e-5)
    stats = result["stats"]
    assert stats["points_read"] == len(POINTS) and stats["sensor_source"] is None
    assert stats["read_dropped"] == {}


def test_the_files_sensors_orient_the_normals_unless_the_request_gives_one(raw: Raw, tmp_path: Path) -> None:
    pytest.importorskip("pye57")
    centre = np.array([10.0, -5.0, 2.0])
    write_e57_sphere(tmp_path / "in.e57", n=1500, centre=centre)
    result = file_request(raw, tmp_path / "in.e57", options={"device": "cpu", "voxel_size": 0.1})[-1]
    assert result.type == "result", result.fields
    assert result["stats"]["sensor_source"] == "file" and result["stats"]["normals_orientation"] == "sensor"
    v = result.arrays["vertices"] + np.array(result["origin"])
    assert np.abs(np.linalg.norm(v - centre, axis=1) - 1.0).max() < 0.05
    given = file_request(raw, tmp_path / "in.e57", sensors=(centre + [0, 0, 5.0])[None],
                         options={"device": "cpu", "voxel_size": 0.1})[-1]
    assert given.type == "result" and given["stats"]["sensor_source"] == "option"


@pytest.mark.parametrize("name, content, words", [
    ("missing.pcd", None, "no such file"),
    ("broken.pcd", b"# .PCD v0.7\nFIELDS x y z\nnot a header\n", "not a readable PCD file"),
    ("cloud.dwg", b"anything", "cannot read '.dwg'"),
])
def test_a_bad_file_is_an_input_error_and_the_engine_goes_on(raw: Raw, tmp_path: Path, name: str,
                                                             content: bytes | None, words: str) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    reply = file_request(raw, tmp_path / name)[-1]
    assert reply.type == "error" and reply["code"] == "input", reply.fields
    assert words in reply["message"] and name in reply["message"] and reply["hint"]
    echo(raw)


def test_a_bad_opacity_is_refused(raw: Raw, tmp_path: Path) -> None:
    np.save(tmp_path / "cloud.npy", POINTS)
    reply = file_request(raw, tmp_path / "cloud.npy", splat_min_opacity=1.5)[-1]
    assert reply.type == "error" and reply["code"] == "input" and "splat_min_opacity" in reply["message"]


def test_cancel_stops_a_file_job(raw: Raw, tmp_path: Path) -> None:
    np.save(tmp_path / "cloud.npy", np.hstack([POINTS, NORMALS]))
    raw.send(protocol.frame("reconstruct_file", options=LONG, path=str(tmp_path / "cloud.npy")))
    while (m := raw.next()).get("stage") != "solve":
        assert m.type in ("progress", "heartbeat"), m.fields
    raw.send(protocol.frame("cancel"))
    reply = raw.until("result", "error", timeout=10)[-1]
    assert reply.type == "error" and reply["code"] == "cancelled"
    echo(raw)  # the cancel was this job's, not the next one's


def test_the_client_sends_a_path_and_gets_the_mesh(tmp_path: Path) -> None:
    np.save(tmp_path / "cloud.npy", np.hstack([POINTS, NORMALS]))
    with EngineClient(sys.executable, engine_dir=ROOT) as client:
        job = client.submit_file(tmp_path / "cloud.npy", device="cpu")
        mesh = job.wait(120)
        assert np.array_equal(mesh.faces, as_read().faces) and mesh.stats["points_read"] == len(POINTS)
        with pytest.raises(RemoteError) as bad:
            client.submit_file(tmp_path / "none.xyz", device="cpu").wait(60)
        assert bad.value.code == "input" and "no such file" in str(bad.value)


def test_a_missing_format_package_is_named_with_its_install_command(tmp_path: Path) -> None:
    hidden = tmp_path / "hide" / "pypcd4"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('hidden by the test: not installed')\n")
    write_pcd(tmp_path / "cloud.pcd", POINTS)
    env = {**ENV, "PYTHONPATH": str(tmp_path / "hide")}
    with EngineClient(sys.executable, engine_dir=ROOT, env=env) as client:
        with pytest.raises(RemoteError) as missing:
            client.submit_file(tmp_path / "cloud.pcd", device="cpu").wait(60)
    assert missing.value.code == "input" and missing.value.reason == "missing_package"
    assert "pypcd4" in missing.value.message and "pip install pypcd4" in missing.value.hint


def test_the_cli_reads_through_the_same_function(tmp_path: Path) -> None:
    """One reading path: the CLI's sensor and splat handling is engine.scanfile's (no twin in engine/cli.py)."""
    source = (ROOT / "engine" / "cli.py").read_text()
    assert "read_input(" in source and "orient_axes(" not in source and "read_cloud(" not in source
    done = subprocess.run([sys.executable, "-m", "engine", "reconstruct", "--help"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, check=True)
    assert "--sensor" in done.stdout


def test_the_light_list_of_inputs_is_the_format_tables() -> None:
    """Blender filters its file browser by engine.suffixes (it cannot import engine.formats): the same list."""
    from engine import formats, suffixes

    assert suffixes.CLOUD_INPUTS == tuple(formats.READERS)
    assert suffixes.glob().split(";") == [f"*{s}" for s in formats.READERS]
