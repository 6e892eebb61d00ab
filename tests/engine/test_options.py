"""The option table: one definition per option, every range checked before any work, in every entry point."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine import options, reconstruct
from engine.errors import MemoryLimitError
from engine.large.memory import COMPILED, REFERENCE, footprint_on, plan_memory
from engine.options import SPECS, OptionError, Options
from engine.service.client import EngineClient, InvalidRequest
from tests import shapes
from tests.engine.engines import ENV, NORMALS, POINTS, PYTHON, ROOT
from tests.engine.test_cli import engine_cli, no_traceback

# Values the table must refuse, each with the words its message must carry.
BAD: list[tuple[dict[str, Any], str]] = [
    ({"voxelsize": 0.1}, "Unknown option 'voxelsize'"),
    ({"trim": 1}, "'trim' must be true or false"),
    ({"depth": 2.5}, "'depth' must be an integer"),
    ({"mise_iter": True}, "'mise_iter' must be an integer"),
    ({"mise_iter": 10}, "'mise_iter' must be an integer from 0 to 3"),
    ({"mise_iter": -1}, "'mise_iter' must be an integer from 0 to 3"),
    ({"detail_level": "fine"}, "'detail_level' must be a number from 0 to 1 or 'auto'"),
    ({"detail_level": 1.5}, "'detail_level' must be a number from 0 to 1"),
    ({"device": None}, "'device' must be"),
    ({"device": "cuda:x"}, "'device' must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ({"solver_tol": float("nan")}, "'solver_tol' must be a number above 0"),
    ({"solver_tol": -1.0}, "'solver_tol' must be a number above 0 and at most 0.1"),
    ({"solver_tol": 0}, "'solver_tol' must be a number above 0"),
    ({"solver_max_iter": 0}, "'solver_max_iter' must be an integer from 1"),
    ({"voxel_size": [1]}, "got list"),
    ({"voxel_size": 0.0}, "'voxel_size' must be a number above 0 or unset"),
    ({"memory_limit_gb": float("inf")}, "'memory_limit_gb' must be a number above 0"),
    ({"normal_k": 2}, "'normal_k' must be an integer from 5 to 256"),
    ({"overlap_ratio": 0.9}, "'overlap_ratio' must be a number from 0 to 0.5"),
    ({"workers": 0}, "'workers' must be an integer from 1"),
    ({"executor": "spark"}, "'executor' must be 'inprocess', 'processes', 'dask' or a Dask scheduler address"),
]


def test_defaults_are_the_table_s() -> None:
    opts = Options.of()
    for name, spec in SPECS.items():
        assert getattr(opts, name) == spec.default
        assert spec.help and spec.flag and spec.default_text()
        if spec.default is not None and spec.kind is not str:
            assert spec.check(spec.default) == spec.default, f"{name}'s default is in its own range"


def test_good_values_pass_and_ints_become_floats() -> None:
    ok = {"detail_level": 0.5, "voxel_size": None, "mise_iter": 3, "trim": False, "solver_tol": 1e-3,
          "solver_max_iter": 10, "device": "cuda:1", "depth": 3, "memory_limit_gb": 2, "executor": "tcp://h:8786"}
    checked = options.check(ok)
    assert checked == ok and isinstance(checked["memory_limit_gb"], float)
    assert Options.of(ok, trim=True).trim is True
    assert options.check({"detail_level": "auto", "_benchmark_echo_faces": 4, "mesh_edges": True})


@pytest.mark.parametrize("given, words", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_values_are_refused_with_range_and_hint(given: dict[str, Any], words: str) -> None:
    with pytest.raises(OptionError, match=words.replace("(", r"\(")) as info:
        options.check(given)
    assert info.value.hint
    if "Unknown" in words:
        assert "Accepted options: auto_chunk, chunk_size, depth, detail_level" in info.value.hint
        assert "_benchmark" not in info.value.hint and "mesh_edges" not in info.value.hint, "internal ones unlisted"
    else:
        assert "default" in info.value.hint, "the hint says what the option does and its default"


@pytest.mark.parametrize("given, words", [b for b in BAD if "Unknown" not in b[1]][:8])
def test_the_api_refuses_before_any_work(given: dict[str, Any], words: str) -> None:
    start = time.perf_counter()
    with pytest.raises(OptionError):
        reconstruct(POINTS, NORMALS, **given)
    assert time.perf_counter() - start < 0.5, "refused before cleaning, normals or the solve"


def test_the_client_refuses_before_sending_anything() -> None:
    client = EngineClient(PYTHON, engine_dir=ROOT, env=ENV)
    with pytest.raises(InvalidRequest, match="'mise_iter' must be an integer from 0 to 3"):
        client.submit(POINTS, NORMALS, mise_iter=10)
    assert client.pid is None, "no engine was started for a request that cannot be sent"


@pytest.mark.parametrize("flags, words", [
    (["--mise-iter", "10"], "'mise_iter' must be an integer from 0 to 3"),
    (["--mise-iter", "-1"], "'mise_iter' must be an integer from 0 to 3"),
    (["--solver-tol", "-1"], "'solver_tol' must be a number above 0"),
    (["--solver-tol", "nan"], "'solver_tol' must be a number above 0"),
    (["--solver-max-iter", "0"], "'solver_max_iter' must be an integer from 1"),
    (["--normal-k", "3"], "'normal_k' must be an integer from 5"),
    (["--prior", "smooth"], "'prior' must be 'learned' or 'none'"),
])
def test_the_cli_refuses_before_reading_the_input(tmp_path: Path, flags: list[str], words: str) -> None:
    missing = tmp_path / "not-there.ply"  # an option error comes first: nothing is read, nothing written
    no_traceback(engine_cli("reconstruct", str(missing), str(tmp_path / "out.ply"), *flags), words)
    assert not (tmp_path / "out.ply").exists()


def test_prior_is_learned_or_none() -> None:
    """Both priors pass every entry point's check (the default is none); any other name is refused with the two."""
    assert Options.of().prior == SPECS["prior"].default == "none"
    for prior in ("learned", "none"):
        assert options.check({"prior": prior}) == {"prior": prior}
        assert Options.of(prior=prior).prior == prior
    p = argparse.ArgumentParser()
    options.add_flags(p)
    assert options.from_flags(p.parse_args(["--prior", "learned"])).prior == "learned"
    for bad in ("Learned", "smooth", "", None, 1, True):
        with pytest.raises(OptionError, match="'prior' must be 'learned' or 'none'") as info:
            options.check({"prior": bad})
        assert "default 'none'" in info.value.hint and "Kernel prior" in info.value.hint
    with pytest.raises(OptionError, match="'prior' must be 'learned' or 'none'; got 'smooth'"):
        options.from_flags(p.parse_args(["--prior", "smooth"]))


def test_cli_flags_are_the_table_s() -> None:
    p = argparse.ArgumentParser()
    options.add_flags(p)
    args = p.parse_args(["--detail", "auto", "--no-trim", "--mise-iter", "2", "--memory-limit", "3"])
    opts = options.from_flags(args)
    assert opts == Options.of(detail_level="auto", trim=False, mise_iter=2, memory_limit_gb=3.0)
    assert options.from_flags(p.parse_args([])) == Options.of(), "no flag given: every default"
    help_text = p.format_help()
    for spec in SPECS.values():
        assert spec.flag in help_text


def test_memory_guard_plans_each_solver_path_by_its_own_footprint() -> None:
    """The CPU's compiled path holds about half of what the torch path (CUDA's) does per unknown: a job the CPU
    solves whole may be chunked on a device with the same free memory."""
    import torch

    p, _ = shapes.sphere(100_000)
    canon = (p / np.linalg.norm(p.max(0) - p.min(0))).astype(np.float32)
    assert footprint_on(torch.device("cpu")) is COMPILED and footprint_on(torch.device("cuda")) is REFERENCE
    cpu = plan_memory(canon, 0.004, 3, 1 << 30, 1.0, footprint=COMPILED)
    gpu = plan_memory(canon, 0.004, 3, 1 << 30, 1.0, footprint=REFERENCE)
    assert cpu.grid is None and cpu.estimate < 1 << 30
    assert gpu.grid is not None and gpu.estimate > cpu.estimate


def test_memory_guard_counts_refinement_rounds() -> None:
    """A 100k-point sphere fits 3 GB at one round, but three rounds (16x the faces) need more."""
    p, _ = shapes.sphere(100_000)
    canon = (p / np.linalg.norm(p.max(0) - p.min(0))).astype(np.float32)
    h = 0.004  # about the automatic voxel of this sphere (canonical units)
    one = plan_memory(canon, h, 3, 3 << 30, 1.0, mise_iter=1, auto_chunk=False)
    two = plan_memory(canon, h, 3, 3 << 30, 1.0, mise_iter=2, auto_chunk=False)
    assert one.grid is None and two.estimate > one.estimate
    with pytest.raises(MemoryLimitError, match="fewer refinement rounds"):
        plan_memory(canon, h, 3, 3 << 30, 1.0, mise_iter=3, auto_chunk=False)
