"""Runs in a fresh Python with Blender as a module (bpy): installs the built extension zip the
way Blender's Extensions preferences do, opens a clip in a Clip Editor, runs a list of steps
(place markers, run the add-on's operators) and writes what the tracks hold as JSON.

    python tests/blender/driver.py SPEC.json OUT.json

A subprocess per scenario: BLENDER_USER_RESOURCES must point at a temporary folder before
bpy is imported, so no real user configuration is touched.
"""

import json
import os
import sys
import tempfile
import traceback

spec = json.load(open(sys.argv[1]))
os.environ["BLENDER_USER_RESOURCES"] = spec.get("user_resources") or tempfile.mkdtemp(prefix="pipstrack-bl-")

import bpy  # noqa: E402
from bl_common import PACKAGE as pkg  # noqa: E402
from bl_common import clip_editor, install_extension, markers_px, open_clip, px_to_co  # noqa: E402

out = {"reports": [], "steps": []}


def dump(clip):
    W, H = clip.size
    tracks = {}
    for t in clip.tracking.objects.active.tracks:
        tracks[t.name] = markers_px(t, W, H)
    store = clip.get("pipstrack")
    return {"tracks": tracks, "store": store.to_dict() if store is not None else {}}


try:
    install_extension(bpy, spec, out)
    if "online_access" in spec:  # Preferences > System > Network > Allow Online Access
        bpy.context.preferences.system.use_online_access = spec["online_access"]
    if spec.get(
        "convert"
    ):  # the PNG sequence re-saved by Blender as another format (DPX, Cineon, JPEG 2000, Targa, Iris)
        import glob

        fmt, folder = spec["convert"], os.path.join(os.path.dirname(spec["clip"]), "converted-" + spec["convert"])
        os.makedirs(folder, exist_ok=True)
        for src in sorted(glob.glob(os.path.join(os.path.dirname(spec["clip"]), "*.png"))):
            img = bpy.data.images.load(src)
            ext = {"DPX": ".dpx", "CINEON": ".cin", "JPEG2000": ".jp2", "TARGA": ".tga", "IRIS": ".rgb"}[fmt]
            scene_settings = bpy.context.scene.render.image_settings
            scene_settings.file_format = fmt
            if fmt == "JPEG2000":
                scene_settings.quality = 100
            img.save_render(os.path.join(folder, os.path.basename(src)[:-4] + ext))
            bpy.data.images.remove(img)
        spec["clip"] = os.path.join(folder, os.path.basename(spec["clip"])[:-4] + ext)
        out["converted"] = spec["clip"]
    out["heavy_modules"] = sorted(m for m in ("torch", "pipstrack", "cv2") if m in sys.modules)
    scene = bpy.context.scene
    clip = open_clip(bpy, spec)
    out["clip"] = {"source": clip.source, "size": list(clip.size), "duration": clip.frame_duration}
    scene.frame_start = spec.get("scene_start", clip.frame_start)
    scene.frame_end = spec.get("scene_end", clip.frame_start + clip.frame_duration - 1)
    for k, v in spec.get("settings", {}).items():
        setattr(scene.pipstrack, k, v)
    ctx = clip_editor(bpy, clip)
    W, H = clip.size
    tracks = clip.tracking.objects.active.tracks

    for step in spec["steps"]:
        op = step["op"]
        result = None
        if op == "marker":  # a marker at clip frame `frame`, pixel position x, y
            t = tracks.get(step["track"]) or tracks.new(name=step["track"], frame=step["frame"])
            m = t.markers.find_frame(step["frame"], exact=True) or t.markers.insert_frame(step["frame"], co=(0.5, 0.5))
            m.co = px_to_co(step["x"], step["y"], W, H)
            m.is_keyed = step.get("keyed", True)
            m.mute = step.get("mute", False)
        elif op == "select":
            for t in tracks:
                t.select = t.name in step["tracks"]
        elif op == "frame":
            scene.frame_set(step["scene_frame"])
        elif op == "set":
            setattr(scene.pipstrack, step["name"], step["value"])
        elif op == "dump":
            result = dump(clip)
        elif op == "save":
            bpy.ops.wm.save_as_mainfile(filepath=step["path"])
        elif op == "break_writer":  # the marker writer fails after writing some markers (e.g. a Blender API change)
            mw = sys.modules[pkg].marker_writer
            real = mw.write_track
            calls = []

            def failing(*a, **kw):
                calls.append(1)
                n = real(*a, **kw)
                if len(calls) >= step.get("after", 1):
                    raise TypeError("simulated failure while writing markers")
                return n

            mw.write_track = failing
        elif op == "kill_after":  # SIGKILL a process (the backend) while the next step runs
            import signal
            import threading

            threading.Timer(step["delay"], os.kill, (step["pid"], signal.SIGKILL)).start()
        elif op == "cancel_run":  # the modal operator's path, driven by hand: start, wait for markers, cancel
            import time

            addon = sys.modules[pkg]
            with bpy.context.temp_override(**ctx):
                settings = addon.operators.settings_from(bpy.context, "TRACK", step.get("direction", "BOTH"))
                run = addon.job_driver.TrackingRun(clip, addon.operators.selected_tracks(clip), settings).start()
                end, seen = time.monotonic() + 60, None
                while run.poll() == "running" and time.monotonic() < end:
                    if run.job.partial is not None:
                        seen = dump(clip)  # markers drawn while tracking runs
                        break
                    time.sleep(0.02)
                run.cancel()
            result = {"state": run.state, "message": run.message, "during": seen}
        elif op == "check_backend":  # the operator returns at once; its timer shows the answer later
            import time

            addon = sys.modules[pkg]
            with bpy.context.temp_override(**ctx):
                t0 = time.perf_counter()
                ret = sorted(bpy.ops.pipstrack.check_backend())
                took = time.perf_counter() - t0
                status_now = bpy.context.window_manager.pipstrack_status
                end = time.monotonic() + 30
                while addon.operators.check_finished() is not None and time.monotonic() < end:
                    time.sleep(0.05)  # Blender's timers do not run headless: the driver calls the timer
            result = {
                "returned": ret,
                "execute_s": took,
                "status_while_checking": status_now,
                "status": bpy.context.window_manager.pipstrack_status,
            }
        elif op == "bl_options":
            ops = sys.modules[pkg].operators
            result = {
                "track_markers": sorted(ops.PIPSTRACK_OT_track_markers.bl_options),
                "fill_gaps": sorted(ops.PIPSTRACK_OT_fill_gaps.bl_options),
            }
        elif op == "modal_run":  # the operator's invoke/modal path, with synthetic timer events
            import modal_harness

            result = modal_harness.run(bpy, sys.modules[pkg], ctx, step, out, dump)
            if result.pop("reloaded", False):
                clip = bpy.data.movieclips[0]
                tracks = clip.tracking.objects.active.tracks
                ctx = clip_editor(bpy, clip)
        else:  # an operator of the add-on, e.g. {"op": "pipstrack.track_markers", "args": {...}}
            group, name = op.split(".")
            with bpy.context.temp_override(**ctx):
                fn = getattr(getattr(bpy.ops, group), name)
                if not fn.poll():
                    result = {"poll": False}
                else:
                    try:
                        result = sorted(fn(**step.get("args", {})))
                    except RuntimeError as e:  # an operator's ERROR report raises here
                        result = {"error": str(e)}
        out["steps"].append({"op": op, "result": result})
    out["final"] = dump(clip)
    if spec.get("disable"):
        bpy.ops.preferences.addon_disable(module=pkg)
        out["after_disable"] = {
            "scene_prop": hasattr(bpy.types.Scene, "pipstrack"),
            "wm_prop": hasattr(bpy.types.WindowManager, "pipstrack_status"),
            "ops": [o for o in dir(bpy.ops.pipstrack)],
            "menu_funcs": [f.__name__ for f in getattr(bpy.types.CLIP_MT_track.draw, "_draw_funcs", [])],
            "timers": bpy.app.timers.is_registered,
        }
        out["after_disable"].pop("timers")
except Exception:
    out["exception"] = traceback.format_exc()
json.dump(out, open(sys.argv[2], "w"), indent=1, default=str)
