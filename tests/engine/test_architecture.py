"""The engine's import boundaries, checked by importing the modules in a fresh interpreter.

Blender loads the service (protocol, client), the option table, the errors and the
mesh type without torch, and ``python -m engine --help`` or a bad input file must not
wait for torch.  Which files may import torch at module level is written once, in
pyproject.toml (the files exempt from ruff's TID253 there); every other engine module,
including any new one, is imported here and must leave torch unloaded.  No engine
module may load bpy: the engine runs outside Blender.
"""

from __future__ import annotations

import fnmatch
import subprocess
import tomllib

from tests.engine.engines import ENV, PYTHON, ROOT

ENGINE = ROOT / "engine"
NOT_IMPORTABLE = {"engine.__main__"}  # importing it runs the command line

# Reports the first module after whose import a banned module is loaded, or nothing.
CHECK = """
import importlib, sys
banned = {banned!r}
for name in {modules!r}:
    importlib.import_module(name)
    loaded = [b for b in banned if b in sys.modules]
    if loaded:
        sys.exit(f"importing {{name}} loaded {{', '.join(loaded)}}")
"""


def torch_allowed() -> list[str]:
    """The engine files ruff lets import torch at module level (pyproject.toml's TID253 exemptions)."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        ignores = tomllib.load(f)["tool"]["ruff"]["lint"]["per-file-ignores"]
    return [glob for glob, rules in ignores.items() if glob.startswith("engine/") and "TID253" in rules]


def engine_modules() -> dict[str, str]:
    """Every importable engine module by dotted name, with its path relative to the repository."""
    out = {}
    for path in sorted(ENGINE.rglob("*.py")):
        rel = path.relative_to(ROOT)
        parts = rel.with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name not in NOT_IMPORTABLE:
            out[name] = rel.as_posix()
    return out


def light_modules() -> list[str]:
    allowed = torch_allowed()
    return [name for name, rel in engine_modules().items() if not any(fnmatch.fnmatch(rel, g) for g in allowed)]


def first_offender(modules: list[str], banned: list[str]) -> str:
    """Import ``modules`` in order in a fresh engine interpreter; the error naming the culprit, or ''."""
    proc = subprocess.run([PYTHON, "-c", CHECK.format(banned=banned, modules=modules)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
    return proc.stderr.strip() if proc.returncode else ""


def test_the_boundary_lists_are_what_the_layout_says() -> None:
    """A typo in pyproject.toml or a moved folder must not make the check below vacuous."""
    light = light_modules()
    for name in ("engine", "engine.errors", "engine.options", "engine.mesh", "engine.cli", "engine.files",
                 "engine.service", "engine.service.protocol", "engine.service.client", "engine.service.server",
                 "engine.formats", "engine.formats.ply", "engine.formats.gltf"):
        assert name in light
    for name in ("engine.pipeline", "engine.device", "engine.solver.cg", "engine.surface.meshing",
                 "engine.large.blend"):
        assert name in engine_modules() and name not in light


def test_light_modules_do_not_load_torch_or_bpy() -> None:
    assert first_offender(light_modules(), ["torch", "bpy"]) == ""


def test_no_engine_module_loads_bpy() -> None:
    assert first_offender(list(engine_modules()), ["bpy"]) == ""


def test_the_old_client_path_still_works_and_says_where_it_moved() -> None:
    code = ("import warnings, sys\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import engine.client as old\n"
            "import engine.service.client as new\n"
            "assert old.EngineClient is new.EngineClient and old.EngineStalled is new.EngineStalled\n"
            "assert any(issubclass(x.category, DeprecationWarning) and 'engine.service.client' in str(x.message)"
            " for x in w), [str(x.message) for x in w]\n")
    done = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
