"""Trackers that pipstrack is compared against in ``pipstrack eval``.

Every method has the same shape, so the evaluation treats them alike::

    method(rgbs (T,H,W,3) uint8, queries (N,3) rows [0, x, y]) -> (xy (T,N,2) float64, visible (T,N) bool)

Queries are on frame 0 and tracked forward. Positions use pipstrack's pixel convention
(pixel centres at integer coordinates, origin top-left, y down). The classical trackers
report a point as lost once they give up on it; from then on it stays lost, held at its
last good position, because that is what an artist sees in those tools.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable

import cv2
import numpy as np

from ..conventions import inside_frame, marker_to_pixel, pixel_to_marker
from .clip_editor import NoClipEditor, clip_editor_context

Method = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class BaselineUnavailable(RuntimeError):
    """The method cannot run here at all (e.g. no ``bpy``); the evaluation reports it as such."""


def _check(rgbs: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rgbs = np.asarray(rgbs)
    queries = np.asarray(queries, np.float64).reshape(-1, 3)
    if rgbs.ndim != 4 or rgbs.shape[-1] != 3 or rgbs.dtype != np.uint8:
        raise ValueError(f"rgbs must be (T,H,W,3) uint8, got {rgbs.shape} {rgbs.dtype}")
    if np.any(queries[:, 0] != 0):
        raise ValueError("the baselines track forward from frame 0: every query must be on frame 0")
    return rgbs, queries


# -- trivial ------------------------------------------------------------------------------------


def zero_motion(rgbs: np.ndarray, queries: np.ndarray):
    """Every point stays where it was queried and is always visible: the floor any tracker must beat."""
    rgbs, queries = _check(rgbs, queries)
    T = len(rgbs)
    xy = np.repeat(queries[None, :, 1:], T, axis=0)
    return xy, np.ones(xy.shape[:2], bool)


# -- OpenCV pyramidal Lucas-Kanade -----------------------------------------------------------------


def lucas_kanade(rgbs: np.ndarray, queries: np.ndarray, win: int = 21, levels: int = 3, fb_threshold: float = 1.0):
    """Frame-to-frame pyramidal LK with a forward-backward check.

    ``levels`` counts pyramid levels including full resolution (OpenCV's ``maxLevel`` is
    ``levels - 1``). A point is lost when LK reports failure, when tracking the new position
    back to the previous frame misses by more than ``fb_threshold`` px, or when it leaves
    the image. OpenCV already puts pixel centres at integer coordinates, so no conversion.
    """
    rgbs, queries = _check(rgbs, queries)
    T, H, W = rgbs.shape[:3]
    N = len(queries)
    xy = np.zeros((T, N, 2), np.float64)
    visible = np.zeros((T, N), bool)
    xy[0] = queries[:, 1:]
    visible[0] = True
    alive = np.ones(N, bool)
    params = dict(
        winSize=(win, win),
        maxLevel=max(levels - 1, 0),
        criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01),
    )
    prev = cv2.cvtColor(rgbs[0], cv2.COLOR_RGB2GRAY)
    for t in range(1, T):
        cur = cv2.cvtColor(rgbs[t], cv2.COLOR_RGB2GRAY)
        xy[t] = xy[t - 1]
        idx = np.flatnonzero(alive)
        if len(idx):
            p0 = xy[t - 1, idx].astype(np.float32).reshape(-1, 1, 2)
            p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, cur, p0, None, **params)
            p0b, st2, _ = cv2.calcOpticalFlowPyrLK(cur, prev, p1, None, **params)
            p1, p0b = p1.reshape(-1, 2).astype(np.float64), p0b.reshape(-1, 2).astype(np.float64)
            fb = np.linalg.norm(p0b - p0.reshape(-1, 2), axis=1)
            inside = inside_frame(p1, width=W, height=H)
            ok = (
                (st1.ravel() == 1)
                & (st2.ravel() == 1)
                & (fb <= fb_threshold)
                & inside
                & np.all(np.isfinite(p1), axis=1)
            )
            xy[t, idx[ok]] = p1[ok]
            visible[t, idx[ok]] = True
            alive[idx[~ok]] = False
        prev = cur
    return xy, visible


# -- Blender's tracker (libmv), through bpy ---------------------------------------------------------


def _import_bpy():
    try:
        import bpy  # noqa: F401  (Blender as a Python module; heavy, so imported on first use)
    except Exception as e:  # ImportError, or a bpy build that fails to initialise
        raise BaselineUnavailable(f"Blender's Python module (bpy) is not importable: {type(e).__name__}: {e}") from None
    return bpy


def blender_tracker(
    rgbs: np.ndarray,
    queries: np.ndarray,
    motion_model: str = "Loc",
    pattern_size: int = 21,
    search_size: int = 71,
    pattern_match: str = "KEYFRAME",
    correlation_min: float = 0.75,
):
    """Blender's own 2D tracker on the clip, run headless through ``bpy``.

    The frames go to a temporary PNG sequence that Blender loads as a movie clip; each
    query becomes a track keyed on clip frame 1 and ``bpy.ops.clip.track_markers`` runs
    synchronously (bpy-as-module has no event loop, so exec, not the modal job). Defaults
    are Blender 5.0's own (pattern 21 px, search 71 px, match keyframe, correlation 0.75).
    A marker Blender disables, or a frame it has no marker on, means lost.
    """
    rgbs, queries = _check(rgbs, queries)
    bpy = _import_bpy()
    T, H, W = rgbs.shape[:3]
    tmp = tempfile.mkdtemp(prefix="pipstrack-blender-")
    clip = None
    try:
        clip = _load_png_clip(bpy, rgbs, tmp)
        settings = clip.tracking.settings
        settings.default_pattern_size = int(pattern_size)
        settings.default_search_size = int(search_size)
        settings.default_motion_model = motion_model
        settings.default_pattern_match = pattern_match
        settings.default_correlation_min = float(correlation_min)
        tracks = _key_tracks(clip, queries, W, H, motion_model, pattern_match, correlation_min)
        try:
            ctx = clip_editor_context(bpy, clip)
        except NoClipEditor as e:
            raise BaselineUnavailable(str(e)) from None
        with bpy.context.temp_override(**ctx):
            if not bpy.ops.clip.track_markers.poll():
                raise BaselineUnavailable("bpy.ops.clip.track_markers cannot run: no usable Clip Editor context")
            result = bpy.ops.clip.track_markers(backwards=False, sequence=True)
        if "FINISHED" not in result:
            raise RuntimeError(f"bpy.ops.clip.track_markers returned {result}")
        xy, visible = _read_tracks(tracks, pixel_to_marker(queries[:, 1:], width=W, height=H), T, W, H)
        xy[0] = queries[:, 1:]  # exact, not through float32 marker storage
        return xy, visible
    finally:
        if clip is not None:
            _forget_clip(bpy, clip)
        shutil.rmtree(tmp, ignore_errors=True)


def _load_png_clip(bpy, rgbs: np.ndarray, folder: str):
    """The frames as a PNG sequence that Blender loads as a movie clip on scene frames 1..T."""
    T, H, W = rgbs.shape[:3]
    for k, img in enumerate(rgbs):
        cv2.imwrite(os.path.join(folder, f"frame_{k + 1:05d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    clip = bpy.data.movieclips.load(os.path.join(folder, "frame_00001.png"))
    clip.frame_start = 1
    if tuple(clip.size) != (W, H) or clip.frame_duration != T:
        raise RuntimeError(
            f"Blender read the PNG sequence as {tuple(clip.size)} x {clip.frame_duration} frames, "
            f"expected {(W, H)} x {T}"
        )
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 1, max(T, scene.frame_start)
    scene.frame_set(1)
    return clip


def _key_tracks(clip, queries, W, H, motion_model, pattern_match, correlation_min) -> list:
    """One selected track per query, keyed on clip frame 1 at the query's position."""
    co0 = pixel_to_marker(queries[:, 1:], width=W, height=H)
    tracks = clip.tracking.tracks
    for old in list(tracks):
        tracks.remove(old)
    made = []
    for i in range(len(queries)):
        track = tracks.new(name=f"q{i:04d}", frame=1)
        track.motion_model = motion_model
        track.pattern_match = pattern_match
        track.correlation_min = float(correlation_min)
        track.markers[0].co = (float(co0[i, 0]), float(co0[i, 1]))
        track.select = True
        made.append(track)
    return made


def _read_tracks(tracks, co0: np.ndarray, T: int, W: int, H: int) -> tuple[np.ndarray, np.ndarray]:
    """(T,N,2) pixels and (T,N) visibility from the keyed ``co0``; once Blender loses a point
    it stays lost, held at its last position."""
    co = np.zeros((T, len(tracks), 2), np.float64)
    visible = np.zeros((T, len(tracks)), bool)
    co[0], visible[0] = co0, True
    for i, track in enumerate(tracks):
        alive = True
        for f in range(2, T + 1):
            marker = track.markers.find_frame(f) if alive else None
            if marker is None or marker.mute:
                alive = False
                co[f - 1, i] = co[f - 2, i]
            else:
                co[f - 1, i] = marker.co[:]
                visible[f - 1, i] = True
    return marker_to_pixel(co, width=W, height=H), visible


def _forget_clip(bpy, clip) -> None:
    """Removes the clip (and the Clip Editor's hold on it); never raises."""
    try:
        for area in bpy.context.window_manager.windows[0].screen.areas:
            if area.type == "CLIP_EDITOR" and area.spaces.active.clip == clip:
                area.spaces.active.clip = None
        bpy.data.movieclips.remove(clip)
    except Exception:
        pass


def blender_available() -> str | None:
    """None when bpy imports, else why not (for the report)."""
    try:
        _import_bpy()
    except BaselineUnavailable as e:
        return str(e)
    return None


# -- pipstrack --------------------------------------------------------------------------------------


def pipstrack_method(model, device="auto", *, lone: bool = False, **tracker_options) -> Method:
    """pipstrack's own tracker in the common shape; the Tracker is kept as ``method.tracker``.
    ``lone``: every query tracked in a call of its own, so no company and no co-motion (a lone
    marker in Blender is tracked like this)."""
    from ..engine.tracker import Tracker

    tracker = Tracker(model, device=device, **tracker_options)

    def method(rgbs, queries):
        rgbs, queries = np.asarray(rgbs), np.asarray(queries, np.float64)
        calls = [queries[[n]] for n in range(len(queries))] if lone else [queries]
        runs = [tracker.track(rgbs, q) for q in calls]
        xy = np.concatenate([r.xy for r in runs], axis=1).astype(np.float64)
        return xy, np.concatenate([r.visible for r in runs], axis=1)

    method.tracker = tracker
    method.any_query_frame = True  # the tracker takes queries on any frame, both ways
    return method


BASELINES: dict[str, tuple[str, Method]] = {
    "zero": ("zero motion: the query position on every frame, always visible", zero_motion),
    "lk": ("OpenCV pyramidal Lucas-Kanade, 21 px window, 3 levels, forward-backward check 1 px", lucas_kanade),
    "blender-loc": (
        "Blender 5.0 tracker via bpy, motion model Loc, pattern 21 px, search 71 px, match keyframe",
        lambda r, q: blender_tracker(r, q, motion_model="Loc"),
    ),
    "blender-perspective": (
        "Blender 5.0 tracker via bpy, motion model Perspective, pattern 21 px, search 71 px, match keyframe",
        lambda r, q: blender_tracker(r, q, motion_model="Perspective"),
    ),
}
