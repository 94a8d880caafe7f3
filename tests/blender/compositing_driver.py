"""Runs in a fresh Python with Blender as a module (bpy): installs the built extension zip,
opens a clip in a Clip Editor, runs steps (write ground-truth markers, select tracks, run the
add-on's compositing operators, render the compositor's result) and writes JSON.

    python tests/blender/compositing_driver.py SPEC.json OUT.json

Steps (``frame`` is a clip frame, ``scene_frame`` a scene frame; pixels are pipstrack's:
centres at integers, origin top-left, y down):
  {"op": "track", "name": N, "frames": [...], "xy": [[x, y], ...]}    markers on those frames
  {"op": "select", "tracks": [...], "active": N}                       selection (and active track)
  {"op": "frame", "scene_frame": F}
  {"op": "state"}                                                      what the set-ups may change
  {"op": "render", "scene_frames": [...], "dir": D}                   the composite as D/render_FFFF.png
  {"op": "switch", "frame": F, "value": bool}                          the Switch node in node frame F
  {"op": "user_tree"}                                                  a user's compositor: an RGB node on the output
  {"op": "pipstrack.setup_...", "args": {...}}                         an operator, in the Clip Editor

BLENDER_USER_RESOURCES points at a temporary folder before bpy is imported, so no real user
configuration is touched.
"""

import json
import os
import sys
import tempfile
import traceback

spec = json.load(open(sys.argv[1]))
os.environ["BLENDER_USER_RESOURCES"] = spec.get("user_resources") or tempfile.mkdtemp(prefix="pipstrack-bl-")

import bpy  # noqa: E402
from bl_common import clip_editor, install_extension, markers_px, open_clip, px_to_co  # noqa: E402

out = {"reports": [], "steps": [], "version": list(bpy.app.version)}


def scene_tree(scene):
    if hasattr(scene, "compositing_node_group"):
        return scene.compositing_node_group
    return scene.node_tree if scene.use_nodes else None


def state(scene, clip):
    """Everything a compositing set-up may touch, as plain data."""
    tree = scene_tree(scene)
    stab = clip.tracking.stabilization
    s = {
        "tree": None,
        "node_groups": sorted(g.name for g in bpy.data.node_groups),
        "images": sorted(i.name for i in bpy.data.images),
        "resolution": [scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage],
        "use_compositing": scene.render.use_compositing,
        "stabilization": {
            "use_2d": stab.use_2d_stabilization,
            "rotation": stab.use_stabilize_rotation,
            "scale": stab.use_stabilize_scale,
            "tracks": sorted(t.name for t in stab.tracks),
            "rotation_tracks": sorted(t.name for t in stab.rotation_tracks),
            "anchor_frame": stab.anchor_frame,
        },
    }
    if tree is not None:
        s["tree"] = {
            "name": tree.name,
            "nodes": {
                n.name: {
                    "type": n.bl_idname,
                    "parent": n.parent.name if n.parent else None,
                    "label": n.label,
                    "track": getattr(n, "track_name", None),
                }
                for n in tree.nodes
            },
            "links": sorted(
                f"{link.from_node.name}:{link.from_socket.identifier}->{link.to_node.name}:{link.to_socket.identifier}"
                for link in tree.links
            ),
        }
    return s


def render(scene, scene_frames, folder):
    os.makedirs(folder, exist_ok=True)
    scene.view_settings.view_transform = "Standard"  # the composite's pixel values are the clip's
    scene.view_settings.look = "None"
    scene.render.engine = "CYCLES"  # only renders if a tree has Render Layers (4.x's default tree)
    scene.cycles.samples = 1
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    scene.render.image_settings.color_depth = "16"
    files = []
    for f in scene_frames:
        scene.frame_set(f)
        scene.render.filepath = os.path.join(folder, f"render_{f:04d}.png")
        bpy.ops.render.render(write_still=True)
        files.append(scene.render.filepath)
    return files


def run_operator(ctx, op, args):
    group, name = op.split(".")
    fn = getattr(getattr(bpy.ops, group), name)
    with bpy.context.temp_override(**ctx):
        if not fn.poll():
            try:  # the call fails with the poll message in the error
                fn(**args)
            except RuntimeError as e:
                return {"poll": False, "message": str(e)}
            return {"poll": False, "message": ""}
        try:
            return sorted(fn(**args))
        except RuntimeError as e:  # an operator's ERROR report raises here
            return {"error": str(e)}


try:
    install_extension(bpy, spec, out)
    out["registered"] = sorted(
        n
        for n in (
            "PIPSTRACK_PT_compositing",
            "PIPSTRACK_OT_setup_stabilise",
            "PIPSTRACK_OT_setup_corner_pin",
            "PIPSTRACK_OT_setup_matchmove",
        )
        if hasattr(bpy.types, n)
    )

    scene = bpy.context.scene
    clip = open_clip(bpy, spec)
    scene.frame_start = clip.frame_start
    scene.frame_end = clip.frame_start + clip.frame_duration - 1
    scene.frame_set(scene.frame_start)
    out["clip"] = {"size": list(clip.size), "duration": clip.frame_duration}
    ctx = clip_editor(bpy, clip)
    W, H = clip.size
    tracks = clip.tracking.objects.active.tracks

    for step in spec["steps"]:
        op = step["op"]
        result = None
        if op == "track":
            frames, xy = step["frames"], step["xy"]
            t = tracks.get(step["name"]) or tracks.new(name=step["name"], frame=frames[0])
            for f, (x, y) in zip(frames, xy):
                m = t.markers.find_frame(f, exact=True) or t.markers.insert_frame(f, co=(0.5, 0.5))
                m.co = px_to_co(x, y, W, H)
                m.mute = False
        elif op == "select":
            for t in tracks:
                t.select = t.name in step["tracks"]
            if step.get("active"):
                tracks.active = tracks[step["active"]]
        elif op == "frame":
            scene.frame_set(step["scene_frame"])
        elif op == "markers":  # pixel positions of every track's markers, by clip frame
            result = {t.name: [row[:4] for row in markers_px(t, W, H)] for t in tracks}
        elif op == "state":
            result = state(scene, clip)
        elif op == "switch":  # 5.0: a "Switch" input socket; 4.x: the node's `check` property
            tree = scene_tree(scene)
            node = next(
                n
                for n in tree.nodes
                if n.parent is not None and n.parent.name == step["frame"] and n.bl_idname == "CompositorNodeSwitch"
            )
            if node.inputs.get("Switch") is not None:
                node.inputs["Switch"].default_value = step["value"]
            else:
                node.check = step["value"]
        elif op == "user_tree":  # as a user would have it: 5.0 a node group, 4.x the scene's own tree
            if hasattr(scene, "compositing_node_group"):
                tree = bpy.data.node_groups.new("User Compositing", "CompositorNodeTree")
                tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
                scene.compositing_node_group = tree
                output = tree.nodes.new("NodeGroupOutput")
            else:
                scene.use_nodes = True
                tree = scene.node_tree
                output = next(n for n in tree.nodes if n.bl_idname == "CompositorNodeComposite")
            rgb = tree.nodes.new("CompositorNodeRGB")
            rgb.name = "User RGB"
            tree.links.new(rgb.outputs[0], output.inputs[0])
        elif op == "render":
            result = render(scene, step["scene_frames"], step["dir"])
        else:
            result = run_operator(ctx, op, step.get("args", {}))
        out["steps"].append({"op": op, "result": result})
except Exception:
    out["exception"] = traceback.format_exc()
json.dump(out, open(sys.argv[2], "w"), indent=1, default=str)
