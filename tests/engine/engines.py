"""Helpers of the server and client tests: the test cloud, its in-process mesh, process checks, a stub engine."""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

import numpy as np

from engine import Mesh, reconstruct
from engine.service import protocol
from tests import shapes

ROOT = Path(__file__).resolve().parents[2]
# Engines get the thread count of the in-process runs (tests/conftest.py), so their results match bit for bit.
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
POINTS, NORMALS = shapes.sphere(2000, radius=2.0)
POINTS += [1000.0, -20.0, 3.0]  # an offset, so the origin matters
COLORS = np.clip(np.abs(NORMALS), 0, 1).astype(np.float32)
# A job that stands in the solve stage until cancelled or killed (the engine's test hook): a real solve of POINTS
# ends in under a second, too soon for a test to catch it there on every machine.
LONG = {"device": "cpu", "_test_hold_seconds": 600.0}
# A real solve that runs as long as it can: the finest level to float precision.
TIGHT = {"device": "cpu", "solver_tol": 1e-30, "solver_max_iter": 1_000_000}


@functools.cache
def in_process() -> Mesh:
    """The reference: the same cloud reconstructed in this process."""
    return reconstruct(POINTS, NORMALS, COLORS, device="cpu")


def expected_stages(levels: int) -> list[str]:
    return ["clean", "resolution", "normals", "hierarchy", *["system", "solve"] * levels, "mesh", "trim", "simplify",
            "colors",
            "vertex_normals"]


def collapse(stages: list[str]) -> list[str]:
    """Runs of one stage as one entry."""
    return [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (its children, theirs...), from the parent links in /proc (Linux)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            except (OSError, ValueError):
                continue
            if state != "Z":
                parents[int(entry)] = int(ppid)
    found: set[int] = set()
    level = {pid}
    while level:
        level = {p for p, pp in parents.items() if pp in level} - found
        found |= level
    return found


def all_gone_within(pids: set[int], seconds: float) -> set[int]:
    """Those of ``pids`` still running after ``seconds`` (an empty set once all have ended)."""
    end = time.monotonic() + seconds
    while (left := {p for p in pids if alive(p)}) and time.monotonic() < end:
        time.sleep(0.05)
    return left


def gone_within(pid: int, seconds: float) -> bool:
    return not all_gone_within({pid}, seconds)


STUB = '''"""A stuck engine: says hello, then sends progress forever and never reads its stdin."""
import json, os, struct, sys, time

def frame(**header):
    head = json.dumps({**header, "arrays": []}).encode()
    return struct.pack("<I", len(head)) + head

out = os.fdopen(1, "wb")
out.write(frame(type="hello", engine_version="stub", protocol_version=PROTOCOL, pid=os.getpid()))
out.flush()
while True:
    out.write(frame(type="progress", stage="solve", fraction=0.5, text="stuck"))
    out.flush()
    time.sleep(0.1)
'''


def stub_engine_dir(tmp: Path, protocol_version: int = protocol.PROTOCOL_VERSION) -> Path:
    """A folder whose ``engine`` package is :data:`STUB`: starts in a blink, never finishes, ignores cancel."""
    pkg = tmp / "stub" / "engine"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(STUB.replace("PROTOCOL", str(protocol_version)))
    return pkg.parent


def python_wrapper(tmp: Path, name: str, body: str) -> Path:
    """An executable script standing in for an engine interpreter."""
    path = tmp / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


PYTHON = sys.executable
