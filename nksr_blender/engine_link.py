"""Where the engine's source lives, which Python runs it, and the one engine process we keep.

The engine runs in its own process, started with the user's engine interpreter
(torch lives there, never inside Blender).  Its source travels in the extension
zip under ``engine_source/engine`` (``build.py extension`` puts it there); in a
repository checkout it is the top-level ``engine/`` folder.  The light modules of
that package (the wire protocol and the client: standard library and numpy only)
are loaded here under this add-on's own name, ``<add-on>.engine``, so nothing adds a
top-level package called ``engine`` to Blender's ``sys.path``.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ENV_VAR = "NKSR_ENGINE_PYTHON"
PRIVATE_ENV_FOLDER = "engine-env"


class EngineSetupError(Exception):
    """No engine interpreter works; the message names every place we looked and how to fix each."""


def engine_root() -> Path:
    """The folder that contains the ``engine`` package (bundled in the zip, or the repository)."""
    for root in (HERE / "engine_source", HERE.parent):
        if (root / "engine" / "service" / "protocol.py").is_file():
            return root
    raise EngineSetupError("The engine's source is missing from the add-on (engine_source/engine). "
                           "Reinstall the extension from its zip.")


def requirements_file() -> Path:
    """The engine's pinned requirements, which the set-up operator installs into the private environment."""
    root = engine_root()
    for path in (root / "requirements.txt", root / "requirements" / "engine.txt"):
        if path.is_file():
            return path
    raise EngineSetupError("The engine's requirements file is missing from the add-on. Reinstall the extension.")


def _engine_package() -> ModuleType:
    name = f"{__package__}.engine"
    if name in sys.modules:
        return sys.modules[name]
    folder = engine_root() / "engine"
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def engine_module(name: str) -> ModuleType:
    """One of the engine's light modules (stdlib + numpy: client, files, errors), under this add-on's name."""
    _engine_package()
    return importlib.import_module(f"{__package__}.engine.{name}")


def client_api() -> ModuleType:
    """The engine's client module (stdlib + numpy), imported under this add-on's name."""
    return engine_module("service.client")


def options_api() -> ModuleType:
    """The engine's option table (stdlib only): the properties take defaults, ranges and help from it."""
    return engine_module("options")


def user_folder(name: str) -> Path:
    """A writable folder of this extension (Blender's extension user path; a temp folder outside one)."""
    try:
        import bpy

        return Path(bpy.utils.extension_path_user(__package__, path=name, create=True))
    except (ValueError, AttributeError):
        path = Path(tempfile.gettempdir()) / "nksr_blender" / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def log_path() -> Path:
    """Where the engine's stderr goes (appended): the first place to look when a run fails."""
    return user_folder("logs") / "engine.log"


def private_env() -> Path:
    return user_folder("") / PRIVATE_ENV_FOLDER


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@dataclass
class Candidate:
    """One place an engine interpreter may come from, in the order they are tried."""

    source: str
    python: str
    fix: str


def candidates(preference: str) -> list[Candidate]:
    return [
        Candidate(f"environment variable {ENV_VAR}", os.environ.get(ENV_VAR, ""),
                  f"set {ENV_VAR} to a Python that has the engine's requirements (torch, numpy, scipy)"),
        Candidate("add-on preference 'Engine Python'", bpy_path(preference),
                  "Preferences > Add-ons > NKSR: choose a Python with torch, then press Check Engine"),
        Candidate("private engine environment", str(venv_python(private_env())),
                  "Preferences > Add-ons > NKSR: press Create Engine Environment (needs online access)"),
    ]


def bpy_path(path: str) -> str:
    """Blender's '//'-relative paths made absolute (no-op outside Blender)."""
    if not path:
        return ""
    try:
        import bpy

        return bpy.path.abspath(path)
    except ImportError:
        return path


def usable_pythons(preference: str) -> list[str]:
    """The candidates' interpreters that are set and exist, in the order they are tried."""
    return [c.python for c in candidates(preference) if c.python and Path(c.python).is_file()]


def new_client(python: str) -> Any:
    """An engine client (not started) for ``python``, on the bundled engine, logging to the add-on's log."""
    return client_api().EngineClient(python, engine_dir=engine_root(), log_path=log_path())


class _Session:
    """The engine process we keep between runs (starting one imports torch: seconds)."""

    def __init__(self) -> None:
        self.client: Any = None
        self.python = ""

    def client_for(self, preference: str) -> Any:
        """A started client, trying each interpreter candidate in order; EngineSetupError when none works."""
        usable = usable_pythons(preference)
        if self.client is not None and self.client.running and usable and usable[0] == self.python:
            return self.client
        api = client_api()
        problems = []
        for cand in candidates(preference):
            if not cand.python:
                problems.append(f"- {cand.source}: not set. Fix: {cand.fix}.")
                continue
            if Path(cand.python).is_dir():
                problems.append(f"- {cand.source}: {api.folder_not_python(cand.python)}. Fix: {cand.fix}.")
                continue
            if not Path(cand.python).is_file():
                problems.append(f"- {cand.source}: {cand.python} does not exist. Fix: {cand.fix}.")
                continue
            client = new_client(cand.python)
            try:
                client.start()
            except api.ClientError as exc:
                client.close()
                problems.append(f"- {cand.source}: {cand.python} did not start the engine ({exc}). Fix: {cand.fix}.")
                continue
            self.shutdown()
            self.client, self.python = client, cand.python
            return client
        raise EngineSetupError("No engine interpreter works. Tried, in order:\n" + "\n".join(problems)
                               + f"\nThe engine log is {log_path()}.")

    def begin(self, preference: str) -> Any:
        """The kept engine if it runs (or is starting), else the first usable interpreter's, spawned without waiting.

        The UI path polls the start (``client.poll_start``) from its timer instead
        of freezing Blender for the seconds torch takes to import.  When that
        start fails, :meth:`client_for` tries every candidate and explains.
        """
        usable = usable_pythons(preference)
        if not usable:
            return self.client_for(preference)  # raises EngineSetupError naming every candidate
        client = self.client
        if client is not None and (client.running or client.starting) and self.python == usable[0]:
            return client
        self.shutdown()
        client = new_client(usable[0])
        try:
            client.start(wait=False)
        except client_api().ClientError:
            client.close()
            return self.client_for(preference)
        self.client, self.python = client, usable[0]
        return client

    def shutdown(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client, self.python = None, ""


session = _Session()
atexit.register(session.shutdown)
