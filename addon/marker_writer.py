"""Markers in, markers out: the only module that touches tracking data.

Pixels <-> marker ``co`` and the frame conventions come from the backend's one home for
them, vendored as ``_pipstrack.conventions`` (docs/blender.md).

Marker frames here are *clip frames* (1 = the clip's first frame), which is what
``MovieTrackingMarker.frame`` holds whatever the clip's ``frame_start``.

Every run starts with a :func:`snapshot` of the tracks it may change; a failed or cancelled
run is undone with :func:`restore`, so no half-written track survives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._pipstrack.conventions import inside_frame, pixel_to_marker

STORE_KEY = "pipstrack"  # clip ID property: per-track visibility and confidence
OCCLUSION_MODES = ("KEEP", "DISABLE")


def is_enabled_at(track, frame: int) -> bool:
    """Whether ``track`` has an enabled marker exactly on clip frame ``frame``."""
    m = track.markers.find_frame(frame, exact=True)
    return m is not None and not m.mute


# -- snapshots -------------------------------------------------------------------------------
@dataclass
class MarkerState:
    frame: int
    co: tuple
    mute: bool
    is_keyed: bool
    pattern_corners: tuple
    search_min: tuple
    search_max: tuple


def _state(m) -> MarkerState:
    return MarkerState(
        m.frame,
        tuple(m.co),
        m.mute,
        m.is_keyed,
        tuple(tuple(c) for c in m.pattern_corners),
        tuple(m.search_min),
        tuple(m.search_max),
    )


def snapshot(tracks) -> dict:
    """Everything a run may change: the markers of ``tracks`` (by name) and their stored visibility."""
    return {t.name: [_state(m) for m in t.markers] for t in tracks}


def restore(clip, tracks, snap: dict, store: dict | None = None) -> None:
    """Puts the tracks of ``snap`` (found in the collection ``tracks``) back exactly as they
    were: markers a run added are deleted, changed ones reset, the visibility store too."""
    by_name = {t.name: t for t in tracks}
    for name, states in snap.items():
        track = by_name.get(name)
        if track is None:
            continue
        keep = {s.frame for s in states}
        for frame in [m.frame for m in track.markers if m.frame not in keep]:
            track.markers.delete_frame(frame)
        for s in states:
            m = track.markers.find_frame(s.frame, exact=True) or track.markers.insert_frame(s.frame, co=s.co)
            m.co = s.co
            m.pattern_corners = s.pattern_corners
            m.search_min, m.search_max = s.search_min, s.search_max
            m.mute, m.is_keyed = s.mute, s.is_keyed
    if store is not None:
        if store:
            clip[STORE_KEY] = store
        elif STORE_KEY in clip:
            del clip[STORE_KEY]


def stored(clip) -> dict:
    """A plain-dict copy of the clip's per-track visibility store (for snapshots)."""
    data = clip.get(STORE_KEY)
    return data.to_dict() if data is not None else {}


# -- writing ---------------------------------------------------------------------------------
def write_track(
    track,
    frames,
    xy,
    confidence,
    shape,
    *,
    occlusion: str = "KEEP",
    threshold: float = 0.5,
    keep_frames=frozenset(),
    lost=None,
) -> int:
    """Writes one trajectory as tracked (not keyed) markers; returns the number written.

    ``frames``: clip frames; ``xy``: (T,2) pixels, NaN where there is no estimate;
    ``confidence``: (T,) visibility probability. Frames in ``keep_frames`` (the user's
    keyframes, or known markers when filling gaps) are never touched. With
    ``occlusion="DISABLE"`` markers below ``threshold`` are written disabled, as Blender's
    own tracker marks a lost track; with "KEEP" every estimate stays enabled. A point
    estimated outside the frame gets a disabled marker on the frame's edge in both modes:
    Blender keeps markers inside the frame, so the position there would be wrong. Frames in
    ``lost`` ((T,) bool: the tracker lost the point there and never found it again) are written
    disabled in both modes.
    """
    co = pixel_to_marker(xy, width=shape[1], height=shape[0])
    outside = outside_frame(xy, shape)
    if lost is not None:
        outside = outside | np.asarray(lost, bool)
    written = 0
    for f, c, conf, out in zip(frames, co, confidence, outside):
        f = int(f)
        if f in keep_frames or not np.isfinite(c).all():
            continue
        c = np.clip(c, 0.0, 1.0)
        m = track.markers.find_frame(f, exact=True)
        if m is None:
            m = track.markers.insert_frame(f, co=(float(c[0]), float(c[1])))
        else:
            m.co = (float(c[0]), float(c[1]))
        m.is_keyed = False
        m.mute = is_muted(out, conf, occlusion, threshold)
        written += 1
    return written


def is_muted(outside, confidence, occlusion: str, threshold: float) -> bool:
    """The occlusion rule: disabled outside the frame always, below the threshold with "DISABLE".
    A plain bool: Blender 4.2 refuses numpy booleans for marker flags."""
    return bool(outside) or bool(occlusion == "DISABLE" and confidence < threshold)


def outside_frame(xy, shape) -> np.ndarray:
    """Which pixel positions lie outside the (height, width) image, or are unknown (NaN):
    where Blender cannot put a marker."""
    return ~inside_frame(xy, width=shape[1], height=shape[0])


def remember(clip, results: dict) -> None:
    """Keeps per-frame visibility on the clip (tracks cannot hold custom properties), merged
    with what earlier runs stored, so the occlusion choice can change without re-tracking.
    ``results``: track name -> (clip frames, PIPs' visibility probability, outside-the-image
    flags)."""
    for name, (frames, confidence, outside) in results.items():
        remember_track(clip, name, frames, confidence, outside)


def remember_track(clip, name: str, frames, confidence, outside) -> None:
    """:func:`remember` for one track: reads and writes only that track's entry, so a run with
    hundreds of tracks stores them a few per UI tick."""
    if STORE_KEY not in clip:
        clip[STORE_KEY] = {}
    group = clip[STORE_KEY]
    old = group.get(name)
    old = old.to_dict() if old is not None else {"frames": [], "confidence": [], "outside": []}
    merged = {int(f): (float(c), bool(o)) for f, c, o in zip(old["frames"], old["confidence"], old["outside"])}
    for f, c, o in zip(frames, confidence, outside):
        if np.isfinite(c):
            merged[int(f)] = (float(c), bool(o))
    keys = sorted(merged)
    group[name] = {
        "frames": keys,
        "confidence": [merged[k][0] for k in keys],
        "outside": [int(merged[k][1]) for k in keys],
    }


def apply_occlusion(clip, tracks, mode: str, threshold: float = 0.5) -> int:
    """Re-applies the occlusion choice to ``tracks``' pipstrack markers from the stored
    confidence (read once). Only tracked (not keyed) markers on frames pipstrack estimated
    change; returns how many."""
    if mode not in OCCLUSION_MODES:
        raise ValueError(f"occlusion mode must be one of {OCCLUSION_MODES}, not {mode!r}")
    store = stored(clip)
    changed = 0
    for track in tracks:
        data = store.get(track.name) or {"frames": [], "confidence": [], "outside": []}
        for f, conf, outside in zip(data["frames"], data["confidence"], data["outside"]):
            m = track.markers.find_frame(int(f), exact=True)
            if m is None or m.is_keyed:
                continue
            mute = is_muted(outside, conf, mode, threshold)
            if m.mute != mute:
                m.mute = mute
                changed += 1
    return changed
