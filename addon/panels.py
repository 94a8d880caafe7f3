"""The PIPs tab of the Movie Clip Editor's sidebar, and entries in its Track menu."""

from __future__ import annotations

import bpy

from .operators import edited_clip
from .preferences import addon_prefs


class _PipsPanel:
    bl_space_type = "CLIP_EDITOR"
    bl_region_type = "UI"
    bl_category = "PIPs"

    @classmethod
    def poll(cls, context):
        space = context.space_data
        return space is not None and space.mode == "TRACKING" and edited_clip(context) is not None


class PIPSTRACK_PT_backend(_PipsPanel, bpy.types.Panel):
    bl_label = "Backend"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        prefs = addon_prefs(context)
        layout.prop(prefs, "address", text="")
        layout.label(text=context.window_manager.pipstrack_status, icon="INFO")
        row = layout.row(align=True)
        row.operator("pipstrack.check_backend", icon="FILE_REFRESH")
        row.operator("pipstrack.start_backend", icon="PLAY", text="Start Local")
        layout.prop(prefs, "frames_via")
        layout.prop(prefs, "working_size")


class PIPSTRACK_PT_track(_PipsPanel, bpy.types.Panel):
    bl_label = "Track"

    def draw(self, context):
        layout = self.layout
        props = context.scene.pipstrack
        row = layout.row(align=True)
        row.operator("pipstrack.track_markers", text="", icon="TRACKING_BACKWARDS").direction = "BACKWARD"
        row.operator("pipstrack.track_markers", text="Track Both", icon="TRACKING").direction = "BOTH"
        row.operator("pipstrack.track_markers", text="", icon="TRACKING_FORWARDS").direction = "FORWARD"
        layout.operator("pipstrack.fill_gaps", icon="TRACKING_REFINE_FORWARDS")
        layout.prop(props, "use_custom_range")
        if props.use_custom_range:
            row = layout.row(align=True)
            row.prop(props, "frame_start")
            row.prop(props, "frame_end")


class PIPSTRACK_PT_occlusion(_PipsPanel, bpy.types.Panel):
    bl_label = "Occlusion"

    def draw(self, context):
        layout = self.layout
        props = context.scene.pipstrack
        layout.prop(props, "occlusion", text="")
        layout.prop(props, "threshold", slider=True)
        layout.operator("pipstrack.apply_occlusion", icon="HIDE_OFF")


class PIPSTRACK_PT_grid(_PipsPanel, bpy.types.Panel):
    bl_label = "Track Grid"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        props = context.scene.pipstrack
        row = layout.row(align=True)
        row.prop(props, "grid_columns")
        row.prop(props, "grid_rows")
        layout.prop(props, "grid_region", text="")
        layout.operator("pipstrack.add_grid", icon="MESH_GRID")


class PIPSTRACK_PT_export(_PipsPanel, bpy.types.Panel):
    bl_label = "Export"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        for fmt, label in (("nk", "Nuke"), ("ae", "After Effects"), ("fusion", "Fusion / Resolve")):
            layout.operator("pipstrack.export_tracks", text=label, icon="EXPORT").fmt = fmt


class PIPSTRACK_PT_compositing(_PipsPanel, bpy.types.Panel):
    bl_label = "Compositing"

    def draw(self, context):
        col = self.layout.column(align=True)
        col.operator("pipstrack.setup_stabilise", icon="VIEW_PAN")
        col.operator("pipstrack.setup_corner_pin", icon="MOD_MESHDEFORM")
        col.operator("pipstrack.setup_matchmove", icon="CON_FOLLOWTRACK")
        self.layout.label(text="Nodes go to the Compositor", icon="NODETREE")


def track_menu(self, context):
    layout = self.layout
    layout.separator()
    layout.operator("pipstrack.track_markers", text="Track with PIPs").direction = "BOTH"
    layout.operator("pipstrack.fill_gaps")
    layout.operator("pipstrack.export_tracks", text="Export Tracks (Nuke, After Effects, Fusion)...")


classes = (
    PIPSTRACK_PT_backend,
    PIPSTRACK_PT_track,
    PIPSTRACK_PT_occlusion,
    PIPSTRACK_PT_grid,
    PIPSTRACK_PT_compositing,
    PIPSTRACK_PT_export,
)
_register, _unregister = bpy.utils.register_classes_factory(classes)


def register():
    _register()
    bpy.types.CLIP_MT_track.append(track_menu)


def unregister():
    bpy.types.CLIP_MT_track.remove(track_menu)
    _unregister()
