"""Compositing set-ups built from the selected tracks: 2D stabilisation, a corner pin and a
match-move, each a frame of new compositor nodes (docs/compositing.md).

Nothing here deletes a user's nodes. Each set-up adds a frame ("PIPs Stabilise", "PIPs Corner
Pin", "PIPs Match-Move") to the scene's compositor tree and connects its result to the tree's
output; the output's previous input link is the only thing replaced (the nodes that fed it
stay, a re-link brings them back, Ctrl-Z undoes the whole set-up).

The compositor changed in Blender 5.0: the tree is a node-group data-block in
``scene.compositing_node_group`` (4.x: ``scene.node_tree`` with ``scene.use_nodes``), the
Composite node became the tree's Group Output, and most node options became input sockets
(Track Position's ``position`` -> its "Mode" input, Switch's ``check`` -> its "Switch" input,
...). The helpers below detect which API they are talking to, not the version number (one
measured placement quirk aside: :func:`rounds_odd_offsets_down`).

Track Position outputs marker positions in pixels of the clip, origin bottom-left (marker
``co`` times the clip size); Corner Pin wants corners normalised to its input image (0..1,
origin bottom-left); Transform/Translate move by pixels from the image's centre.
"""

from __future__ import annotations

import math
import os

import bpy
from bpy.props import BoolProperty, StringProperty

from .clip_source import scene_to_clip
from .operators import edited_clip, selected_tracks

FRAME_COLOR = (0.25, 0.35, 0.5)
CHECKER_NAME = "PIPs Checker"


class SetupError(RuntimeError):
    """The set-up cannot be built as asked; the message says why (nothing was changed)."""


# -- compositor API, 4.2+ and 5.0 ---------------------------------------------------------------
def node_type(*idnames: str) -> str:
    """The first of ``idnames`` this Blender has: compositor-specific names first (4.x's
    CompositorNodeMath), then the shared ones 5.0 uses in compositor trees (ShaderNodeMath)."""
    for name in idnames:
        if hasattr(bpy.types, name):
            return name
    raise SetupError(f"this Blender has none of the nodes {', '.join(idnames)}")


MATH = ("CompositorNodeMath", "ShaderNodeMath")
COMBINE_XYZ = ("CompositorNodeCombineXYZ", "ShaderNodeCombineXYZ")


def has_group_output_compositor() -> bool:
    """Blender 5.0+: the compositor's result is its node group's Group Output (no Composite node)."""
    return not hasattr(bpy.types, "CompositorNodeComposite")


def compositor_tree(scene):
    """The scene's compositor node tree, created (and compositing switched on) when missing.

    5.0: ``scene.compositing_node_group``, a CompositorNodeTree data-block; a new one is
    named "Compositing" like the one the editor's New button makes. 4.x: the scene's embedded
    ``node_tree``, made by ``use_nodes`` (with Blender's default Render Layers and Composite)."""
    if hasattr(scene, "compositing_node_group"):
        tree = scene.compositing_node_group
        if tree is None:
            tree = bpy.data.node_groups.new("Compositing", "CompositorNodeTree")
            scene.compositing_node_group = tree
        if hasattr(scene, "use_nodes") and not scene.use_nodes:
            scene.use_nodes = True
    else:
        if not scene.use_nodes:
            scene.use_nodes = True
        tree = scene.node_tree
    scene.render.use_compositing = True
    return tree


def output_input(tree):
    """The image input socket of the tree's result: the active Group Output (5.0, given an
    Image output in the tree's interface when it has no colour output) or the Composite node
    (4.x); created when the tree has none."""
    if not has_group_output_compositor():
        node = next((n for n in tree.nodes if n.bl_idname == "CompositorNodeComposite"), None)
        if node is None:
            node = tree.nodes.new("CompositorNodeComposite")
            node.location = _right_of(tree)
        return node.inputs["Image"]
    items = [i for i in tree.interface.items_tree if getattr(i, "item_type", "SOCKET") == "SOCKET"]
    if not any(i.in_out == "OUTPUT" and i.socket_type == "NodeSocketColor" for i in items):
        tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    outputs = [n for n in tree.nodes if n.bl_idname == "NodeGroupOutput"]
    node = next((n for n in outputs if n.is_active_output), outputs[0] if outputs else None)
    if node is None:
        node = tree.nodes.new("NodeGroupOutput")
        node.location = _right_of(tree)
    return next(s for s in node.inputs if s.type == "RGBA")


def set_option(node, socket: str, value, prop: str | None = None, prop_value=None) -> None:
    """Sets a node option that 5.0 made an input socket (``socket``, e.g. Track Position's
    "Mode") and 4.x keeps as a property (``prop``, e.g. ``position``)."""
    sock = node.inputs.get(socket)
    if sock is not None:
        sock.default_value = value
    elif prop is not None:
        setattr(node, prop, value if prop_value is None else prop_value)


def alpha_over_inputs(node):
    """(background, foreground) of an Alpha Over node: named in 5.0, two "Image" inputs in 4.x."""
    ins = node.inputs
    if ins.get("Background") is not None:
        return ins["Background"], ins["Foreground"]
    return ins[1], ins[2]


# -- building ---------------------------------------------------------------------------------
def _right_of(tree):
    xs = [n.location.x for n in tree.nodes if n.bl_idname != "NodeFrame"]
    return (max(xs, default=0.0) + 300.0, 0.0)


class Builder:
    """Adds nodes to ``tree`` inside one new frame, laid out on a grid below the tree's nodes."""

    def __init__(self, tree, title: str):
        self.tree = tree
        ys = [n.location.y - n.dimensions.y for n in tree.nodes if n.parent is None]
        xs = [n.location.x for n in tree.nodes if n.parent is None]
        self.origin = (min(xs, default=0.0), min(ys, default=0.0) - 200.0)
        self.frame = tree.nodes.new("NodeFrame")
        self.frame.name = self.frame.label = title
        self.frame.use_custom_color = True
        self.frame.color = FRAME_COLOR
        self.nodes = [self.frame]

    def add(self, idnames, col: int, row: float, label: str | None = None, **props):
        idname = node_type(*idnames) if isinstance(idnames, tuple) else idnames
        node = self.tree.nodes.new(idname)
        node.parent = self.frame
        node.location = (self.origin[0] + 220.0 * col, self.origin[1] - 160.0 * row)
        if label:
            node.label = label
        for k, v in props.items():
            setattr(node, k, v)
        self.nodes.append(node)
        return node

    def link(self, out, inp):
        self.tree.links.new(out, inp)

    def math(self, op: str, a, b, col: int, row: float, label: str | None = None):
        """A Math node ``a op b``; ``a``/``b`` are output sockets or numbers."""
        node = self.add(MATH, col, row, label, operation=op)
        for sock, v in zip(node.inputs, (a, b)):
            if isinstance(v, (int, float)):
                sock.default_value = float(v)
            else:
                self.link(v, sock)
        return node.outputs[0]

    def track_position(self, clip, track, col: int, row: float):
        node = self.add("CompositorNodeTrackPos", col, row, label=f"Track Position: {track.name}")
        node.clip = clip
        node.tracking_object = clip.tracking.objects.active.name
        node.track_name = track.name
        set_option(node, "Mode", "Absolute", "position", "ABSOLUTE")
        return node

    def movie_clip(self, clip, col: int, row: float):
        return self.add("CompositorNodeMovieClip", col, row, clip=clip)

    def image(self, image, col: int, row: float):
        return self.add("CompositorNodeImage", col, row, image=image)

    def over(self, background, foreground, col: int, row: float):
        node = self.add("CompositorNodeAlphaOver", col, row, label="Over the Clip")
        bg, fg = alpha_over_inputs(node)
        self.link(background, bg)
        self.link(foreground, fg)
        return node.outputs["Image"]

    def finish(self, result, scene):
        """Connects ``result`` to the tree's output (replacing only that input's link)."""
        self.link(result, output_input(self.tree))
        return self.frame


def match_resolution(scene, clip) -> None:
    """Renders at the clip's size, so the composite is pixel for pixel the clip."""
    scene.render.resolution_x, scene.render.resolution_y = int(clip.size[0]), int(clip.size[1])
    scene.render.resolution_percentage = 100


def rounds_odd_offsets_down() -> bool:
    """Whether the compositor puts an image whose size differs from the clip's by an odd number
    of pixels half a pixel left of and below the clip's centre (its offset rounded down to whole
    pixels). Measured in Blender 4.5 and 5.0; 4.2's CPU compositor snaps every translation to
    whole pixels, where no half-pixel correction helps. A behaviour, not an API: the one place
    this module asks for the version."""
    return bpy.app.version >= (4, 5, 0)


def centre_offset(clip_size, image_size):
    """Where the compositor puts the centre of an image of ``image_size`` merged over the clip,
    in Track Position pixels (docs/compositing.md)."""
    odd = rounds_odd_offsets_down()
    return tuple(c / 2.0 - (0.5 * ((int(c) - int(i)) % 2) if odd else 0.0) for c, i in zip(clip_size, image_size))


# -- tracks -----------------------------------------------------------------------------------
def marker_px(clip, track, clip_frame: int):
    """Position of ``track`` on ``clip_frame`` in Track Position units (pixels, origin
    bottom-left); the marker at or before that frame, None when the track has none there or
    it is disabled."""
    m = track.markers.find_frame(clip_frame)
    if m is None or m.mute:
        return None
    return (m.co[0] * clip.size[0], m.co[1] * clip.size[1])


def quad_order(points: dict) -> list:
    """Names of four points (name -> (x, y), y up) ordered bottom-left, bottom-right,
    top-right, top-left: counter-clockwise around their centroid, starting at the corner
    nearest the bottom-left."""
    cx = sum(p[0] for p in points.values()) / 4.0
    cy = sum(p[1] for p in points.values()) / 4.0
    ccw = sorted(points, key=lambda n: math.atan2(points[n][1] - cy, points[n][0] - cx))
    start = min(range(4), key=lambda i: points[ccw[i]][0] + points[ccw[i]][1])
    return ccw[start:] + ccw[:start]


def order_quad(points: dict):
    """:func:`quad_order`, raising SetupError unless the four form a convex quadrilateral."""
    ordered = quad_order(points)
    p = [points[n] for n in ordered]
    for i in range(4):
        a, b, c = p[i], p[(i + 1) % 4], p[(i + 2) % 4]
        cross = (b[0] - a[0]) * (c[1] - b[1]) - (b[1] - a[1]) * (c[0] - b[0])
        if cross <= 1e-6:
            raise SetupError("the four tracks must form a convex quadrilateral on the current frame")
    return ordered


def pin_image(path: str, name: str, size: int):
    """The image to pin: loaded from ``path`` (Blender's relative // paths work), else a
    generated colour grid reused across set-ups."""
    if path:
        full = bpy.path.abspath(path)
        if not os.path.isfile(full):
            raise SetupError(f"no image at {full}")
        known = set(bpy.data.images)
        try:
            image = bpy.data.images.load(full, check_existing=True)
        except RuntimeError as e:
            raise SetupError(f"Blender cannot read the image {full}: {e}") from e
        if not (image.size[0] and image.size[1]):
            if image not in known:
                bpy.data.images.remove(image)
            raise SetupError(f"Blender cannot read the image {full}")
        return image
    image = bpy.data.images.get(name)
    if image is None or image.source != "GENERATED":
        image = bpy.data.images.new(name, size, size, alpha=True)
        image.generated_type = "COLOR_GRID"
    return image


# -- operators ----------------------------------------------------------------------------------
class _SetupOperator:
    bl_options = {"REGISTER", "UNDO"}

    match_resolution: BoolProperty(
        name="Match Render Size",
        default=True,
        description="Set the scene's render size to the clip's, so the composite is pixel for pixel the clip",
    )

    @classmethod
    def poll(cls, context):
        clip = edited_clip(context)
        if clip is None:
            cls.poll_message_set("Open a clip in a Movie Clip Editor")
            return False
        if not selected_tracks(clip):
            cls.poll_message_set("Select the tracks to build from")
            return False
        return True

    def execute(self, context):
        clip = edited_clip(context)
        try:
            frame = self.build(context, clip, selected_tracks(clip))
        except SetupError as e:
            self.report({"ERROR"}, f"pipstrack: {e}")
            return {"CANCELLED"}
        if self.match_resolution:
            match_resolution(context.scene, clip)
        self.report({"INFO"}, f"pipstrack: added the node frame {frame.name!r} to the compositor")
        return {"FINISHED"}

    def build(self, context, clip, tracks):
        raise NotImplementedError


class PIPSTRACK_OT_setup_stabilise(_SetupOperator, bpy.types.Operator):
    """Stabilise the clip with the selected tracks (location; with two or more also rotation and
    scale) and add compositor nodes showing the stabilised clip, with a switch to the original"""

    bl_idname = "pipstrack.setup_stabilise"
    bl_label = "Stabilise"

    rotation_scale: BoolProperty(
        name="Rotation and Scale",
        default=True,
        description="With two or more tracks, also stabilise rotation and scale",
    )

    def build(self, context, clip, tracks):
        scene = context.scene
        stab = clip.tracking.stabilization
        use_rot = self.rotation_scale and len(tracks) >= 2
        if not set_stabilisation_tracks(stab, tracks, use_rot):
            raise SetupError("Blender could not add the tracks to the clip's stabilisation")
        stab.use_2d_stabilization = True
        stab.use_stabilize_rotation = use_rot
        stab.use_stabilize_scale = use_rot
        stab.anchor_frame = scene.frame_current

        b = Builder(compositor_tree(scene), "PIPs Stabilise")
        mc = b.movie_clip(clip, 0, 0)
        st = b.add("CompositorNodeStabilize", 1, 0, clip=clip)
        b.link(mc.outputs["Image"], st.inputs["Image"])
        set_option(st, "Interpolation", "Bilinear", "filter_type", "BILINEAR")
        sw = b.add("CompositorNodeSwitch", 2, 0, label="Show Original")
        set_option(sw, "Switch", False, "check")
        off, on = [s for s in sw.inputs if s.type == "RGBA"][:2]
        b.link(st.outputs["Image"], off)
        b.link(mc.outputs["Image"], on)
        return b.finish(sw.outputs["Image"], scene)


def set_stabilisation_tracks(stab, tracks, rotation: bool) -> bool:
    """Makes ``tracks`` (selected in the edited clip) the stabilisation's location tracks, and
    its rotation/scale tracks when ``rotation`` (else none). Tracks have no RNA flag for this,
    so Blender's own Clip Editor operators do it (they need the Clip Editor context we run in)."""
    while len(stab.tracks):
        stab.active_track_index = 0
        if "FINISHED" not in bpy.ops.clip.stabilize_2d_remove():
            return False
    while len(stab.rotation_tracks):
        stab.active_rotation_track_index = 0
        if "FINISHED" not in bpy.ops.clip.stabilize_2d_rotation_remove():
            return False
    bpy.ops.clip.stabilize_2d_add()
    if rotation:
        bpy.ops.clip.stabilize_2d_rotation_add()
    want = {t.name for t in tracks}
    return {t.name for t in stab.tracks} == want and {t.name for t in stab.rotation_tracks} == (
        want if rotation else set()
    )


class PIPSTRACK_OT_setup_corner_pin(_SetupOperator, bpy.types.Operator):
    """Pin an image onto the surface spanned by four selected tracks (Track Position nodes
    drive a Corner Pin node) and merge it over the clip"""

    bl_idname = "pipstrack.setup_corner_pin"
    bl_label = "Corner Pin"

    image_path: StringProperty(
        name="Image", subtype="FILE_PATH", default="", description="Image to pin; empty: a generated colour grid"
    )

    def build(self, context, clip, tracks):
        scene = context.scene
        if len(tracks) != 4:
            raise SetupError(f"select exactly four tracks for a corner pin ({len(tracks)} selected)")
        frame = scene_to_clip(clip, scene.frame_current)
        points = {t.name: marker_px(clip, t, frame) for t in tracks}
        missing = sorted(n for n, p in points.items() if p is None)
        if missing:
            raise SetupError(f"no enabled marker on the current frame for {', '.join(missing)}")
        order = order_quad(points)  # bottom-left, bottom-right, top-right, top-left
        image = pin_image(self.image_path, CHECKER_NAME, 512)

        by_name = {t.name: t for t in tracks}
        W, H = clip.size
        b = Builder(compositor_tree(scene), "PIPs Corner Pin")
        img = b.image(image, 0, 0)
        sc = b.add("CompositorNodeScale", 1, 0, label="To Clip Size")
        set_option(sc, "Type", "Absolute", "space", "ABSOLUTE")
        sc.inputs["X"].default_value, sc.inputs["Y"].default_value = float(W), float(H)
        b.link(img.outputs["Image"], sc.inputs["Image"])
        cp = b.add("CompositorNodeCornerPin", 3, 0)
        b.link(sc.outputs["Image"], cp.inputs["Image"])
        corners = ("Lower Left", "Lower Right", "Upper Right", "Upper Left")
        for i, (name, corner) in enumerate(zip(order, corners)):
            row = 1.2 + 1.5 * i
            tp = b.track_position(clip, by_name[name], 0, row)
            tp.label = f"{corner}: {name}"
            u = b.math("DIVIDE", tp.outputs["X"], float(W), 1, row)
            v = b.math("DIVIDE", tp.outputs["Y"], float(H), 1, row + 0.7)
            xyz = b.add(COMBINE_XYZ, 2, row)
            b.link(u, xyz.inputs["X"])
            b.link(v, xyz.inputs["Y"])
            b.link(xyz.outputs[0], cp.inputs[corner])
        mc = b.movie_clip(clip, 4, 1.2)
        return b.finish(b.over(mc.outputs["Image"], cp.outputs["Image"], 5, 0), scene)


class PIPSTRACK_OT_setup_matchmove(_SetupOperator, bpy.types.Operator):
    """Move an image with a selected track (its centre on the track); with a second selected
    track also rotate and scale it as the line between the two turns and stretches"""

    bl_idname = "pipstrack.setup_matchmove"
    bl_label = "Match-Move"

    image_path: StringProperty(
        name="Image",
        subtype="FILE_PATH",
        default="",
        description="Image to move with the track; empty: a generated colour grid",
    )

    def build(self, context, clip, tracks):
        scene = context.scene
        if len(tracks) not in (1, 2):
            raise SetupError(
                f"select one track (position), or two (position, then rotation and scale) ({len(tracks)} selected)"
            )
        active = clip.tracking.objects.active.tracks.active
        tracks = sorted(tracks, key=lambda t: (t != active, t.name))  # the active track leads
        frame = scene_to_clip(clip, scene.frame_current)
        ref = None
        if len(tracks) == 2:
            p0, p1 = (marker_px(clip, t, frame) for t in tracks)
            if p0 is None or p1 is None:
                raise SetupError(
                    "both tracks need an enabled marker on the current frame (the reference for rotation and scale)"
                )
            ref = (p1[0] - p0[0], p1[1] - p0[1])
            if math.hypot(*ref) < 1.0:
                raise SetupError("the two tracks are less than a pixel apart on the current frame")
        W, H = clip.size
        image = pin_image(self.image_path, CHECKER_NAME + " Small", max(16, min(W, H) // 4))

        b = Builder(compositor_tree(scene), "PIPs Match-Move")
        img = b.image(image, 0, 0)
        tf = b.add("CompositorNodeTransform", 4, 0)
        set_option(tf, "Interpolation", "Bilinear", "filter_type", "BILINEAR")
        b.link(img.outputs["Image"], tf.inputs["Image"])
        t0 = b.track_position(clip, tracks[0], 0, 1.2)
        # The image's centre sits on the clip's centre: move it by the track's offset from there.
        # Blender aligns an image whose size differs from the clip's by an odd number of pixels
        # half a pixel left/down of the centre (whole-pixel alignment): add that half back.
        cx, cy = centre_offset(clip.size, image.size)
        b.link(b.math("SUBTRACT", t0.outputs["X"], cx, 1, 1.2, "X from Centre"), tf.inputs["X"])
        b.link(b.math("SUBTRACT", t0.outputs["Y"], cy, 1, 1.9, "Y from Centre"), tf.inputs["Y"])
        if ref is not None:
            t1 = b.track_position(clip, tracks[1], 0, 2.8)
            dx = b.math("SUBTRACT", t1.outputs["X"], t0.outputs["X"], 1, 2.8)
            dy = b.math("SUBTRACT", t1.outputs["Y"], t0.outputs["Y"], 1, 3.5)
            ang = b.math("ARCTAN2", dy, dx, 2, 2.8)
            b.link(
                b.math("SUBTRACT", ang, math.atan2(ref[1], ref[0]), 3, 2.8, "Angle from Reference Frame"),
                tf.inputs["Angle"],
            )
            length = b.math(
                "SQRT",
                b.math("ADD", b.math("MULTIPLY", dx, dx, 2, 3.6), b.math("MULTIPLY", dy, dy, 2, 4.3), 3, 3.6),
                0.0,
                3,
                4.3,
            )
            b.link(
                b.math("DIVIDE", length, math.hypot(*ref), 3.8, 4.3, "Scale from Reference Frame"), tf.inputs["Scale"]
            )
        mc = b.movie_clip(clip, 4, 1.2)
        return b.finish(b.over(mc.outputs["Image"], tf.outputs["Image"], 5, 0), scene)


classes = (PIPSTRACK_OT_setup_stabilise, PIPSTRACK_OT_setup_corner_pin, PIPSTRACK_OT_setup_matchmove)
register, unregister = bpy.utils.register_classes_factory(classes)
