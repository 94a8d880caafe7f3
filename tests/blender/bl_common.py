"""Helpers both Blender drivers share (they run under any bpy, with or without pipstrack).

The pixel <-> marker formula and the Clip Editor context come from the backend's own files,
loaded by path (they import numpy at most), so the drivers use the one convention that
tests/test_conventions.py checks against Blender itself, and ``pipstrack`` stays out of
``sys.modules`` (the drivers assert the extension never imports it).
"""

import importlib.util
import sys
from pathlib import Path

_BACKEND = Path(__file__).resolve().parents[2] / "backend" / "pipstrack"


def _load(name, relpath):
    spec = importlib.util.spec_from_file_location(name, _BACKEND / relpath)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


conventions = _load("bl_conventions", "conventions.py")
clip_editor = _load("bl_clip_editor", "evaluation/clip_editor.py").clip_editor_context


PACKAGE = "bl_ext.user_default.pipstrack"  # where Blender puts an extension installed from a file


def install_extension(bpy, spec, out):
    """Installs ``spec["zip"]`` the way Blender's Extensions preferences do and applies
    ``spec["prefs"]`` (e.g. the backend address); records the outcome in ``out``."""
    r = bpy.ops.extensions.package_install_files(filepath=spec["zip"], repo="user_default", enable_on_install=True)
    out["install"] = sorted(r)
    out["enabled"] = PACKAGE in bpy.context.preferences.addons
    prefs = bpy.context.preferences.addons[PACKAGE].preferences
    for k, v in spec.get("prefs", {}).items():
        setattr(prefs, k, v)


def open_clip(bpy, spec):
    """``spec["clip"]`` as a movie clip starting at scene frame ``frame_start`` (default 1), its
    files shifted by ``frame_offset`` (default 0)."""
    clip = bpy.data.movieclips.load(spec["clip"])
    clip.frame_start = spec.get("frame_start", 1)
    clip.frame_offset = spec.get("frame_offset", 0)
    return clip


def px_to_co(x, y, W, H):
    """pipstrack pixel -> Blender marker co, as a tuple for ``marker.co``."""
    return tuple(float(v) for v in conventions.pixel_to_marker((x, y), width=W, height=H))


def markers_px(track, W, H):
    """Every marker of ``track`` as [frame, x, y, mute, is_keyed], positions in pipstrack pixels."""
    rows = []
    for m in track.markers:
        x, y = conventions.marker_to_pixel(m.co[:], width=W, height=H)
        rows.append([m.frame, float(x), float(y), bool(m.mute), bool(m.is_keyed)])
    return rows
