"""Export the selected tracks for other compositing packages, straight from Blender.

The writers are pipstrack's own (``_pipstrack/io/export.py``, the same code as ``pipstrack export``):
this module only turns Blender markers into a tracks document. Frame numbers are what a
compositor's reader shows: an image sequence's file numbers (plate.1001.exr is frame 1001),
a movie's frames counted from 1. Disabled markers count as occluded frames.
"""

from __future__ import annotations

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatProperty, StringProperty
from bpy_extras.io_utils import ExportHelper

from . import marker_writer as mw
from ._pipstrack.conventions import marker_to_pixel
from ._pipstrack.io import export as exporters
from ._pipstrack.io import formats
from .clip_source import ClipFrames, scene_to_clip
from .compositing import quad_order
from .operators import clip_has_selection, edited_clip, selected_tracks

SUFFIX = {"nk": ".nk", "ae": ".txt", "fusion": ".setting", "csv": ".csv", "json": ".json"}


def tracks_document(clip, tracks) -> dict:
    """A pipstrack tracks document (docs/formats.md) from Blender markers."""
    frames = ClipFrames(clip)
    W, H = frames.width, frames.height
    store = mw.stored(clip)
    out, numbers = [], set()
    for i, t in enumerate(tracks):
        conf = dict(zip(store.get(t.name, {}).get("frames", []), store.get(t.name, {}).get("confidence", [])))
        pts, keys = [], []
        for m in sorted(t.markers, key=lambda m: m.frame):
            if not 1 <= m.frame <= frames.count:
                continue  # Blender's sentinel markers before/after a tracked run
            x, y = (float(v) for v in marker_to_pixel(np.array(m.co[:]), width=W, height=H))
            f = frames.frame_number(m.frame)
            numbers.add(f)
            pts.append(
                [f, round(x, 4), round(y, 4), not m.mute, round(float(conf.get(m.frame, 0.0 if m.mute else 1.0)), 4)]
            )
            if m.is_keyed:
                keys.append([f, x, y])
        out.append({"id": i, "name": t.name, "anchors": keys, "points": pts})
    return {
        "format": formats.FORMAT,
        "version": formats.VERSION,
        "coordinates": formats.CONVENTION,
        "source": {
            "path": frames.path,
            "width": W,
            "height": H,
            "frame_count": frames.count,
            "blender_clip": clip.name,
        },
        "model": {},
        "frames": sorted(numbers),
        "point_fields": ["frame", "x", "y", "visible", "confidence"],
        "tracks": out,
    }


class PIPSTRACK_OT_export_tracks(bpy.types.Operator, ExportHelper):
    """Export the selected tracks for Nuke, After Effects, Fusion/Resolve, or as CSV/JSON"""

    bl_idname = "pipstrack.export_tracks"
    bl_label = "Export Tracks"

    filename_ext = ".nk"
    filter_glob: StringProperty(default="*.nk;*.txt;*.setting;*.csv;*.json", options={"HIDDEN"})
    fmt: EnumProperty(
        name="Format",
        default="nk",
        items=[
            ("nk", "Nuke (.nk)", "Tracker4 node with every track (and a CornerPin2D with Corner Pin)"),
            ("ae", "After Effects (.txt)", "Keyframe data to paste on a Position (one track) or a Corner Pin"),
            ("fusion", "Fusion / Resolve (.setting)", "Transform tools with animated centres, or a CornerPositioner"),
            ("csv", "CSV", "One row per track and frame"),
            ("json", "pipstrack JSON", "docs/formats.md"),
        ],
    )
    corner_pin: BoolProperty(
        name="Corner Pin",
        default=False,
        description="Four selected tracks become a corner pin (ordered bottom-left, bottom-right, top-right, top-left "
        "by their positions on the current frame)",
    )
    skip_occluded: BoolProperty(
        name="Skip Occluded Frames",
        default=False,
        description="Leave out frames whose marker is disabled (default: export every estimate)",
    )
    fps: FloatProperty(name="FPS", default=24.0, min=1.0, max=240.0, description="After Effects' units per second")

    @classmethod
    def poll(cls, context):
        if not clip_has_selection(context):
            cls.poll_message_set("Select the tracks to export in a Movie Clip Editor")
            return False
        return True

    def check(self, context):
        return self._fix_suffix()

    def _fix_suffix(self) -> bool:
        want = SUFFIX[self.fmt]
        if not self.filepath.lower().endswith(want):
            stem = self.filepath
            for suf in SUFFIX.values():
                if stem.lower().endswith(suf):
                    stem = stem[: -len(suf)]
            self.filepath = stem + want
            return True
        return False

    def execute(self, context):
        self._fix_suffix()
        clip = edited_clip(context)
        tracks = selected_tracks(clip)
        doc = tracks_document(clip, tracks)
        corners = None
        if self.corner_pin:
            if len(tracks) != 4:
                self.report({"ERROR"}, f"a corner pin needs exactly 4 selected tracks, {len(tracks)} are selected")
                return {"CANCELLED"}
            corners = corner_order(clip, tracks, context.scene.frame_current)
        try:
            path = exporters.export_tracks(
                doc,
                bpy.path.abspath(self.filepath),
                self.fmt,
                corner_pin=corners,
                fps=self.fps,
                occluded="skip" if self.skip_occluded else "keep",
            )
        except (ValueError, OSError) as e:
            self.report({"ERROR"}, f"pipstrack export: {e}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"pipstrack: wrote {len(tracks)} track(s) to {path}")
        return {"FINISHED"}


def corner_order(clip, tracks, scene_frame: int) -> list[str]:
    """Names of four tracks as bottom-left, bottom-right, top-right, top-left on screen, by
    their markers at or before the given frame (the corner pin set-up's ordering)."""
    frame = scene_to_clip(clip, scene_frame)
    return quad_order({t.name: tuple(t.markers.find_frame(frame, exact=False).co) for t in tracks})


register, unregister = bpy.utils.register_classes_factory((PIPSTRACK_OT_export_tracks,))
