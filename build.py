#!/usr/bin/env python3
"""The project's one entry point.

    python3 build.py demo       the example cloud through Blender: out/example.blend, example_mesh.ply and .png
    python3 build.py check      lint and type checks only (ruff, mypy): seconds
    python3 build.py test       the check and the whole test suite (engine and Blender); what CI runs
    python3 build.py test --quick   for development: the check and the tests not marked ``slow``
                                (Blender 5.0 only, not the 4.2 rerun), in a few minutes
    python3 build.py extension  build and validate the Blender extension zip in dist/
    python3 build.py bench      the quality and speed benchmark against Poisson (see bench/README.md)

Each command creates or reuses the virtual environments it needs and installs
the pinned requirements into them, so a fresh clone needs nothing else:
``.venv`` is the engine's (torch, numpy 2), ``.venv-blender`` Blender's (the bpy
module, which pins numpy 1.26), the same split as a real install.  Standard
library only: this file runs before anything is installed.
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
# engine.txt includes formats.txt (the file formats' packages), listed here too so that a change to it reinstalls;
# optional.txt (Dask) is installed too, so that the cluster executor's tests run.
REQUIREMENTS = [ROOT / "requirements" / name for name in ("engine.txt", "formats.txt", "optional.txt", "dev.txt")]
BLENDER_VENV = ROOT / ".venv-blender"
BLENDER_PY = BLENDER_VENV / "bin" / "python"
BLENDER_REQUIREMENTS = [ROOT / "requirements" / "blender.txt"]
# The Blender suite also runs on the oldest supported Blender (4.2 LTS, the manifest's minimum).
BLENDER_LTS_VENV = ROOT / ".venv-blender-4.2"
BLENDER_LTS_REQUIREMENTS = [ROOT / "requirements" / "blender-4.2.txt"]
DIST = ROOT / "dist"
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


def blender_env() -> dict[str, str]:
    """The Blender side runs the engine from .venv, as a user's Blender runs it from their engine Python."""
    return {"NKSR_ENGINE_PYTHON": str(PY)}


def cmd_check(extra: list[str]) -> int:
    """Ruff and mypy only: the answer in seconds, before (and as part of) the test suite."""
    ensure_venv()
    for check in ([str(PY), "-m", "ruff", "check", "engine", "nksr_blender", "tests", "bench", "examples",
                   "build.py"],
                  [str(PY), "-m", "mypy", "engine"],
                  [str(PY), "-m", "mypy", "nksr_blender"]):
        if run(check) != 0:
            return 1
    return 0


def cmd_test(extra: list[str]) -> int:
    """The check, then every test; ``--quick`` leaves out the tests marked ``slow`` and the Blender 4.2 rerun.

    Other arguments go to pytest.  Without ``--quick`` nothing is deselected: CI runs this.
    """
    quick = "--quick" in extra
    extra = [a for a in extra if a != "--quick"]
    # pytest's 5 (no test collected) is a failure of the whole suite, but not of a selection (-k) that one
    # of the suites has no test for.
    passed = (0, 5) if extra else (0,)
    if quick:
        extra = ["-m", "not slow", *extra]
    blender_venvs = [BLENDER_VENV] if quick else [BLENDER_VENV, BLENDER_LTS_VENV]
    ensure_venv()
    ensure_venv(BLENDER_REQUIREMENTS, BLENDER_VENV)
    if not quick:
        ensure_venv(BLENDER_LTS_REQUIREMENTS, BLENDER_LTS_VENV)
    if cmd_check([]) != 0:
        return 1
    pytest = ["-m", "pytest", "-q", "--durations=10"]  # the slowest tests named in every log, CI's too
    if run([str(PY), *pytest, "tests/engine", "tests/extension", "tests/bench", *extra]) not in passed:
        return 1
    for venv in blender_venvs:
        if run([str(venv / "bin" / "python"), *pytest, "tests/blender", *extra],
               blender_env()) not in passed:
            return 1
    return 0


def blender_ext_tool() -> Path:
    """Blender's own extension builder and validator, shipped inside the bpy wheel."""
    found = sorted(BLENDER_VENV.glob("lib/python3*/site-packages/bpy/*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        sys.exit("build.py: blender_ext.py not found in .venv-blender's bpy; delete .venv-blender and run again.")
    return found[-1]


def stage_extension(stage: Path) -> None:
    """The extension's files as Blender installs them: the add-on, its manifest and the engine's source."""
    if stage.exists():
        shutil.rmtree(stage)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "nksr_blender", stage, ignore=ignore)
    shutil.copy2(ROOT / "blender_manifest.toml", stage / "blender_manifest.toml")
    shutil.copytree(ROOT / "engine", stage / "engine_source" / "engine", ignore=ignore)
    shutil.copy2(ROOT / "requirements" / "engine.txt", stage / "engine_source" / "requirements.txt")
    shutil.copy2(ROOT / "requirements" / "formats.txt", stage / "engine_source" / "formats.txt")  # its "-r"


def build_extension(output_dir: Path = DIST) -> Path:
    """Build the zip with Blender's builder, validate it, and return its path."""
    ensure_venv(BLENDER_REQUIREMENTS, BLENDER_VENV)
    stage = output_dir / "stage" / "nksr_blender"
    stage_extension(stage)
    tool = str(blender_ext_tool())
    output_dir.mkdir(parents=True, exist_ok=True)
    if run([str(BLENDER_PY), tool, "build", "--source-dir", str(stage), "--output-dir", str(output_dir)]) != 0:
        sys.exit("build.py: Blender's extension builder rejected the package (see above).")
    zips = sorted(output_dir.glob("nksr_blender-*.zip"), key=lambda p: p.stat().st_mtime)
    if not zips or run([str(BLENDER_PY), tool, "validate", str(zips[-1])]) != 0:
        sys.exit("build.py: the extension zip did not validate (see above).")
    shutil.rmtree(output_dir / "stage")
    return zips[-1]


def cmd_extension(extra: list[str]) -> int:
    print(f"build.py: extension ready: {build_extension()}")
    return 0


def cmd_demo(extra: list[str]) -> int:
    """Reconstruct the bundled example through the real Blender module and the real engine process."""
    ensure_venv()
    ensure_venv(BLENDER_REQUIREMENTS, BLENDER_VENV)
    return run([str(BLENDER_PY), "examples/demo.py", *extra], blender_env())


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
    parser.add_argument("command", choices=["demo", "check", "test", "extension", "bench"])
    parser.add_argument("args", nargs=argparse.REMAINDER, help="passed on to the command")
    ns = parser.parse_args()
    commands = {"demo": cmd_demo, "check": cmd_check, "test": cmd_test, "extension": cmd_extension, "bench": cmd_bench}
    return commands[ns.command](ns.args)


if __name__ == "__main__":
    sys.exit(main())
