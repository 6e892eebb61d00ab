#!/usr/bin/env python3
"""The project's one entry point.

    python3 build.py demo    reconstruct the bundled example cloud; writes out/example_mesh.ply and .png
    python3 build.py test    lint, type checks and the test suite
    python3 build.py bench   the quality and speed benchmark against Poisson (see bench/README.md)

Each command creates or reuses the virtual environment ``.venv`` (Python 3.11)
and installs the pinned requirements into it, so a fresh clone needs nothing
else.  Standard library only: this file runs before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
# optional.txt (packages of some file formats) is installed too, so that those formats' tests run.
REQUIREMENTS = [ROOT / "requirements" / name for name in ("engine.txt", "optional.txt", "dev.txt")]
# Fixed thread counts keep timings and results stable on CI's 2 cores; PASSIVE stops
# OpenMP threads from busy-waiting when the machine is oversubscribed.
THREAD_ENV = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}


def find_python311() -> str:
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    if found is None:
        sys.exit("build.py: Python 3.11 is needed for .venv (the engine's and Blender 4.2-5.0's Python); "
                 "install python3.11 and run again.")
    return found


def run(cmd: list[str], env: dict[str, str] | None = None) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env={**os.environ, **THREAD_ENV, **(env or {})})


def ensure_venv(requirements: list[Path] = REQUIREMENTS, venv: Path = VENV) -> None:
    """Create the environment if missing and install the pinned requirements when they changed."""
    python, stamp = venv / "bin" / "python", venv / ".requirements-sha256"
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in requirements)).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return
    if not python.exists():
        subprocess.check_call([find_python311(), "-m", "venv", str(venv)])
    args = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    for req in requirements:
        args += ["-r", str(req)]
    if subprocess.call(args) != 0:
        sys.exit("build.py: installing the requirements failed (see pip's message above).")
    stamp.write_text(digest)


def cmd_test(extra: list[str]) -> int:
    ensure_venv()
    for check in ([str(PY), "-m", "ruff", "check", "engine", "tests", "bench", "build.py"],
                  [str(PY), "-m", "mypy", "engine"]):
        if run(check) != 0:
            return 1
    return run([str(PY), "-m", "pytest", "-q", "tests", *extra])


def cmd_demo(extra: list[str]) -> int:
    ensure_venv()
    return run([str(PY), "-m", "examples.demo", *extra])


BENCH_VENV = ROOT / ".venv-bench"


def cmd_bench(extra: list[str]) -> int:
    """Peers (Open3D, PyMeshLab) live in their own environment, .venv-bench; ours runs from .venv."""
    ensure_venv()
    ensure_venv([ROOT / "requirements" / "bench.txt"], BENCH_VENV)
    bench_py = BENCH_VENV / "bin" / "python"
    if subprocess.call([str(bench_py), "-c", "import open3d"], stderr=subprocess.DEVNULL) != 0:
        sys.exit("build.py: open3d does not import; it needs libusb-1.0 (Debian: apt-get install libusb-1.0-0).")
    return run([str(bench_py), "bench/quality.py", "--ours-python", str(PY), "--peer-python", str(bench_py), *extra])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["demo", "test", "bench"])
    parser.add_argument("args", nargs=argparse.REMAINDER, help="passed on to the command")
    ns = parser.parse_args()
    return {"demo": cmd_demo, "test": cmd_test, "bench": cmd_bench}[ns.command](ns.args)


if __name__ == "__main__":
    sys.exit(main())
