"""A Clip Editor for headless Blender: what the clip operators poll for.

Blender as a Python module (bpy) has one window with the default screen and no event loop, so
there is no Clip Editor until one is made: its biggest area becomes one (once, reused after)
showing the clip. Used by the Blender baselines, the demo's Blender session and the add-on's
test drivers; it imports nothing (``bpy`` is passed in), so the drivers load this file by path
under any Blender.
"""


class NoClipEditor(RuntimeError):
    """This Blender has no window to host a Clip Editor."""


def clip_editor_context(bpy, clip) -> dict:
    """Keyword arguments for ``bpy.context.temp_override`` with a Clip Editor showing ``clip`` on
    the scene's current frame (call again after changing frames)."""
    wm = bpy.context.window_manager
    if not wm.windows:
        raise NoClipEditor("bpy has no window to host a Clip Editor")
    window = wm.windows[0]
    screen = window.screen
    areas = [a for a in screen.areas if a.type == "CLIP_EDITOR"]
    if areas:
        area = areas[0]
    else:
        area = max(screen.areas, key=lambda a: a.width * a.height)
        area.type = "CLIP_EDITOR"
    space = area.spaces.active
    space.clip = clip
    space.mode = "TRACKING"
    # An open editor follows the scene's frame (its clip user holds the scene frame); headless
    # nothing does that, and the clip operators work on the editor's frame.
    space.clip_user.frame_current = bpy.context.scene.frame_current
    region = next(r for r in area.regions if r.type == "WINDOW")
    return dict(window=window, screen=screen, area=area, region=region, space_data=space, edit_movieclip=clip)
