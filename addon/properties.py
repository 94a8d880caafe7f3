"""Per-scene settings of the PIPs tab (a shot's range and occlusion choice live with the shot)."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty


def _apply_occlusion(self, context):
    from . import operators

    operators.apply_occlusion_to_selection(context)


class PipstrackSettings(bpy.types.PropertyGroup):
    use_custom_range: BoolProperty(
        name="Custom Range", default=False, description="Track only the frames below instead of the scene's frame range"
    )
    frame_start: IntProperty(name="Start", default=1, description="First scene frame to track")
    frame_end: IntProperty(name="End", default=250, description="Last scene frame to track")
    occlusion: EnumProperty(
        name="Occluded Frames",
        default="KEEP",
        update=_apply_occlusion,
        items=[
            (
                "KEEP",
                "Keep Estimates",
                "Occluded frames keep PIPs' estimated position (continuous tracks for stabilisation)",
            ),
            ("DISABLE", "Disable Markers", "Occluded frames get disabled markers, as Blender's own tracker does"),
        ],
        description="What occluded frames become; changing it re-applies to the selected tracks without re-tracking",
    )
    threshold: FloatProperty(
        name="Visibility Threshold",
        default=0.5,
        min=0.01,
        max=0.99,
        update=_apply_occlusion,
        description=(
            "A frame counts as occluded below this confidence (above 0.5 the tracker verified the point there; "
            "lower values also admit its best estimates)"
        ),
    )
    grid_columns: IntProperty(name="Columns", default=8, min=1, max=64)
    grid_rows: IntProperty(name="Rows", default=6, min=1, max=64)
    grid_region: EnumProperty(
        name="Region",
        default="FRAME",
        items=[
            ("FRAME", "Whole Frame", "Spread the grid over the whole frame"),
            ("SELECTION", "Selected Tracks", "Spread the grid over the box around the selected tracks' markers"),
        ],
    )


def register():
    bpy.utils.register_class(PipstrackSettings)
    bpy.types.Scene.pipstrack = PointerProperty(type=PipstrackSettings)
    bpy.types.WindowManager.pipstrack_status = StringProperty(name="Backend Status", default="not checked")


def unregister():
    del bpy.types.WindowManager.pipstrack_status
    del bpy.types.Scene.pipstrack
    bpy.utils.unregister_class(PipstrackSettings)
