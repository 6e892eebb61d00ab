"""The panel's and the operator's properties take their defaults, ranges and tooltips from the engine's table."""

from __future__ import annotations

from types import ModuleType

import bpy
import pytest

# Blender property -> what stands for the option's unset value (None: the option has a value of its own).
ZERO_UNSETS = {"voxel_size": True, "chunk_size": True, "memory_limit_gb": True, "max_faces": True}
SHARED = ["detail_level", "voxel_size", "mise_iter", "max_faces", "trim", "keep_fragments", "watertight",
          "register_views", "prior", "estimate_normals", "keep_normals", "chunk_size", "overlap_ratio",
          "memory_limit_gb", "workers"]


def spec_values(addon: ModuleType, name: str) -> tuple[str, ...]:
    """The values a string option with a fixed set takes (``prior``: engine.options.PRIORS)."""
    return {"prior": addon.engine_link.options_api().PRIORS}[name]


@pytest.mark.parametrize("owner", ["NKSR_Settings", "NKSR_OT_reconstruct"])
@pytest.mark.parametrize("name", SHARED)
def test_property_follows_the_option_table(addon: ModuleType, owner: str, name: str) -> None:
    spec = addon.engine_link.options_api().SPECS[name]
    rna = (addon.settings.NKSR_Settings.bl_rna if owner == "NKSR_Settings"
           else bpy.ops.nksr.reconstruct.get_rna_type()).properties[name]
    help_text = spec.help[0].upper() + spec.help[1:]
    assert rna.description.startswith(help_text), (rna.description, help_text)
    if spec.kind is bool:
        assert rna.default == spec.default
        return
    if spec.kind is str:  # an enum: the option's values, upper-cased as Blender's identifiers are
        assert rna.default == spec.default.upper()
        assert [item.identifier for item in rna.enum_items] == [v.upper() for v in spec_values(addon, name)]
        return
    low = 0 if ZERO_UNSETS.get(name) else spec.minimum
    assert rna.hard_min == pytest.approx(low)
    if spec.maximum is not None:
        assert rna.hard_max == pytest.approx(spec.maximum)
    if spec.default is not None and not isinstance(spec.default, str):
        assert rna.default == pytest.approx(spec.default)
    if ZERO_UNSETS.get(name):
        assert rna.default == 0 and "0 leaves it unset" in rna.description


def test_refinement_is_capped_where_the_engine_caps_it(addon: ModuleType, scene: bpy.types.Scene) -> None:
    """The engine refuses mise_iter 4 and above; the panel cannot even hold it (it clamps to the same range)."""
    scene.nksr.mise_iter = 10
    assert scene.nksr.mise_iter == addon.engine_link.options_api().SPECS["mise_iter"].maximum == 3


class _Layout:
    """Records the properties a panel's ``draw`` lays out (the UI itself needs a window, which tests lack)."""

    def __init__(self, shown: list[str]) -> None:
        self.shown = shown

    def __getattr__(self, name: str) -> object:
        if name in ("column", "row", "box"):
            return lambda *a, **k: _Layout(self.shown)
        return lambda *a, **k: None

    def prop(self, data: object, name: str, **kwargs: object) -> None:
        self.shown.append(name)


def test_panel_shows_every_setting_including_watertight(addon: ModuleType, scene: bpy.types.Scene) -> None:
    shown: list[str] = []
    panel = type("Drawn", (), {"layout": _Layout(shown)})()
    addon.panel.NKSR_PT_reconstruct.draw(panel, bpy.context)
    assert "watertight" in shown
    assert set(shown) == set(addon.settings.OPTION_NAMES), "every setting is on the panel"


class _Labels(_Layout):
    """Records the labels a panel's ``draw`` lays out, with their icons."""

    def __init__(self, labels: list[tuple[str, str]]) -> None:
        super().__init__([])
        self.labels = labels

    def __getattr__(self, name: str) -> object:
        if name in ("column", "row", "box"):
            return lambda *a, **k: _Labels(self.labels)
        return lambda *a, **k: None

    def label(self, text: str = "", icon: str = "NONE", **kwargs: object) -> None:
        self.labels.append((text, icon))


def test_panel_shows_the_last_runs_warnings_wrapped(addon: ModuleType, scene: bpy.types.Scene) -> None:
    """Each warning of the last run in lines the sidebar does not cut short, the first with a warning icon."""
    state = bpy.context.window_manager.nksr_run
    warning = ("the given normals lie a median 10.2 degrees off the planes of their points; normals estimated "
               "from the points, turned the way the given ones face, were used instead")
    state.last_summary, state.last_warnings = "3,000 points -> 5,000 faces", warning
    try:
        labels: list[tuple[str, str]] = []
        addon.panel.NKSR_PT_reconstruct.draw(type("Drawn", (), {"layout": _Labels(labels)})(), bpy.context)
    finally:
        state.last_summary, state.last_warnings = "", ""
    lines = [(text, icon) for text, icon in labels if icon in ("ERROR", "BLANK1")]
    assert [icon for _, icon in lines] == ["ERROR"] + ["BLANK1"] * (len(lines) - 1) and len(lines) > 2
    assert " ".join(text for text, _ in lines) == warning
    assert max(len(text) for text, _ in lines) <= addon.panel.WARNING_WIDTH
