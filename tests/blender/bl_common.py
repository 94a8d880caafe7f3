"""Helpers both Blender drivers share (they run under any bpy, with or without pipstrack)."""

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


def clip_editor(bpy, clip):
    """A Clip Editor showing ``clip`` for ``bpy.context.temp_override``: bpy as a module has one
    window and no event loop; its biggest area becomes the editor."""
    window = bpy.context.window_manager.windows[0]
    screen = window.screen
    area = max(screen.areas, key=lambda a: a.width * a.height)
    area.type = "CLIP_EDITOR"
    space = area.spaces.active
    space.clip = clip
    space.mode = "TRACKING"
    region = next(r for r in area.regions if r.type == "WINDOW")
    return dict(window=window, screen=screen, area=area, region=region, space_data=space)


def px_to_co(x, y, W, H):
    """pipstrack pixel (centres at integers, y down) -> Blender marker co (normalised, y up)."""
    return ((x + 0.5) / W, 1.0 - (y + 0.5) / H)
