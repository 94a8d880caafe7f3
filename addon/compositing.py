"""Compositing set-ups built from tracks (stabilise, corner pin, match-move). Filled in by issue 6."""
from __future__ import annotations

classes = ()


def register():
    import bpy

    for c in classes:
        bpy.utils.register_class(c)


def unregister():
    import bpy

    for c in reversed(classes):
        bpy.utils.unregister_class(c)
