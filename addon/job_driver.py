"""One tracking run, shared by the modal (UI) and the blocking (scripts, tests) operators.

A run plans what to send from the selected tracks, snapshots them, submits one job over the
add-on's ZeroMQ connection, writes partial trajectories as they stream in, and on success
writes the final ones and remembers per-frame visibility. A failure, a cancel or a vanished
backend puts the tracks back exactly as they were.

Nothing here waits unless :meth:`TrackingRun.run_blocking` is called: the modal operator calls
:meth:`TrackingRun.poll` from a timer, so Blender's UI keeps running while tracking goes on.
"""

from __future__ import annotations

import gc
import os
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

WRITE_BATCH = 32  # markers written between two looks at the clock
JUDGE_BATCH = 16  # tracks of the final result judged (lost or not) between two looks at the clock
UPLOAD_SHARE = 0.3  # of a tick's budget, for reading and sending frames; the rest writes markers
ACTIVE: set = set()  # runs going on now: file load and undo stop them (operators.py handlers)
_froze_collector = False


def _run_started(run) -> None:
    """While any run goes on, Python's cycle collector leaves alone the objects that existed
    before it (``gc.freeze``): a full collection of Blender's Python objects takes 16-50 ms on a
    2-core machine, and landing in a modal tick it would hold the UI past the tick budget. The
    last run to end hands them back (``gc.unfreeze``), so older garbage is collected as before.
    If something else froze objects already, it owns freezing and the add-on leaves it alone."""
    global _froze_collector
    if not ACTIVE and gc.get_freeze_count() == 0:
        gc.freeze()
        _froze_collector = True
    ACTIVE.add(run)


def _run_ended(run) -> None:
    global _froze_collector
    ACTIVE.discard(run)
    if not ACTIVE and _froze_collector:
        gc.unfreeze()
        _froze_collector = False


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


def online_access_refusal(address: str) -> str | None:
    """Why Blender's "Allow Online Access" forbids talking to ``address`` (None: it does not).
    A backend on this machine (loopback) is never online access."""
    import bpy

    if P.is_loopback(address) or bpy.app.online_access:
        return None
    return (
        f"the backend {address} is on another machine and Blender's online access is off: allow it in "
        "Preferences > System > Network, or use a backend on this machine (tcp://127.0.0.1:PORT)"
    )


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
    frames_via: str = "AUTO"  # AUTO / FILES / UPLOAD / PIXELS (clip_source.ClipFrames.job_source)
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
        # what is written and what is to be written (see _aim / _flush)
        self._frames = None
        self._want = None
        self._todo: list = []
        self._judging = None  # (scene frames, verified, tracks left) while the final result is judged
        self._aimed = None
        self._final = None
        self._seen: dict = {}

    # -- submitting ------------------------------------------------------------------------
    def _frames_via(self) -> str:
        """AUTO: a backend here reads the files; a render box gets their bytes. Formats the
        backend cannot decode (Iris, PSD, ...) always go as pixels decoded by Blender."""
        choice, frames = self.s.frames_via, self.frames
        if frames.kind != "MOVIE" and not frames.backend_reads and choice != "PIXELS":
            if choice != "AUTO":
                self.s.warnings.append(
                    f"the backend cannot decode {os.path.splitext(frames.path)[1]} files: Blender decodes "
                    "the frames and sends pixels (slower; one frame per update)"
                )
            return "PIXELS"
        if choice != "AUTO":
            return choice
        if P.is_loopback(self.s.address):
            return "FILES"
        return "PIXELS" if frames.kind == "MOVIE" else "UPLOAD"

    def start(self):
        s = self.s
        if s.mode == "FILL":
            direction = "gaps"
        else:
            direction = {"FORWARD": "forward", "BACKWARD": "backward"}.get(s.direction, "both")
        refusal = online_access_refusal(s.address)
        if refusal:
            raise RunError(refusal)
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
        _run_started(self)
        return self

    # -- running ---------------------------------------------------------------------------
    def poll(self, budget_s: float | None = None) -> str:
        """Handles what arrived and writes markers for about ``budget_s`` seconds (None: all of
        them), never waiting; returns the state. The modal operator calls it every timer tick
        with a budget, so a 16x16 grid over 500 frames is written over several ticks: a run
        stays "running" until the final trajectories are all written."""
        if self.state != "running":
            return self.state
        deadline = None if budget_s is None else time.monotonic() + budget_s
        try:
            if self._final is None:
                self._handle(self.job.poll(budget_s=UPLOAD_SHARE * budget_s if budget_s else 0.02))
            if self.state == "running":
                self._flush(deadline)
        except Exception as e:  # the client or a marker write failed: never half-written tracks, never a crash
            self._stop_job()
            self._fail("failed", f"pipstrack: {type(e).__name__}: {e}; tracks restored")
        return self.state

    def _handle(self, events) -> None:
        for i, ev in enumerate(events):
            t = ev["type"]
            if t == P.PROGRESS:
                up, tr = self.job.uploaded, self.job.progress
                upf = up[0] / up[1] if up[1] else 0.0
                trf = tr[0] / tr[1] if tr[1] else 0.0
                self.progress = 0.3 * upf + 0.7 * trf if self.job.spec.source in ("frames", "encoded") else trf
            elif t == P.PARTIAL:
                if not any(e["type"] in (P.PARTIAL, P.RESULT) for e in events[i + 1 :]):
                    self._aim(ev, final=False)  # only the newest of the partials that came at once
            elif t == P.RESULT:
                self._aim(ev, final=True)
                self._final = ev
            elif t == P.CANCELLED:
                self._fail("cancelled", "pipstrack: tracking cancelled; tracks restored")
            elif t == P.ERROR:
                self._fail("failed", describe_error(ev.get("code"), ev.get("message")) + "; tracks unchanged")
            if self.state != "running" or self._final is not None:
                return

    def cancel(self, why: str = "") -> None:
        """Stops now: the tracks go back as they were, the backend is told to stop the job."""
        if self.state == "running":
            self._stop_job()
            self._fail("cancelled", f"pipstrack: tracking cancelled{why}; tracks restored")

    def abandon(self, why: str) -> None:
        """Stops without touching Blender data (a file is being loaded over it): the backend is
        told to stop the job, the run ends "cancelled"."""
        if self.state == "running":
            self._stop_job()
            self.state, self.message = "cancelled", f"pipstrack: tracking cancelled{why}"
            _run_ended(self)

    def _stop_job(self) -> None:
        """Tells the backend to stop (a no-op once the job ended) and leaves the shared
        connection: nobody polls the job any more, its last events are dropped."""
        self.job.cancel()
        self.job.conn.pump()
        self.job.forget()

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
        _run_ended(self)

    def _aim(self, ev: dict, final: bool) -> None:
        """New trajectories to show: which markers differ from what is written (all tracks at
        once, in numpy) go on the write queue; partials replace each other's queue. The final
        result's tracks are judged first (lost or not), a few per tick in :meth:`_flush`: for a
        16x16 grid that alone would hold the UI past a tick's budget."""
        frames = np.asarray(ev["frame_indices"]) + 1  # clip frames
        xy = np.asarray(ev["xy"], np.float64)
        conf = np.asarray(ev["confidence"], np.float64)
        T, N = xy.shape[:2]
        if self._frames is None or len(self._frames) != T or not np.array_equal(self._frames, frames):
            self._frames = frames
            # frames each track may be written on (its lo..hi), its keyframes excluded: all at once
            lo, hi = (np.array([getattr(p, k) for p in self.plans]) for k in ("lo", "hi"))
            self._rows = (frames[:, None] >= lo) & (frames[:, None] <= hi)
            keep = np.array([f for p in self.plans for f in p.keep], dtype=frames.dtype)
            owner = np.array([n for n, p in enumerate(self.plans) for _ in p.keep], dtype=np.int64)
            at = np.minimum(np.searchsorted(frames, keep), T - 1)  # frames are sorted
            hit = frames[at] == keep
            self._rows[at[hit], owner[hit]] = False
            self._have_xy = np.full((T, N, 2), np.nan)
            self._have_mute = np.zeros((T, N), bool)
        self._aimed = (frames, xy, conf, np.zeros((T, N), bool), final)
        verified = ev.get("verified") if final else None  # None from an older backend, or without refinement
        if verified is None:
            self._judging = None
            self._queue_changes()
            return
        # the backend counts the anchors it was sent (these keyframes) as verified
        scene = np.array([cv.clip_to_scene_frame(f, self.clip.frame_start) for f in frames])
        self._judging = (scene, verified, list(range(N)))
        self._todo = []  # the final result replaces what a partial had left to write

    def _judge_some(self, count: int) -> None:
        """Judges the next ``count`` tracks of the final result; after the last one, queues its writes."""
        scene, verified, left = self._judging
        frames, xy, _conf, lost, _final = self._aimed
        for n in left[:count]:
            p = self.plans[n]
            rows = (frames >= p.lo) & (frames <= p.hi)
            lost[rows, n] = self._judge(p.track_name, scene[rows], xy[rows, n], verified[rows, n])
        del left[:count]
        if not left:
            self._judging = None
            self._queue_changes()

    def _queue_changes(self) -> None:
        """The write queue for the aimed-at trajectories: the markers that differ from what is
        written, by track; for the final result, then each track's visibility store."""
        frames, xy, conf, lost, final = self._aimed
        gone = mw.outside_frame(xy, self.shape) | lost  # disabled whatever the occlusion choice
        mute = gone.copy()
        if self.s.occlusion == "DISABLE":
            mute |= conf < self.s.threshold
        known = ~np.isnan(xy[..., 0])
        self._want = (xy, conf, lost, mute)
        changed = self._rows & known & ((np.abs(xy - self._have_xy) > 1e-6).any(-1) | np.isnan(self._have_xy[..., 0]))
        changed |= self._rows & known & (mute != self._have_mute)
        cols, rows = np.nonzero(changed.T)  # by track, then frame
        cuts = np.flatnonzero(np.diff(cols)) + 1
        self._todo = [(int(c[0]), r) for c, r in zip(np.split(cols, cuts), np.split(rows, cuts)) if len(c)]
        if final:
            self.written = int((self._rows & known).sum())
            self._seen = {}
            for n, p in enumerate(self.plans):
                ok = self._rows[:, n] & known[:, n]
                self._seen[p.track_name] = (frames[ok], conf[ok, n], gone[ok, n])
            self._todo += [("remember", name) for name in self._seen]

    def _flush(self, deadline: float | None) -> None:
        """Writes queued markers until ``deadline`` (a batch at a time); at the end of the final
        queue, stores visibility and ends the run "done"."""
        while self._judging is not None:
            if deadline is not None and time.monotonic() > deadline:
                return
            self._judge_some(JUDGE_BATCH)
        tracks = self.collection
        xy, conf, lost, mute = self._want if self._want is not None else (None,) * 4
        while self._todo:
            if deadline is not None and time.monotonic() > deadline:
                return
            n, rows = self._todo[0]
            if n == "remember":  # after every marker: the visibility store, a track at a time
                self._todo.pop(0)
                mw.remember_track(self.clip, rows, *self._seen[rows])
                continue
            batch, rest = rows[:WRITE_BATCH], rows[WRITE_BATCH:]
            if len(rest):
                self._todo[0] = (n, rest)
            else:
                self._todo.pop(0)
            track = tracks.get(self.plans[n].track_name)
            if track is None:  # renamed or deleted while tracking: skip it
                continue
            mw.write_track(
                track,
                self._frames[batch],
                xy[batch, n],
                conf[batch, n],
                self.shape,
                occlusion=self.s.occlusion,
                threshold=self.s.threshold,
                lost=lost[batch, n],
            )
            self._have_xy[batch, n] = xy[batch, n]
            self._have_mute[batch, n] = mute[batch, n]
        if self._final is not None and not self._todo and self._judging is None:
            self.state, self.progress = "done", 1.0
            self.message = f"pipstrack: tracked {len(self.plans)} track(s), {self.written} markers"
            if self.lost_tracks:
                self.message += f"; {self.lost_tracks} lost (disabled where never found again)"
            _run_ended(self)

    def _judge(self, name: str, scene, xy, verified) -> np.ndarray:
        """Which of a track's frames (``scene``: their scene frame numbers) are lost (after the
        point was last verified, never found again: disabled whatever the occlusion choice, never
        a confident wrong marker), and a line for the report about every stretch the tracker
        could not verify, in scene frames."""
        q = formats.track_quality(verified, ~np.isnan(xy[:, 0]), scene)
        line = formats.describe_quality(name, q)
        if line:
            self.quality.append(line)
        lost = np.zeros(len(scene), bool)
        for first, _last, again in q["unverified"]:
            if again is None:
                lost |= scene >= first
                self.lost_tracks += 1
        return lost
