"""Helpers both Blender drivers share (they run under any bpy, with or without pipstrack)."""


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
