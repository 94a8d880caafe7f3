"""Operators of the PIPs tab. Each tracking operator has two paths over one job driver:
``invoke`` (modal, timer-driven: the UI stays live, markers appear as windows finish, Esc
cancels; every timer tick stays within TICK_BUDGET_S) and ``execute`` (blocking: scripts,
tests, Blender as a Python module). They are not registered for redo: Adjust Last Operation
and Repeat Last would run ``execute``, the blocking path. A file load or an undo stops a run
(handlers at the end), so no run writes into data Blender has replaced."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

import bpy
import numpy as np
from bpy.app.handlers import persistent
from bpy.props import EnumProperty, FloatProperty

from . import job_driver as jd
from . import marker_writer as mw
from ._pipstrack.wire import client as wire_client
from ._pipstrack.wire import protocol as P
from .clip_source import scene_to_clip
from .preferences import addon_prefs

TICK_BUDGET_S = 0.012  # work per timer tick (upload, receiving, marker writes); the tick stays under 30 ms


# -- helpers ---------------------------------------------------------------------------------
def edited_clip(context):
    space = getattr(context, "space_data", None)
    if space is not None and space.type == "CLIP_EDITOR":
        return space.clip
    return None


def selected_tracks(clip):
    return [t for t in clip.tracking.objects.active.tracks if t.select and not t.hide]


def clip_has_selection(context) -> bool:
    clip = edited_clip(context)
    return clip is not None and bool(selected_tracks(clip))


def settings_from(context, mode: str, direction: str = "BOTH") -> jd.Settings:
    prefs = addon_prefs(context)
    scene, props, clip = context.scene, context.scene.pipstrack, edited_clip(context)
    lo, hi = (props.frame_start, props.frame_end) if props.use_custom_range else (scene.frame_start, scene.frame_end)
    return jd.Settings(
        mode=mode,
        direction=direction,
        first=scene_to_clip(clip, lo),
        last=scene_to_clip(clip, hi),
        current=scene_to_clip(clip, scene.frame_current),
        occlusion=props.occlusion,
        threshold=props.threshold,
        frames_via=prefs.frames_via,
        working_size=prefs.working_size,
        iters=prefs.iters,
        refine=prefs.refine,
        comotion=prefs.comotion,
        address=prefs.address.strip(),
        keys_dir=bpy.path.abspath(prefs.keys_dir) if prefs.keys_dir else None,
    )


def apply_occlusion_to_selection(context) -> int:
    clip = edited_clip(context)
    if clip is None:
        return 0
    props = context.scene.pipstrack
    return mw.apply_occlusion(clip, selected_tracks(clip), props.occlusion, props.threshold)


def redraw_clip_editors(context):
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "CLIP_EDITOR":
                area.tag_redraw()


# -- tracking ----------------------------------------------------------------------------------
class _TrackingOperator:
    """Shared modal/blocking plumbing; subclasses say which run to make."""

    bl_options = {"UNDO"}  # one undo step when a run finishes; not REGISTER: redo would block (module docstring)
    _run = None
    _timer = None

    @classmethod
    def poll(cls, context):
        if not clip_has_selection(context):
            cls.poll_message_set("Select the tracks to work on in a Movie Clip Editor")
            return False
        return True

    def make_settings(self, context) -> jd.Settings:
        raise NotImplementedError

    def _start(self, context):
        clip = edited_clip(context)
        try:
            return jd.TrackingRun(clip, selected_tracks(clip), self.make_settings(context)).start()
        except jd.RunError as e:
            self.report({"ERROR"}, str(e))
            return None

    def execute(self, context):
        run = self._start(context)
        if run is None:
            return {"CANCELLED"}
        wm = context.window_manager
        wm.progress_begin(0, 100)
        try:
            run.run_blocking(on_progress=lambda f: wm.progress_update(int(100 * f)))
        finally:
            wm.progress_end()
        return self._report(run)

    def invoke(self, context, event):
        if not self.begin_modal(context):
            return {"CANCELLED"}
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def begin_modal(self, context) -> bool:
        """Starts the run and the timer that drives :meth:`modal` (the job is submitted; frames go
        out tick by tick)."""
        self._run = self._start(context)
        if self._run is None:
            return False
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.progress_begin(0, 100)
        context.workspace.status_text_set("pipstrack: tracking (Esc to cancel)")
        return True

    def modal(self, context, event):
        run = self._run
        if event.type == "ESC" and event.value == "PRESS":
            run.cancel()
        elif event.type == "TIMER" and event.timer is self._timer:
            run.poll(TICK_BUDGET_S)
            context.window_manager.progress_update(int(100 * run.progress))
            stage = getattr(run.job, "stage", None)  # what the backend is doing: "network", "refinement", ...
            doing = f"tracking ({stage})" if stage else "tracking"
            context.workspace.status_text_set(f"pipstrack: {doing} {100 * run.progress:.0f}% (Esc to cancel)")
            redraw_clip_editors(context)
        if run.state == "running":
            return {"PASS_THROUGH"}
        self._end_modal(context)
        redraw_clip_editors(context)
        return self._report(run)

    def cancel(self, context):
        """Blender ends the operator (a file is loaded, the window closes): stop the job."""
        if self._run is not None:
            self._run.abandon(" (Blender ended the operation)")
        self._end_modal(context)

    def _end_modal(self, context) -> None:
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        if context.workspace is not None:
            context.workspace.status_text_set(None)

    def _report(self, run):
        for w in run.s.warnings:
            self.report({"WARNING"}, w)
        for line in run.quality[:8]:  # e.g. "Track.003: not verified 1017-1033, found again at 1034"
            self.report({"INFO"}, f"pipstrack: {line}")
        if len(run.quality) > 8:
            self.report({"INFO"}, f"pipstrack: ... and {len(run.quality) - 8} more tracks with unverified frames")
        if run.state == "done":
            self.report({"INFO"}, run.message)
            return {"FINISHED"}
        self.report({"WARNING"} if run.state == "cancelled" else {"ERROR"}, run.message)
        return {"CANCELLED"}


class PIPSTRACK_OT_track_markers(_TrackingOperator, bpy.types.Operator):
    """Track the selected tracks with PIPs from their keyframed markers, through occlusions"""

    bl_idname = "pipstrack.track_markers"
    bl_label = "Track with PIPs"

    direction: EnumProperty(
        name="Direction",
        default="BOTH",
        items=[
            ("FORWARD", "Forward", "After the last keyframe"),
            ("BACKWARD", "Backward", "Before the first keyframe"),
            ("BOTH", "Both", "Before the first and after the last keyframe"),
        ],
    )

    def make_settings(self, context):
        return settings_from(context, "TRACK", self.direction)


class PIPSTRACK_OT_fill_gaps(_TrackingOperator, bpy.types.Operator):
    """Fill the missing and disabled frames between known markers of the selected tracks"""

    bl_idname = "pipstrack.fill_gaps"
    bl_label = "Fill Gaps with PIPs"

    def make_settings(self, context):
        return settings_from(context, "FILL")


# -- tracks ------------------------------------------------------------------------------------
class PIPSTRACK_OT_add_grid(bpy.types.Operator):
    """Add a grid of new tracks keyed on the current frame (then track them)"""

    bl_idname = "pipstrack.add_grid"
    bl_label = "Add Track Grid"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return edited_clip(context) is not None

    def execute(self, context):
        clip = edited_clip(context)
        props = context.scene.pipstrack
        tracks = clip.tracking.objects.active.tracks
        frame = scene_to_clip(clip, context.scene.frame_current)
        lo, hi = np.zeros(2), np.ones(2)
        if props.grid_region == "SELECTION":
            cos = [m.co[:] for t in selected_tracks(clip) for m in [t.markers.find_frame(frame)] if m is not None]
            if len(cos) < 2:
                self.report({"ERROR"}, "select at least two tracks with markers on this frame to span the grid")
                return {"CANCELLED"}
            lo, hi = np.min(cos, axis=0), np.max(cos, axis=0)
        cols, rows = props.grid_columns, props.grid_rows
        xs = lo[0] + (hi[0] - lo[0]) * (np.arange(cols) + 0.5) / cols
        ys = lo[1] + (hi[1] - lo[1]) * (np.arange(rows) + 0.5) / rows
        for t in tracks:
            t.select = False
        for j, y in enumerate(ys[::-1]):
            for i, x in enumerate(xs):
                track = tracks.new(name=f"PIPs.{j:02d}.{i:02d}", frame=frame)
                track.markers.find_frame(frame).co = (float(x), float(y))
                track.select = True
        self.report({"INFO"}, f"pipstrack: added {cols * rows} tracks on frame {context.scene.frame_current}")
        return {"FINISHED"}


class PIPSTRACK_OT_apply_occlusion(bpy.types.Operator):
    """Re-apply the occluded-frames choice to the selected tracks from their stored visibility"""

    bl_idname = "pipstrack.apply_occlusion"
    bl_label = "Apply Occlusion Choice"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return clip_has_selection(context)

    def execute(self, context):
        n = apply_occlusion_to_selection(context)
        self.report({"INFO"}, f"pipstrack: {n} marker(s) changed")
        return {"FINISHED"}


# -- backend -----------------------------------------------------------------------------------
_local_backend: subprocess.Popen | None = None


class PIPSTRACK_OT_check_backend(bpy.types.Operator):
    """Ask the backend for its version, model and device (the answer appears in the panel)"""

    bl_idname = "pipstrack.check_backend"
    bl_label = "Check Backend"

    timeout: FloatProperty(name="Timeout", default=2.0, min=0.1, max=60.0)

    @classmethod
    def poll(cls, context):
        if _check["thread"] is not None:
            cls.poll_message_set("Already checking the backend")
            return False
        return True

    def execute(self, context):
        prefs = addon_prefs(context)
        address = prefs.address.strip()
        wm = context.window_manager
        refusal = jd.online_access_refusal(address)
        if refusal:
            wm.pipstrack_status = "online access is off"
            self.report({"ERROR"}, f"pipstrack: {refusal}")
            return {"CANCELLED"}
        keys = bpy.path.abspath(prefs.keys_dir) if prefs.keys_dir else None
        thread = threading.Thread(target=_ask_backend, args=(address, self.timeout, keys), daemon=True)
        _check.update(thread=thread, address=address, answer=None)
        wm.pipstrack_status = f"checking {address} ..."
        thread.start()
        bpy.app.timers.register(check_finished, first_interval=0.1)
        return {"FINISHED"}


# Check Backend asks on a thread (no bpy there) and a timer shows the answer: the UI never waits.
_check = {"thread": None, "address": "", "answer": None}


def _ask_backend(address, timeout, keys_dir):
    try:
        info = wire_client.ping(address, timeout=timeout, keys_dir=keys_dir)
        _check["answer"] = (
            f"pipstrack {info.get('server')} · {os.path.basename(str(info.get('model')))} · {info.get('device')}"
        )
    except Exception as e:
        _check["answer"] = f"not reachable: {getattr(e, 'message', e)}"


def check_finished():
    """Timer: once the check's thread has its answer, shows it; returns None then (timer ends)."""
    thread = _check["thread"]
    if thread is None:
        return None
    if thread.is_alive():
        return 0.1
    _check["thread"] = None
    bpy.context.window_manager.pipstrack_status = _check["answer"] or "no answer"
    redraw_clip_editors(bpy.context)
    return None


def backend_command(prefs) -> list[str]:
    """How to start `pipstrack serve` here: the configured Python, else a `pipstrack` on PATH."""
    if prefs.python:
        cmd = [bpy.path.abspath(prefs.python), "-m", "pipstrack"]
    elif shutil.which("pipstrack"):
        cmd = [shutil.which("pipstrack")]
    else:
        raise RuntimeError("set 'Backend Python' in the add-on preferences to the Python where pipstrack is installed")
    cmd += ["serve", "--bind", prefs.address.strip(), "--device", prefs.device]
    cmd += ["--threads", str(prefs.threads) if prefs.threads else "auto"]
    if prefs.model:
        cmd += ["--model", bpy.path.abspath(prefs.model)]
    return cmd


class PIPSTRACK_OT_start_backend(bpy.types.Operator):
    """Start `pipstrack serve` on this machine at the backend address (stopped when Blender quits)"""

    bl_idname = "pipstrack.start_backend"
    bl_label = "Start Local Backend"

    @classmethod
    def poll(cls, context):
        return _local_backend is None or _local_backend.poll() is not None

    def execute(self, context):
        global _local_backend
        prefs = addon_prefs(context)
        if not P.is_loopback(prefs.address.strip()):
            self.report({"ERROR"}, "a local backend listens on this machine only: use a tcp://127.0.0.1:PORT address")
            return {"CANCELLED"}
        try:
            cmd = backend_command(prefs)
            flags = subprocess.CREATE_NO_WINDOW if sys.platform == "win32" else 0
            _local_backend = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, creationflags=flags)
        except (RuntimeError, OSError) as e:
            self.report({"ERROR"}, f"cannot start the backend: {e}")
            return {"CANCELLED"}
        context.window_manager.pipstrack_status = "starting (the model loads in a few seconds)"
        self.report({"INFO"}, "pipstrack: backend starting: " + " ".join(cmd))
        return {"FINISHED"}


def stop_local_backend():
    global _local_backend
    if _local_backend is not None and _local_backend.poll() is None:
        _local_backend.terminate()
        try:
            _local_backend.wait(5)
        except subprocess.TimeoutExpired:
            _local_backend.kill()
    _local_backend = None


classes = (
    PIPSTRACK_OT_track_markers,
    PIPSTRACK_OT_fill_gaps,
    PIPSTRACK_OT_add_grid,
    PIPSTRACK_OT_apply_occlusion,
    PIPSTRACK_OT_check_backend,
    PIPSTRACK_OT_start_backend,
)


_register, _unregister = bpy.utils.register_classes_factory(classes)


@persistent
def _stop_runs_on_load(*_args):
    """Another file is being opened: its data replaces the clips a run writes into."""
    for run in list(jd.ACTIVE):
        run.abandon(" (another file was opened)")


@persistent
def _stop_runs_on_undo(*_args):
    """Undo/redo replaces the data a run holds: put its tracks back first (they are still valid
    now), so the undo step lands on the tracks as they were."""
    for run in list(jd.ACTIVE):
        run.cancel(" by undo")


_HANDLERS = (
    (bpy.app.handlers.load_pre, _stop_runs_on_load),
    (bpy.app.handlers.undo_pre, _stop_runs_on_undo),
    (bpy.app.handlers.redo_pre, _stop_runs_on_undo),
)


def register():
    _register()
    for handlers, fn in _HANDLERS:
        handlers.append(fn)


def unregister():
    for handlers, fn in _HANDLERS:
        if fn in handlers:
            handlers.remove(fn)
    if bpy.app.timers.is_registered(check_finished):
        bpy.app.timers.unregister(check_finished)
    for run in list(jd.ACTIVE):
        run.abandon(" (pipstrack was disabled)")
    _unregister()
    stop_local_backend()
    jd.close_connections()
