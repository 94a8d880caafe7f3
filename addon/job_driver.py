"""One tracking run, shared by the modal (UI) and the blocking (scripts, tests) operators.

A run plans what to send from the selected tracks, snapshots them, submits one job over the
add-on's ZeroMQ connection, writes partial trajectories as they stream in, and on success
writes the final ones and remembers per-frame visibility. A failure, a cancel or a vanished
backend puts the tracks back exactly as they were.

Nothing here waits unless :meth:`TrackingRun.run_blocking` is called: the modal operator calls
:meth:`TrackingRun.poll` from a timer, so Blender's UI keeps running while tracking goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import marker_writer as mw
from ._pipstrack import conventions as cv
from ._pipstrack.conventions import marker_to_pixel
from ._pipstrack.io import formats
from ._pipstrack.wire import client as wire_client
from ._pipstrack.wire import protocol as P
from .clip_source import ClipFrames, ClipSourceError


class RunError(RuntimeError):
    """A run cannot start or failed; the message is for the user's status bar."""


_connections: dict = {}


def connection(address: str, keys_dir: str | None = None):
    """The add-on's connection to ``address`` (one DEALER shared by all runs), made on demand
    and replaced once it has failed (backend restarted, timed out)."""
    key = (address, keys_dir or None)
    conn = _connections.get(key)
    if conn is None or conn.failure is not None:
        if conn is not None:
            conn.close()
        conn = wire_client.Connection(address, keys_dir=keys_dir or None)
        _connections[key] = conn
    return conn


def close_connections() -> None:
    for conn in _connections.values():
        conn.close()
    _connections.clear()


def describe_error(code, message) -> str:
    if code == P.E_TIMEOUT:
        return (
            f"pipstrack backend not answering ({message}). Start it (PIPs tab > Backend), check the address, "
            "or set the keys folder in the preferences for a secured render box"
        )
    return f"pipstrack backend: {message} [{code}]"


@dataclass
class TrackPlan:
    """What one track contributes: its keyframes (job index, x, y in pixels) and frames to keep."""

    track_name: str
    anchors: np.ndarray  # (K,3)
    keep: frozenset  # clip frames never written (the user's keyframes / known markers)
    lo: int = 0  # clip frames this track may be written on
    hi: int = 0


@dataclass
class Settings:
    mode: str = "TRACK"  # "TRACK" from keyframes, "FILL" only gaps between known markers
    direction: str = "BOTH"  # FORWARD / BACKWARD / BOTH (TRACK only)
    first: int = 1  # clip frames, inclusive
    last: int = 1
    current: int = 1  # clip frame the user is on (anchor of tracks without keyframes)
    occlusion: str = "KEEP"
    threshold: float = 0.5
    frames_via: str = "AUTO"  # AUTO / FILES / PIXELS
    working_size: int = 512
    iters: int = 6
    refine: bool = True
    comotion: bool = True
    address: str = "tcp://127.0.0.1:5555"
    keys_dir: str | None = None
    partial_interval: float = 1.0
    warnings: list = field(default_factory=list)


def plan_tracks(clip, tracks, s: Settings) -> list[TrackPlan]:
    """Anchors per track. TRACK: the keyframed, enabled markers inside the range (or, with none,
    the marker on the current frame). FILL: every enabled marker, keeping only tracks with a gap."""
    W, H = (int(v) for v in clip.size)
    plans = []
    for t in tracks:
        markers = [m for m in t.markers if s.first <= m.frame <= s.last and not m.mute]
        if s.mode == "FILL":
            known = sorted(markers, key=lambda m: m.frame)
            frames = [m.frame for m in known]
            if len(known) < 2 or frames[-1] - frames[0] + 1 == len(frames):
                continue  # nothing to fill
        else:
            known = [m for m in markers if m.is_keyed]
            if not known:
                m = t.markers.find_frame(s.current, exact=True)
                if m is None or m.mute or not (s.first <= s.current <= s.last):
                    s.warnings.append(
                        f"{t.name}: no keyframe in frames {s.first}..{s.last} and no marker on the current frame"
                    )
                    continue
                known = [m]
        xy = marker_to_pixel(np.array([m.co[:] for m in known]), width=W, height=H)
        anchors = np.column_stack([np.array([m.frame - 1 for m in known], np.float64), xy])
        keep = frozenset(int(m.frame) for m in known)
        lo, hi = (min(keep), max(keep)) if s.mode == "FILL" else (s.first, s.last)
        plans.append(TrackPlan(t.name, anchors, keep, lo, hi))
    return plans


class TrackingRun:
    """See the module docstring. States: "new" -> "running" -> "done" | "failed" | "cancelled"."""

    def __init__(self, clip, tracks, settings: Settings, collection=None):
        self.clip = clip
        self.collection = collection if collection is not None else clip.tracking.objects.active.tracks
        self.s = settings
        self.state = "new"
        self.message = ""
        self.job = None
        self.progress = 0.0  # 0..1, upload and tracking together
        self.written = 0
        self.quality: list[str] = []  # a line per track the tracker could not verify throughout
        self.lost_tracks = 0
        self.frames = ClipFrames(clip)
        s = settings
        s.first, s.last = max(1, s.first), min(self.frames.count, s.last)
        if s.first > s.last:
            raise RunError(f"the frame range lies outside the clip (clip frames 1..{self.frames.count})")
        self.plans = plan_tracks(clip, tracks, s)
        if not self.plans:
            why = "; ".join(s.warnings[:3]) or (
                "no selected track has a gap between known markers"
                if s.mode == "FILL"
                else "select the tracks to track"
            )
            raise RunError(f"nothing to track: {why}")
        self.shape = self.frames.shape
        self._snap = mw.snapshot([self.collection[p.track_name] for p in self.plans])
        self._store = mw.stored(clip)

    # -- submitting ------------------------------------------------------------------------
    def _frames_via(self) -> str:
        if self.s.frames_via != "AUTO":
            return self.s.frames_via
        return "FILES" if P.is_loopback(self.s.address) else "PIXELS"

    def start(self):
        s = self.s
        if s.mode == "FILL":
            direction = "gaps"
        else:
            direction = {"FORWARD": "forward", "BACKWARD": "backward"}.get(s.direction, "both")
        try:
            source = self.frames.job_source(self._frames_via(), s.first - 1, s.last - 1)
            conn = connection(s.address, s.keys_dir)
            self.job = conn.submit(
                source.pop("frames", None),
                [p.anchors for p in self.plans],
                frame_range=(s.first - 1, s.last - 1),
                direction=direction,
                working_size=s.working_size,
                iters=s.iters,
                partial_interval=s.partial_interval,
                refine=s.refine,
                comotion=s.comotion,
                **source,
            )
        except (ClipSourceError, ValueError, OSError) as e:
            raise RunError(str(e)) from None
        except Exception as e:  # zmq errors (bad address, missing keys): a message, never a crash
            raise RunError(f"cannot reach the pipstrack backend at {s.address}: {e}") from None
        self.state = "running"
        return self

    # -- running ---------------------------------------------------------------------------
    def poll(self) -> str:
        """Handles what arrived (never waits); returns the state."""
        if self.state != "running":
            return self.state
        try:
            events = self.job.poll()
            self._handle(events)
        except Exception as e:  # the client or a marker write failed: never half-written tracks, never a crash
            self._stop_job()
            self._fail("failed", f"pipstrack: {type(e).__name__}: {e}; tracks restored")
        return self.state

    def _handle(self, events) -> None:
        for ev in events:
            t = ev["type"]
            if t == P.PROGRESS:
                up, tr = self.job.uploaded, self.job.progress
                upf = up[0] / up[1] if up[1] else 0.0
                trf = tr[0] / tr[1] if tr[1] else 0.0
                self.progress = 0.3 * upf + 0.7 * trf if self.job.spec.source == "frames" else trf
            elif t == P.PARTIAL:
                self._write(ev, final=False)
            elif t == P.RESULT:
                self._write(ev, final=True)
                self.state, self.progress = "done", 1.0
                self.message = f"pipstrack: tracked {len(self.plans)} track(s), {self.written} markers"
                if self.lost_tracks:
                    self.message += f"; {self.lost_tracks} lost (disabled where never found again)"
            elif t == P.CANCELLED:
                self._fail("cancelled", "pipstrack: tracking cancelled; tracks restored")
            elif t == P.ERROR:
                self._fail("failed", describe_error(ev.get("code"), ev.get("message")) + "; tracks unchanged")

    def cancel(self) -> None:
        """Stops now: the tracks go back as they were, the backend is told to stop the job."""
        if self.state == "running":
            self._stop_job()
            self._fail("cancelled", "pipstrack: tracking cancelled; tracks restored")

    def _stop_job(self) -> None:
        """Tells the backend to stop (a no-op once the job ended) and leaves the shared
        connection: nobody polls the job any more, its last events are dropped."""
        self.job.cancel()
        self.job.conn.pump()
        self.job.conn.jobs.pop(self.job.id, None)

    def run_blocking(self, timeout: float | None = None, on_progress=None) -> str:
        """The synchronous path (scripts, tests, bpy without an event loop)."""
        if self.state == "new":
            self.start()
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() == "running":
            if on_progress is not None:
                on_progress(self.progress)
            if end is not None and time.monotonic() > end:
                self.cancel()
                self.state, self.message = "failed", f"pipstrack: no result within {timeout:g} s; tracks restored"
                break
            self.job.conn.sock.poll(20)
        return self.state

    # -- writing ---------------------------------------------------------------------------
    def _fail(self, state: str, message: str) -> None:
        mw.restore(self.clip, self.collection, self._snap, self._store)
        self.state, self.message = state, message

    def _write(self, ev: dict, final: bool) -> None:
        tracks = self.collection
        frames = np.asarray(ev["frame_indices"]) + 1  # clip frames
        xy, conf = ev["xy"], ev["confidence"]
        verified = ev.get("verified") if final else None  # None from an older backend, or without refinement
        written, seen = 0, {}
        for n, p in enumerate(self.plans):
            track = tracks.get(p.track_name)
            if track is None:  # renamed or deleted while tracking: skip it
                continue
            rows = (frames >= p.lo) & (frames <= p.hi)
            lost = None
            if verified is not None:
                # the backend counts the anchors it was sent (these keyframes) as verified
                lost = self._judge(p.track_name, frames[rows], xy[rows, n], verified[rows, n])
            written += mw.write_track(
                track,
                frames[rows],
                xy[rows, n],
                conf[rows, n],
                self.shape,
                occlusion=self.s.occlusion,
                threshold=self.s.threshold,
                keep_frames=p.keep,
                lost=lost,
            )
            if final:
                ok = rows & ~np.isnan(xy[:, n, 0]) & ~np.isin(frames, list(p.keep))
                gone = mw.outside_frame(xy[:, n], self.shape)  # kept disabled when the occlusion choice changes
                if lost is not None:
                    gone[np.nonzero(rows)[0][lost]] = True
                seen[p.track_name] = (frames[ok], conf[ok, n], gone[ok])
        if final:
            mw.remember(self.clip, seen)
            self.written = written

    def _judge(self, name: str, frames, xy, verified) -> np.ndarray:
        """Which of a track's frames are lost (after the point was last verified, never found
        again: disabled whatever the occlusion choice, never a confident wrong marker), and a
        line for the report about every stretch the tracker could not verify, in scene frames."""
        scene = [cv.clip_to_scene_frame(f, self.clip.frame_start) for f in frames]
        q = formats.track_quality(verified, ~np.isnan(xy[:, 0]), scene)
        line = formats.describe_quality(name, q)
        if line:
            self.quality.append(line)
        lost = np.zeros(len(frames), bool)
        for first, _last, again in q["unverified"]:
            if again is None:
                lost |= np.asarray(scene) >= first
                self.lost_tracks += 1
        return lost
