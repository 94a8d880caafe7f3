"""Long-clip tracking: PIPs windows chained over any number of frames, all points at once.

One object, one call::

    tracker = Tracker(load_model(), device="auto")
    result = tracker.track(frames, queries)     # frames: (T,H,W,3) uint8 or a FrameSource
    result.xy, result.visible, result.confidence

Pixel convention (input and output): pixel centres at integer coordinates, origin at the
top-left, x right, y down, in full-resolution pixels of the source.

Why it is fast: the authors chain 8-frame windows one point at a time and re-encode every
window's frames. Here every frame is encoded once (feature maps are cached), and all
points whose next window is the same frames run through the network together. The
decisions (window positions, carried target features) are those of the per-point
procedure in :mod:`pipstrack.engine.chaining`, so the trajectories are the same.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..conventions import DIRECTIONS, resize_to_working, to_source, to_working, working_size
from .chaining import next_window_offset, window_frames

REFINE_SHARE = 0.05  # refinement's part of a job's time (2-10 % measured, docs/performance.md)
ANCHORED_POLISH = True  # match verified frames to the nearest keyframe at source resolution (engine/anchored.py)


class TrackingCancelled(RuntimeError):
    """Raised from :meth:`Tracker.track` when its cancel signal is set; nothing is returned."""


@dataclass
class TrackResult:
    """Trajectories for N points over the frames ``frame_indices`` of the source.

    Frames a point was not tracked on (outside its direction) hold NaN positions,
    ``visible`` False and ``confidence`` 0.
    """

    xy: np.ndarray  # (T,N,2) float32, full-resolution pixels
    visible: np.ndarray  # (T,N) bool
    confidence: np.ndarray  # (T,N) float32: the network's visibility probability, raised by refinement
    frame_indices: np.ndarray  # (T,) 0-based indices into the source
    size: tuple[int, int]  # (height, width) of the source
    working_size: tuple[int, int]  # (height, width) the network saw
    stats: dict = field(default_factory=dict)
    # (T,N) bool: frames where refinement verified the point (found its own patch there), and its
    # keyframes; None without refinement. Elsewhere a position is an estimate.
    verified: np.ndarray | None = None

    @property
    def tracked(self) -> np.ndarray:
        return ~np.isnan(self.xy[..., 0])


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto``: an NVIDIA GPU (CUDA), else Apple Silicon's GPU (MPS), else the CPU."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device '{device}' requested but this torch has no usable CUDA GPU ({torch_build()}); "
                "use --device cpu or auto"
            )
        return torch.device(name)
    if name == "mps":
        if not _mps_available():
            raise ValueError(f"device 'mps' requested but this torch has no Apple GPU (MPS) ({torch_build()})")
        return torch.device("mps")
    raise ValueError(f"unknown device '{device}': use auto, cpu, cuda, cuda:N or mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def torch_build() -> str:
    """Which torch this is, for ``ping``/``weights``: e.g. "torch 2.13.0+cpu, CPU only" or
    "torch 2.13.0, CUDA 12.8, 1 GPU"."""
    parts = [f"torch {torch.__version__}"]
    if torch.version.cuda:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        parts.append(f"CUDA {torch.version.cuda}, {n} GPU{'s' if n != 1 else ''} usable")
    elif _mps_available():
        parts.append("Apple GPU (MPS)")
    else:
        parts.append("CPU only")
    return ", ".join(parts)


PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX): only there does the
    encoder in bfloat16 pay (1.6-1.8x faster measured, docs/performance.md)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def quantized_copy(model):
    """A copy of ``model`` whose mixer's linear layers compute in int8 (dynamic quantisation:
    weights int8, activations quantised per call), for the CPU; the encoder and the small heads
    stay as they are."""
    import copy
    import warnings

    q = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():  # torch marks its eager quantisation API deprecated; it still works
        warnings.simplefilter("ignore")
        q.delta_block = torch.ao.quantization.quantize_dynamic(q.delta_block, {torch.nn.Linear}, dtype=torch.qint8)
    return q


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the network's encoder (the convolutions, most of its work on many
    frames), or None for float32. The iterative updates stay float32: they carry pixel
    coordinates, and bfloat16 there moved the network's positions by a median 1.2 px (90 % within
    5.1 px) against 0.13 px (0.62 px) for the encoder alone (tests/test_tracker.py, on the CPU).
    ``auto``: bfloat16 on a CUDA GPU that has it (float16 on older ones) and on a CPU that
    computes it natively (:func:`cpu_has_bf16`: the encoder 1.7-1.9x faster, the refined tracks
    as good, judged per track in docs/performance.md), float32 elsewhere (Apple's GPU, older
    CPUs). ``fp32`` keeps the network exact everywhere (the equivalence tests with the authors'
    procedure use it). ``int8`` (the CPU only): the encoder in bfloat16 where the CPU has it, and
    the mixer quantised to int8 by the tracker."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "int8":
        if device.type != "cpu":
            raise ValueError("precision int8 is for the CPU; on a GPU use auto (bfloat16)")
        return torch.bfloat16 if cpu_has_bf16() else None
    if precision == "auto" and device.type == "cpu":
        return torch.bfloat16 if cpu_has_bf16() else None
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def describe_precision(precision: str, device: torch.device) -> str:
    """What ``precision`` means on ``device``, in words (``pipstrack weights`` prints it)."""
    dtype = resolve_precision(precision, device)
    encoder = {None: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    mixer = "int8" if precision == "int8" else "float32"
    return f"encoder {encoder}, updates {mixer}"


@dataclass
class _Segment:
    """One chaining run: a point tracked from ``start`` to ``end`` (inclusive) in one direction."""

    point: int
    start: int  # absolute frame index of the anchor
    end: int  # absolute frame index where it stops (end < start for backward)
    xy: np.ndarray  # (2,) working-resolution anchor position
    kind: str  # "open" (to a range end) or "between" (to the next anchor)
    cur: int = 0  # local frame of the current window start
    pos: np.ndarray | None = None
    feat: torch.Tensor | None = None
    out_xy: np.ndarray | None = None
    out_vis: np.ndarray | None = None
    filled: int = 1  # local frames with a result so far (the anchor counts)

    @property
    def step(self) -> int:
        return 1 if self.end >= self.start else -1

    @property
    def length(self) -> int:
        return abs(self.end - self.start) + 1

    def absolute(self, local: int) -> int:
        return self.start + self.step * local

    def window(self, S: int) -> tuple[int, ...]:
        return tuple(self.absolute(k) for k in window_frames(self.cur, self.length, S))


class _FeatureCache:
    """Encoded frames by frame index, kept within a byte budget. Beyond it, frames no unfinished
    run will reach again go first (a shot tracked forward never needs a frame once its windows
    have passed it), then the least recently used. Each frame is kept as its correlation pyramid
    (``Pips.pyramid``: the map, then its pooled levels): a frame is seen by several windows, and
    pooling it once per window was a fifth of the updates' time."""

    def __init__(self, budget_bytes: int, keep_images: bool = False):
        self.budget = budget_bytes
        self.images: dict[int, np.ndarray] | None = {} if keep_images else None  # working-size RGB frames, for refine
        self.maps: OrderedDict[int, list[torch.Tensor]] = OrderedDict()  # frame -> pyramid levels
        self.bytes = 0
        self.encoded = 0
        self.read_s = 0.0  # time spent reading and resizing frames, and encoding them (profile)
        self.encode_s = 0.0
        self.segments: list = []  # the runs still to finish (set by the tracker): what may be needed again

    def get(self, frame: int):
        fmap = self.maps.get(frame)
        if fmap is not None:
            self.maps.move_to_end(frame)
        return fmap

    @staticmethod
    def _size(levels) -> int:
        return sum(t.numel() * t.element_size() for t in levels)

    def put(self, frame: int, levels: list[torch.Tensor], keep: set[int]):
        self.maps[frame] = levels
        self.bytes += self._size(levels)
        self.encoded += 1
        if self.bytes <= self.budget:
            return
        ahead = self._ahead()
        while self.bytes > self.budget and len(self.maps) > 1:
            victim = next((f for f in self.maps if f not in keep and not ahead(f)), None)
            if victim is None:
                victim = next((f for f in self.maps if f not in keep), None)
            if victim is None:
                break
            self.bytes -= self._size(self.maps.pop(victim))

    def _ahead(self):
        """Whether a frame lies on the way of an unfinished run (from its current window on)."""
        spans = [tuple(sorted((s.absolute(s.cur), s.end))) for s in self.segments if s.cur < s.length]
        return lambda f: any(lo <= f <= hi for lo, hi in spans)


def _as_source(frames):
    if isinstance(frames, np.ndarray):
        from ..io.frames import ArrayFrames

        return ArrayFrames(frames)
    for attr in ("read", "size", "__len__"):
        if not hasattr(frames, attr):
            raise TypeError("frames must be a (T,H,W,3) uint8 array or a FrameSource")
    return frames


def _normalise_queries(queries) -> list[np.ndarray]:
    """(N,3) rows [frame, x, y], or a list of (K,3) arrays (several anchors of one point)."""
    if isinstance(queries, np.ndarray) or (isinstance(queries, Sequence) and queries and np.isscalar(queries[0])):
        arr = np.asarray(queries, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise ValueError(f"queries must have shape (N,3) rows [frame, x, y]; got {arr.shape}")
        points = [row.reshape(1, 3) for row in arr]
    else:
        points = [np.asarray(q, dtype=np.float64).reshape(-1, 3) for q in queries]
    for i, p in enumerate(points):
        if len(p) == 0:
            raise ValueError(f"point {i} has no anchor")
        if not np.all(np.isfinite(p)):
            raise ValueError(f"point {i} has a NaN or infinite coordinate")
        if np.any(p[:, 0] != np.round(p[:, 0])):
            raise ValueError(f"point {i}: anchor frames must be whole numbers")
        frames = p[:, 0].astype(int)
        if len(set(frames.tolist())) != len(frames):
            raise ValueError(f"point {i} has two anchors on the same frame")
    return [p[np.argsort(p[:, 0], kind="stable")] for p in points]


class Tracker:
    """PIPs long-clip tracker. See the module docstring."""

    def __init__(
        self,
        model,
        device: str | torch.device = "auto",
        iters: int = 6,
        working_long_side: int | None = 512,
        max_points_per_call: int = 256,
        cache_mb: int = 1024,
        refine: bool = True,
        comotion: bool = True,
        threads: int | str | None = None,
        anchored_at: str = "source",
        precision: str = "auto",
        min_advance: int = 1,
        lead: bool = True,
        company_lead: bool = True,
    ):
        """``refine``: polish visible frames with sub-pixel Lucas-Kanade steps seeded by PIPs
        (:mod:`pipstrack.engine.refine`); False gives the network's own trajectories. ``comotion``
        (with ``refine``): carry a point through frames refinement could not polish with the
        points of the same call that moved with it (:mod:`pipstrack.engine.comotion`).
        ``threads``: None leaves torch's thread count as the caller set it; a number fixes it;
        "auto" follows the cores other processes leave free (:mod:`pipstrack.engine.threads`).
        ``anchored_at`` (with ``refine``): where the last polish matches each verified frame to its
        keyframe's pattern (:mod:`pipstrack.engine.anchored`): "source" (the frames as read, a larger
        source read again), "working" (the working-size frames, as a service that keeps only those
        does), or "off". ``precision``: the network's arithmetic (:func:`resolve_precision`; by
        default the encoder in bfloat16 on a GPU and on a CPU that has it natively, else float32).
        ``min_advance``: the fewest frames a window moves on (1, the written procedure, or 2, the
        authors' code: fewer windows where visibility is low; docs/performance.md measures both).
        ``lead`` (with ``refine``): strict KLT steps follow each point first and the network runs
        only from the last frame they verified (:mod:`pipstrack.engine.lead`); False runs the
        network over every frame of every point. ``company_lead`` (with ``lead`` and ``comotion``):
        a point the steps lose is carried by the points they keep that moved with it, and found
        again by a strict step where it comes back; the network runs only where they cannot carry
        it (:func:`pipstrack.engine.lead.lead`)."""
        if int(min_advance) not in (1, 2):
            raise ValueError(f"min_advance must be 1 or 2, not {min_advance!r}")
        self.min_advance = int(min_advance)
        if anchored_at not in ("source", "working", "off"):
            raise ValueError(f"anchored_at must be 'source', 'working' or 'off', not {anchored_at!r}")
        self.anchored_at = anchored_at
        self.device = resolve_device(device)
        self.autocast = resolve_precision(precision, self.device)
        self.model = quantized_copy(model) if precision == "int8" else model.to(self.device).eval()
        self.iters = int(iters)
        self.working_long_side = working_long_side
        self.max_points_per_call = int(max_points_per_call)
        self.stage = "idle"  # what track() is doing now (a service shows it and its watchdog names it)
        self.cache_bytes = int(cache_mb) * 2**20
        self.refine = bool(refine)
        self.comotion = bool(comotion)
        self.lead = bool(lead) and self.refine
        self.company_lead = bool(company_lead)
        self.threads = None
        if threads is not None:
            from .threads import ThreadBudget

            self.threads = ThreadBudget(None if threads == "auto" else int(threads))
        self.S = model.S
        self.dtype = next(self.model.parameters()).dtype

    # -- public -----------------------------------------------------------------------
    def track(
        self,
        frames,
        queries,
        *,
        frame_range: tuple[int, int] | None = None,
        direction: str = "both",
        progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | Callable[[], bool] | None = None,
        partial: Callable[[TrackResult], None] | None = None,
        partial_interval: float = 1.0,
    ) -> TrackResult:
        """Track every query point over ``frame_range`` (inclusive 0-based indices; default all).

        ``queries``: (N,3) rows ``[frame, x, y]``; or a list of (K,3) arrays, one per
        point, whose K rows are known positions (keyframes) the trajectory must pass
        through. ``direction`` "forward"/"backward" tracks only after the last / before
        the first anchor, "gaps" only between anchors (frames between anchors are always
        filled from both sides).

        ``partial`` is called with the trajectories so far (NaN where not tracked yet) at most
        every ``partial_interval`` seconds while windows complete, so a UI can draw markers
        as they arrive; between two anchors it shows whichever side is done, the final
        result cross-fades them.
        """
        source = _as_source(frames)
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
        T = len(source)
        if T == 0:
            raise ValueError("the clip has no frames")
        first, last = (0, T - 1) if frame_range is None else (int(frame_range[0]), int(frame_range[1]))
        if not (0 <= first <= last < T):
            raise ValueError(f"frame range {first}..{last} is outside the clip's frames 0..{T - 1}")
        points = _normalise_queries(queries)
        H, W = source.size
        work = working_size(H, W, self.working_long_side)
        for i, p in enumerate(points):
            for f, x, y in p:
                if not (first <= f <= last):
                    raise ValueError(f"point {i}: frame {int(f)} is outside the tracked frames {first}..{last}")
                if not (-0.5 <= x <= W - 0.5 and -0.5 <= y <= H - 0.5):
                    raise ValueError(f"point {i}: ({x:g}, {y:g}) on frame {int(f)} is outside the {W}x{H} image")

        segments = self._plan(points, first, last, direction, (H, W), work)
        snapshot = None
        if partial is not None:
            clock = {"last": time.monotonic()}

            def snapshot(stats):
                now = time.monotonic()
                if now - clock["last"] >= partial_interval:
                    clock["last"] = now
                    partial(self._assemble(points, segments, first, last, (H, W), work, dict(stats), final=False))

        cache = _FeatureCache(self.cache_bytes, keep_images=self.refine)
        self.stage = "network"
        network = sum(s.length for s in segments)
        # Refinement gets its share of the progress bar by its measured cost (docs/performance.md).
        refining = int(np.ceil(REFINE_SHARE * network)) if self.refine else 0
        t0 = time.perf_counter()
        led = {}
        if self.lead:
            from .lead import lead

            self.stage = "classical lead"

            def check():  # a cancel is seen, and a service hears from the job, between frames
                self._check_cancel(cancel)
                self._follow_load()
                if progress is not None:
                    progress(0, network + refining)

            company = self.comotion and self.company_lead
            led = lead(lambda i: self._working_image(source, cache, i, work), segments, check, company=company)
            led["seconds"] = time.perf_counter() - t0
            self.stage = "network"
        t1 = time.perf_counter()
        stats = self._run(source, segments, work, progress, cancel, snapshot, cache, extra=refining)
        seconds = stats["seconds"]
        seconds["updates"] = time.perf_counter() - t1 - seconds["read"] - seconds["encode"]
        if led:
            seconds["classical lead"] = led.pop("seconds")
            stats.update(led)
        result = self._assemble(points, segments, first, last, (H, W), work, stats)
        verified = None
        if self.lead:  # what the classical lead verified on the open runs (between two keyframes
            # the runs from both sides are cross-faded: the refinement steps there as before)
            verified = np.full(result.visible.shape, np.nan)
            for s in segments:
                if s.kind == "open" and s.led:
                    rows = np.array([s.absolute(k) for k in range(1, s.led + 1)]) - first
                    verified[rows, s.point] = s.led_ncc[1 : s.led + 1]
        if self.refine:

            def tick(fraction, stage="refinement"):
                self.stage = stage
                self._check_cancel(cancel)
                self._follow_load()
                if progress is not None:
                    progress(network + int(fraction * refining), network + refining)

            def image(i):  # every frame the network or the lead saw is kept; any other is read now
                return self._working_image(source, cache, i, work)

            self._refine(source, result, points, (H, W), work, image, tick, verified)
            if progress is not None:
                progress(network + refining, network + refining)
        self.stage = "done"
        return result

    def _refine(self, source, result: TrackResult, points, size, work, image, tick=None, verified=None) -> None:
        """Sub-pixel Lucas-Kanade polish at the working resolution, on the frames the network
        saw (so a service that keeps only working-size frames refines identically, and no frame
        is read twice): ``image(i)`` gives source frame ``i`` at the working size."""
        from .refine import refine_trajectories

        xyw = to_working(result.xy.astype(np.float64), size, work)

        refined, found, similarity, stats = refine_trajectories(
            image,
            result.frame_indices,
            xyw,
            result.visible,
            [p[:, 0] for p in points],
            comotion=self.comotion,
            tick=tick,
            verified=verified,
        )
        # A frame where a step found the point's own patch again is seen, whatever the network
        # thought: its confidence is raised to that patch similarity (at least 0.7). Elsewhere the
        # position is an estimate (never reported as seen: a confident wrong marker is the failure
        # an artist cannot see): half of the lower of the network's visibility and the similarity
        # of the patch there to the point's, so confidence > 0.5 means verified and a lower
        # threshold (the add-on's) admits the estimates the network and the patch believe most.
        conf = result.confidence.astype(np.float64)
        estimate = 0.5 * np.where(np.isfinite(similarity), np.minimum(conf, np.maximum(similarity, 0.0)), conf)
        conf = np.where(found, np.maximum(conf, similarity), estimate)
        result.confidence = np.clip(conf, 0.0, 1.0).astype(np.float32)
        result.verified = np.asarray(found, bool)
        result.visible = result.confidence > 0.5
        out = to_source(refined.astype(np.float64), size, work)
        if ANCHORED_POLISH and self.anchored_at != "off":
            from .anchored import anchored_polish

            # At the working size the frames the network saw are at hand; a larger source is read
            # again, a few frames at a time (a 4K plate never sits in memory whole).
            at_source = self.anchored_at == "source" and tuple(work) != tuple(size)
            read = source.read if at_source else image
            check = None if tick is None else (lambda _fraction: tick(1.0, "anchored polish"))  # progress stays full
            t0 = time.perf_counter()
            out, matched = anchored_polish(read, size, result.frame_indices, out, found, points, tick=check)
            stats["anchored"] = int(matched.sum())
            stats["seconds"]["anchored polish"] = time.perf_counter() - t0
        for i, p in enumerate(points):  # anchors stay exact
            rows = p[:, 0].astype(int) - int(result.frame_indices[0])
            out[rows, i] = p[:, 1:]
        result.xy = out.astype(np.float32)
        seconds = {**result.stats.get("seconds", {}), **stats.pop("seconds", {})}
        result.stats.update(stats, seconds=seconds)

    # -- planning -----------------------------------------------------------------------
    def _plan(self, points, first, last, direction, size, work) -> list[_Segment]:
        segs = []
        for i, p in enumerate(points):
            frames = p[:, 0].astype(int)
            xy = to_working(p[:, 1:], size, work)
            if direction in ("both", "backward") and frames[0] > first:
                segs.append(_Segment(i, frames[0], first, xy[0], "open"))
            if direction in ("both", "forward") and frames[-1] < last:
                segs.append(_Segment(i, frames[-1], last, xy[-1], "open"))
            for k in range(len(frames) - 1):
                if frames[k + 1] - frames[k] > 1:
                    segs.append(_Segment(i, frames[k], frames[k + 1], xy[k], "between"))
                    segs.append(_Segment(i, frames[k + 1], frames[k], xy[k + 1], "between"))
        for s in segs:
            s.pos = s.xy.copy()
            s.out_xy = np.zeros((s.length, 2), np.float64)
            s.out_vis = np.zeros((s.length,), np.float64)
            s.out_xy[0] = s.pos
        return segs

    # -- running ------------------------------------------------------------------------
    def _run(self, source, segments, work, progress, cancel, snapshot, cache: _FeatureCache, extra: int = 0) -> dict:
        """Runs every window; progress counts segment-frames out of theirs plus ``extra`` units
        of work that follows (refinement)."""
        stats = {"windows": 0, "model_calls": 0}
        total = sum(s.length for s in segments)
        # Forward runs first, in time order, then backward runs, in reverse time order:
        # the cache then holds what the next windows need.
        cache.segments = segments
        for step in (1, -1):
            active = [s for s in segments if s.step == step and s.cur < s.length]
            while active:
                self._check_cancel(cancel)
                self._follow_load()
                lead = min(active, key=lambda s: step * s.absolute(s.cur))
                key = lead.window(self.S)
                group = [s for s in active if s.window(self.S) == key]
                stats["model_calls"] += self._run_window(source, cache, key, group, work, cancel)
                stats["windows"] += 1
                active = [s for s in active if s.cur < s.length]
                if progress is not None:
                    done = sum(min(s.cur, s.length) for s in segments)
                    progress(done, total + extra)
                if snapshot is not None:
                    snapshot(stats)
        stats["frames_encoded"] = cache.encoded
        # Where the time went (docs/performance.md's profile): reading and resizing frames,
        # encoding them, and the iterative updates of the windows (the rest of this stage).
        stats["seconds"] = {"read": cache.read_s, "encode": cache.encode_s}
        if progress is not None:
            progress(total, total + extra)
        return stats

    def _follow_load(self):
        """Re-checks the free cores (at most every threads.CHECK_EVERY_S) where threads
        follow the load: between network windows, the lead's frames and the refinement's steps."""
        if self.threads is not None:
            self.threads.adjust()

    @staticmethod
    def _check_cancel(cancel):
        if cancel is None:
            return
        is_set = cancel.is_set() if hasattr(cancel, "is_set") else cancel()
        if is_set:
            raise TrackingCancelled("tracking cancelled")

    @staticmethod
    def _read_work(source, index: int, work) -> np.ndarray:
        """Frame ``index`` at the working size."""
        return resize_to_working(source.read(index), work)

    def _working_image(self, source, cache, index: int, work) -> np.ndarray:
        """Frame ``index`` at the working size, read once: kept for the refinement (and the encoder)."""
        if cache.images is not None and index in cache.images:
            return cache.images[index]
        t0 = time.perf_counter()
        img = np.ascontiguousarray(self._read_work(source, index, work))
        cache.read_s += time.perf_counter() - t0
        if cache.images is not None:
            cache.images[index] = img
        return img

    def _mixed(self):
        """Autocast for the encoder where ``precision`` asks for it, else nothing."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    def _encode(self, source, cache, frames: tuple[int, ...], work):
        needed = [f for f in dict.fromkeys(frames) if cache.get(f) is None]
        if needed:
            imgs = [self._working_image(source, cache, f, work) for f in needed]
            t1 = time.perf_counter()
            keep = set(frames)
            with torch.no_grad(), self._mixed():
                for f, img in zip(needed, imgs):
                    # One frame per call: the maps then do not depend on which frames
                    # happened to be encoded together (batched convolutions differ in
                    # the last bits), so results are reproducible run to run.
                    batch = torch.from_numpy(img).to(self.device, self.dtype).permute(2, 0, 1).unsqueeze(0)
                    fmap = self.model.encode(batch).to(self.dtype)
                    cache.put(f, [level[0] for level in self.model.pyramid(fmap)], keep)
            cache.encode_s += time.perf_counter() - t1
        per_frame = [cache.get(f) for f in frames]
        return [torch.stack(level) for level in zip(*per_frame)]  # each level (S,C,h_i,w_i)

    @torch.no_grad()
    def _run_window(self, source, cache, key, group, work, cancel=None) -> int:
        """Runs one window for every segment in ``group`` and moves each to its next window."""
        pyramid = self._encode(source, cache, key, work)
        fmaps = pyramid[0].unsqueeze(0)  # 1,S,C,h,w
        S, calls = self.S, 0
        for lo in range(0, len(group), self.max_points_per_call):
            if lo:  # a window of many points is many network calls: cancel between them
                self._check_cancel(cancel)
            chunk = group[lo : lo + self.max_points_per_call]
            xys = torch.from_numpy(np.stack([s.pos for s in chunk])).to(self.device, self.dtype).unsqueeze(0)
            fresh = [i for i, s in enumerate(chunk) if s.feat is None]
            if fresh:
                sampled = self.model.initial_features(fmaps[:, 0], xys[:, fresh])[0]
                for j, i in enumerate(fresh):
                    chunk[i].feat = sampled[j]
            feat = torch.stack([s.feat for s in chunk]).unsqueeze(0)
            preds, vis_logits, _ = self.model.refine(fmaps, xys, self.iters, feat_init=feat, pyramid=pyramid)
            calls += 1
            xy = preds[-1][0].to(self.dtype).cpu().numpy()  # S,n,2 (autocast gives half precision)
            vis = torch.sigmoid(vis_logits[0].to(self.dtype)).cpu().numpy()  # S,n
            for j, s in enumerate(chunk):
                n = min(S, s.length - s.cur)
                s.out_xy[s.cur : s.cur + n] = xy[:n, j]
                s.out_vis[s.cur : s.cur + n] = vis[:n, j]
                s.filled = max(s.filled, s.cur + n)
                s.cur += next_window_offset(vis[:, j], self.min_advance)
                if s.cur < s.length:
                    s.pos = s.out_xy[s.cur].copy()
        return calls

    # -- assembling -----------------------------------------------------------------------
    def _assemble(self, points, segments, first, last, size, work, stats, final: bool = True) -> TrackResult:
        T, N = last - first + 1, len(points)
        xy = np.full((T, N, 2), np.nan, np.float64)
        conf = np.zeros((T, N), np.float64)
        between: dict[tuple[int, int], list[_Segment]] = {}
        for s in segments:
            frames = np.array([s.absolute(k) for k in range(s.length)]) - first
            if s.kind == "open" or not final:
                n = s.length if final else s.filled
                xy[frames[:n], s.point] = s.out_xy[:n]
                conf[frames[:n], s.point] = s.out_vis[:n]
            else:
                between.setdefault((s.point, min(s.start, s.end)), []).append(s)
        for (point, lo), (a, b) in between.items():
            fwd, bwd = (a, b) if a.step == 1 else (b, a)
            n = fwd.length
            w = (np.arange(n, dtype=np.float64) / (n - 1))[:, None]  # 0 at the earlier anchor
            bxy, bvis = bwd.out_xy[::-1], bwd.out_vis[::-1]
            rows = np.arange(lo, lo + n) - first
            xy[rows, point] = (1 - w) * fwd.out_xy + w * bxy
            conf[rows, point] = (1 - w[:, 0]) * fwd.out_vis + w[:, 0] * bvis
        out = to_source(xy, size, work)
        for i, p in enumerate(points):  # anchors are exact, whatever the resampling did
            rows = p[:, 0].astype(int) - first
            out[rows, i] = p[:, 1:]
            conf[rows, i] = 1.0
        return TrackResult(
            xy=out.astype(np.float32),
            visible=conf > 0.5,
            confidence=conf.astype(np.float32),
            frame_indices=np.arange(first, last + 1),
            size=size,
            working_size=work,
            stats=stats,
        )
