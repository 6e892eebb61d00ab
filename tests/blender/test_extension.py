"""The built zip validates, installs into an isolated user folder, registers everything and uninstalls cleanly."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import bpy
import pytest

from .conftest import ADDON, USER_RESOURCES, install


def test_installed_extension_registers_operator_panel_preferences_and_command(addon: ModuleType) -> None:
    assert Path(addon.__file__).is_relative_to(USER_RESOURCES)
    assert bpy.ops.nksr.reconstruct.get_rna_type().identifier == "NKSR_OT_reconstruct"
    assert bpy.ops.nksr.check_engine.get_rna_type() is not None
    assert bpy.ops.nksr.setup_engine.get_rna_type() is not None
    assert hasattr(bpy.types, "NKSR_PT_reconstruct")
    assert bpy.context.preferences.addons[ADDON].preferences.device == "AUTO"
    assert addon.cli_command._handle is not None
    # The engine's source travels inside the zip and its light modules load under the add-on's name.
    assert (addon.engine_link.engine_root() / "engine" / "pipeline.py").is_file()
    assert addon.engine_link.client_api().__name__ == f"{ADDON}.engine.service.client"
    assert "engine" not in sys.modules and "torch" not in sys.modules


def test_manifest_asks_only_for_permissions_it_uses(extension_zip: Path) -> None:
    import tomllib
    import zipfile

    with zipfile.ZipFile(extension_zip) as zf:
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
        names = zf.namelist()
    assert set(manifest["permissions"]) == {"files", "network"}
    assert not any(n.endswith((".whl", ".pyc")) or "__pycache__" in n for n in names)
    assert "engine_source/requirements.txt" in names
    assert "engine_source/engine/prior/prior.pt" in names  # the learned prior's weights travel with the engine


def test_uninstall_leaves_nothing_behind(addon: ModuleType, extension_zip: Path) -> None:
    folder = Path(addon.__file__).parent
    assert bpy.ops.extensions.package_uninstall(repo_index=_user_repo_index(), pkg_id="nksr_blender") == {"FINISHED"}
    try:
        assert not folder.exists()
        assert ADDON not in bpy.context.preferences.addons
        assert not hasattr(bpy.types, "NKSR_PT_reconstruct")
        assert not hasattr(bpy.types.Scene, "nksr")
        assert ADDON not in sys.modules
    finally:
        reinstalled = install(extension_zip)  # the rest of the session keeps a working add-on
        sys.modules[ADDON] = reinstalled


def _user_repo_index() -> int:
    repos = bpy.context.preferences.extensions.repos
    return next(i for i, repo in enumerate(repos) if repo.module == "user_default")


def test_check_engine_shows_torch_and_devices(addon: ModuleType) -> None:
    assert bpy.ops.nksr.check_engine() == {"FINISHED"}
    info = bpy.context.preferences.addons[ADDON].preferences.engine_info
    assert "torch 2." in info and "cpu" in info and "fVDB" not in info, "no backend nothing uses"


def test_engine_environment_set_up_needs_online_access(addon: ModuleType) -> None:
    assert not bpy.app.online_access  # the bpy module starts offline, like a fresh Blender
    with pytest.raises(RuntimeError, match=r"(?s)online access is off.*Allow.*Engine Python"):
        bpy.ops.nksr.setup_engine()
    assert not addon.engine_link.private_env().exists()
