"""Add-on preferences: where the backend is, how to reach it, how to start a local one."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from ._pipstrack.wire import protocol as P


def addon_prefs(context=None):
    context = context or bpy.context
    return context.preferences.addons[__package__].preferences


class PIPSTRACK_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    address: StringProperty(
        name="Backend Address",
        default="tcp://127.0.0.1:5555",
        description="ZeroMQ address of `pipstrack serve`: this machine, or a render box (then set the keys folder)",
    )
    keys_dir: StringProperty(
        name="Keys Folder",
        subtype="DIR_PATH",
        default="",
        description="Folder made by `pipstrack keys` holding client.key_secret and server.key; "
        "required for a backend on another machine",
    )
    python: StringProperty(
        name="Backend Python",
        subtype="FILE_PATH",
        default="",
        description="Python of the environment where pipstrack is installed "
        "(e.g. /path/to/pipstrack/.venv/bin/python), "
        "used by Start Local Backend",
    )
    model: StringProperty(
        name="Weights",
        subtype="FILE_PATH",
        default="",
        description="Model weights for a locally started backend; empty: its default model (or $PIPSTRACK_WEIGHTS)",
    )
    device: EnumProperty(
        name="Device",
        default="auto",
        items=[
            ("auto", "Auto", "An NVIDIA GPU (CUDA) if the backend has one, else Apple's GPU (MPS), else the CPU"),
            ("cpu", "CPU", ""),
            ("cuda", "CUDA", "An NVIDIA GPU"),
            ("mps", "Apple GPU", "Apple Silicon's GPU (Metal)"),
        ],
    )
    threads: IntProperty(
        name="Threads",
        default=0,
        min=0,
        max=256,
        description="CPU threads of a locally started backend; 0: follow the load (the cores other programs, "
        "Blender included, leave free)",
    )
    frames_via: EnumProperty(
        name="Send Frames",
        default="AUTO",
        items=[
            ("AUTO", "Auto", "File paths to a backend on this machine, the files themselves to a remote one"),
            ("FILES", "File Paths", "The backend reads the clip's files itself (same machine or shared storage)"),
            ("UPLOAD", "Upload Files", "The clip's files are sent as they are and decoded by the backend"),
            (
                "PIXELS",
                "Pixels",
                "Blender decodes the frames and sends them (formats the backend cannot read, such as Iris, "
                "go this way anyway; slow for large frames)",
            ),
        ],
    )
    working_size: IntProperty(
        name="Working Size",
        default=512,
        min=64,
        max=4096,
        description="Long side in pixels at which the network sees the clip (markers stay in full resolution). "
        "Larger is slower and can be more precise",
    )
    iters: IntProperty(
        name="Iterations",
        default=6,
        min=1,
        max=P.MAX_ITERS,
        description="Refinement iterations per window (the model's default is 6)",
    )
    refine: BoolProperty(
        name="Sub-pixel Refinement",
        default=True,
        description="Polish visible frames with Lucas-Kanade steps seeded by PIPs (off: the network's own positions)",
    )
    comotion: BoolProperty(
        name="Support From Other Tracks",
        default=True,
        description="Behind an occluder, and where a track was lost, follow the tracks of the same "
        "job that moved with it (needs Sub-pixel Refinement)",
    )

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        col = layout.column(heading="Backend")
        col.prop(self, "address")
        col.prop(self, "keys_dir")
        col.prop(self, "frames_via")
        col = layout.column(heading="Local Backend")
        col.prop(self, "python")
        col.prop(self, "model")
        col.prop(self, "device")
        col.prop(self, "threads")
        col = layout.column(heading="Tracking")
        col.prop(self, "working_size")
        col.prop(self, "iters")
        col.prop(self, "refine")
        sub = col.row()
        sub.active = self.refine
        sub.prop(self, "comotion")


def register():
    bpy.utils.register_class(PIPSTRACK_AddonPreferences)


def unregister():
    bpy.utils.unregister_class(PIPSTRACK_AddonPreferences)
