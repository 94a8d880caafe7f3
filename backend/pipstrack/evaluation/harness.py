"""``pipstrack eval``: pipstrack against classical trackers on clips with exact ground truth.

Two datasets, both with exact trajectories and visibility:
- held-out synthetic clips (:func:`pipstrack.datasets.synth.make_clip`) from seed
  :data:`EVAL_SEED`, which training never draws (it trains on seeds ``[0, step, b]`` and
  picks its best checkpoint on seeds ``[10_000, k]``, so neither is reused here);
- photo clips (:func:`pipstrack.datasets.sample.homography_clip`): scikit-image photos seen by a
  hand-held-like camera with an occluder crossing, content unlike the synthetic data.

Queries are every ground-truth point on frame 0, tracked forward. Metrics are TAP-Vid's
(:mod:`pipstrack.evaluation.metrics`), averaged over clips. For pipstrack a forward-backward figure
is added: it needs no ground truth, so it is what one can measure on a real shot, and
seeing it next to the true errors shows how far it can be trusted.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..datasets.synth import EVAL_PHOTOS as PHOTOS
from . import metrics
from .baselines import BASELINES, BaselineUnavailable, Method, blender_available

EVAL_SEED = 20_000
COLUMNS = (  # metric key, header, scale, decimals
    ("delta_avg", "δavg %", 100, 1),
    ("average_jaccard", "AJ %", 100, 1),
    ("occlusion_accuracy", "OA %", 100, 1),
    ("median_err_visible", "err vis px", 1, 2),
    ("median_err_occluded", "err occ px", 1, 2),
    ("median_err_after_occlusion", "err after occ px", 1, 2),
    ("median_err_claimed", "err tracked px", 1, 2),
    ("worst_err_visible", "worst px", 1, 1),
    ("lost_tracks", "lost %", 100, 0),
    ("silent_tracks", "silent %", 100, 0),
)
DATASET_LABELS = {"synthetic": "synthetic", "photo": "photo"}


@dataclass
class EvalClip:
    name: str
    dataset: str
    rgbs: np.ndarray  # (T,H,W,3) uint8
    trajs: np.ndarray  # (T,N,2) float, pixels
    visible: np.ndarray  # (T,N) bool
    query_frames: np.ndarray | None = None  # (N,) int; None: every point queried on frame 0

    @property
    def query_frame(self) -> np.ndarray:
        return np.zeros(self.trajs.shape[1], int) if self.query_frames is None else np.asarray(self.query_frames, int)

    @property
    def queries(self) -> np.ndarray:
        """(N,3) rows [frame, x, y]: every point where it is on its query frame."""
        q = self.query_frame
        return np.c_[q, self.trajs[q, np.arange(len(q))]]


# -- datasets -----------------------------------------------------------------------------------------


def synthetic_clips(count: int, frames: int, size: tuple[int, int], points: int = 48, seed: int = EVAL_SEED):
    """Held-out synthetic clips, generated lazily (one clip in memory at a time)."""
    from ..datasets.synth import SynthConfig, make_clip

    H, W = size
    cfg = SynthConfig(frames=frames, height=H, width=W, points=points)
    for k in range(count):
        clip = make_clip(np.random.default_rng([seed, k]), cfg)
        yield EvalClip(f"synthetic-{seed}-{k}", "synthetic", clip["rgbs"], clip["trajs"], clip["visible"])


def load_photo(name: str) -> np.ndarray:
    """A scikit-image photo as (H,W,3) uint8 RGB (greyscale ones repeated to three channels)."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):
        img = img[0]
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"skimage.data.{name} is {img.dtype}, not 8-bit")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def available_photos() -> list[str]:
    """The photos that load here without a network (they ship inside the scikit-image wheel)."""
    names = []
    for name in PHOTOS:
        try:
            load_photo(name)
        except Exception:
            continue
        names.append(name)
    return names


def photo_clips(count: int, frames: int, size: tuple[int, int], points: int = 48, seed: int = EVAL_SEED):
    """``count`` homography clips, cycling over the available photos, each with its own seed."""
    from ..datasets.sample import homography_clip

    names = available_photos() if count else []
    if count and not names:
        raise RuntimeError("no scikit-image photo loads here; install scikit-image or use --photo-clips 0")
    for k in range(count):
        name = names[k % len(names)]
        clip = homography_clip(load_photo(name), frames, size, seed=seed + k, occluder=True, points=points)
        yield EvalClip(f"photo-{name}-{seed + k}", "photo", clip["rgbs"], clip["trajs"], clip["visible"])


def family_clips(family: str, count: int, frames: int, size: tuple[int, int], points: int = 48, seed: int = EVAL_SEED):
    """``count`` clips of one of :data:`pipstrack.datasets.families.FAMILIES`, from the evaluation's
    photographs (never used in training), each with its own seed."""
    from ..datasets.families import FAMILIES, family_clip

    if family not in FAMILIES:
        raise ValueError(f"unknown clip family {family!r}; known: {', '.join(FAMILIES)}")
    names = available_photos() if count else []
    if count and not names:
        raise RuntimeError("no scikit-image photo loads here; install scikit-image or leave out --families")
    photos = [load_photo(n) for n in names]
    for k in range(count):
        clip = family_clip(family, photos, k, frames, size, seed + 100 * (1 + FAMILIES.index(family)) + k, points)
        label = f"{family}-{names[k % len(names)]}-{seed}-{k}"
        yield EvalClip(label, family, clip["rgbs"], clip["trajs"], clip["visible"], clip["query_frames"])


def evaluation_clips(synthetic: int, photo: int, families, family_count: int, frames, size, points, seed):
    """The evaluation's clips in its order: ``synthetic`` synthetic clips, ``photo`` photo clips,
    then ``family_count`` clips of each of ``families``."""
    yield from synthetic_clips(synthetic, frames, size, points, seed)
    yield from photo_clips(photo, frames, size, points, seed)
    for family in families:
        yield from family_clips(family, family_count, frames, size, points, seed)


# -- running ---------------------------------------------------------------------------------------------


def any_query_frame(method: Method) -> Method:
    """A method that tracks forward from frame 0 (the classical baselines), made to take queries on
    any frame: each query frame's points are tracked forward from it and, on the frames before it,
    forward on the reversed clip (what an artist does in Blender: track forwards, then backwards)."""
    if getattr(method, "any_query_frame", False):
        return method

    def wrapped(rgbs, queries):
        queries = np.asarray(queries, np.float64)
        T, N = len(rgbs), len(queries)
        if not np.any(queries[:, 0]):
            return method(rgbs, queries)
        xy, vis = np.zeros((T, N, 2)), np.zeros((T, N), bool)
        for q in np.unique(queries[:, 0].astype(int)):
            sel = np.flatnonzero(queries[:, 0] == q)
            start = np.c_[np.zeros(len(sel)), queries[sel, 1:]]
            fx, fv = method(rgbs[q:], start)
            xy[q:, sel], vis[q:, sel] = fx, fv
            if q > 0:
                bx, bv = method(np.ascontiguousarray(rgbs[q::-1]), start)
                xy[:q, sel], vis[:q, sel] = bx[:0:-1], bv[:0:-1]
        return xy, vis

    return wrapped


def score(clip: EvalClip, xy: np.ndarray, visible: np.ndarray) -> dict:
    H, W = clip.rgbs.shape[1:3]
    return metrics.tapvid_metrics(xy, visible, clip.trajs, clip.visible, (H, W), clip.query_frame)


def forward_backward_frame0(tracker, rgbs: np.ndarray, xy_forward: np.ndarray) -> np.ndarray:
    """(N,) distance on frame 0 between each query and pipstrack's track started backwards
    from where the forward track ends; no ground truth involved.

    An end position outside the image is clamped to the border (the tracker needs its
    queries in the image), so a point that was lost off-frame counts against the tracker.
    """
    T, H, W = rgbs.shape[:3]
    end = xy_forward[-1].astype(np.float64).copy()
    end[:, 0] = np.clip(np.nan_to_num(end[:, 0], nan=(W - 1) / 2), -0.5, W - 0.5)
    end[:, 1] = np.clip(np.nan_to_num(end[:, 1], nan=(H - 1) / 2), -0.5, H - 0.5)
    queries = np.c_[np.full(len(end), T - 1), end]
    back = tracker.track(rgbs, queries, direction="backward").xy
    return np.linalg.norm(back[0].astype(np.float64) - xy_forward[0], axis=-1)


@dataclass
class MethodRun:
    """Everything measured for one method on one dataset."""

    per_clip: list = field(default_factory=list)  # dicts of metrics, with "clip" and "seconds"
    fb_frame0: list = field(default_factory=list)  # per-point distances, pipstrack only
    error: str | None = None  # set when the method failed; no numbers then

    def summary(self) -> dict:
        out: dict = {"clips": len(self.per_clip)}
        if self.error:
            out["error"] = self.error
        if self.per_clip:
            keys = [k for k in self.per_clip[0] if k not in ("clip", "seconds")]
            with warnings.catch_warnings():  # a metric NaN on every clip (nothing occluded) stays NaN, quietly
                warnings.simplefilter("ignore", RuntimeWarning)
                out.update(metrics.mean_metrics([{k: r[k] for k in keys} for r in self.per_clip]))
            out["seconds_per_clip"] = float(np.mean([r["seconds"] for r in self.per_clip]))
        if self.fb_frame0:
            out["fb_median_frame0"] = float(np.median(np.concatenate(self.fb_frame0)))
        return out


def run_eval(
    methods: dict[str, Method],
    clips,
    total: int | None = None,
    fb_method: str | None = "pipstrack",
    progress: bool = True,
) -> dict[str, dict[str, MethodRun]]:
    """Runs every method on every clip: ``{dataset: {method: MethodRun}}``.

    A method that raises is recorded as failed (with the reason) and skipped on the
    remaining clips; the others go on. ``fb_method`` also gets the forward-backward figure
    (it must carry a ``tracker``, as :func:`pipstrack.evaluation.baselines.pipstrack_method` does).
    """
    from tqdm import tqdm

    runs: dict[str, dict[str, MethodRun]] = {}
    broken: dict[str, str] = {}
    bar = tqdm(clips, total=total, desc="eval", unit="clip", disable=None if progress else True, dynamic_ncols=True)
    for clip in bar:
        per_method = runs.setdefault(clip.dataset, {name: MethodRun() for name in methods})
        for name, method in methods.items():
            run = per_method[name]
            if name in broken:
                run.error = broken[name]
                continue
            try:
                t0 = time.perf_counter()
                xy, vis = any_query_frame(method)(clip.rgbs, clip.queries)
                seconds = time.perf_counter() - t0
                xy, vis = np.asarray(xy, np.float64), np.asarray(vis, bool)
                if xy.shape != clip.trajs.shape or vis.shape != clip.visible.shape:
                    raise RuntimeError(
                        f"returned shapes {xy.shape}, {vis.shape}; expected {clip.trajs.shape}, {clip.visible.shape}"
                    )
                run.per_clip.append({"clip": clip.name, "seconds": seconds, **score(clip, xy, vis)})
                if name == fb_method and hasattr(method, "tracker") and not clip.query_frame.any():
                    run.fb_frame0.append(forward_backward_frame0(method.tracker, clip.rgbs, xy))
            except BaselineUnavailable as e:
                broken[name] = f"unavailable: {e}"
                run.error = broken[name]
            except Exception as e:  # one method's failure must not stop the others
                broken[name] = f"failed on {clip.name}: {type(e).__name__}: {e}"
                run.error = broken[name]
    bar.close()
    for per_method in runs.values():  # a method that broke late is marked on every dataset
        for name, run in per_method.items():
            if name in broken:
                run.error = broken[name]
    return runs


# -- reporting -------------------------------------------------------------------------------------------


def _fmt(value, scale, decimals) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * scale:.{decimals}f}"


def markdown_table(runs: dict[str, dict[str, MethodRun]], methods: list[str], datasets: list[str] | None = None) -> str:
    """One table: a row per method, the metric columns once per dataset, then FB per dataset."""
    if datasets is None:
        first = ("synthetic", "photo")
        datasets = [d for d in first if d in runs] + [d for d in runs if d not in first]
    datasets = [d for d in datasets if d in runs]
    header = ["method"]
    for d in datasets:
        n = max(len(r.per_clip) for r in runs[d].values())
        header += [f"{DATASET_LABELS.get(d, d)} ({n}) {h}" for _, h, _, _ in COLUMNS]
        header.append(f"{DATASET_LABELS.get(d, d)} FB px")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    notes = []
    for name in methods:
        cells = [name]
        for d in datasets:
            run = runs[d].get(name)
            s = run.summary() if run else {}
            if run is None or run.error:  # partial numbers would mislead: all clips or none
                cells += ["n/a"] * (len(COLUMNS) + 1)
            else:
                cells += [_fmt(s.get(k), sc, dec) for k, _, sc, dec in COLUMNS]
                cells.append(_fmt(s.get("fb_median_frame0"), 1, 2))
            if run is not None and run.error:
                note = f"{name}: {run.error}"
                if note not in notes:
                    notes.append(note)
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    if notes:
        text += "\n\n" + "\n".join(f"- {n}" for n in notes)
    return text


def legend(methods: dict[str, str]) -> str:
    rows = [f"- `{k}`: {v}" for k, v in methods.items()]
    rows.append(
        "- δavg: share of visible points within 1/2/4/8/16 px (at 256x256), averaged; AJ: average Jaccard; "
        "OA: occlusion accuracy; err vis / err occ: median distance in px on visible frames / on frames where "
        "the point is hidden but inside the image (per-clip medians averaged over clips); err tracked: the same "
        "on the visible frames the method itself reports as seen (its precision where it tracks); worst px: each "
        f"track's worst error on its visible frames, median over tracks; lost %: tracks more than "
        f"{metrics.LOST_PX:g} px off on at least one visible frame; err after occ px: median error on the visible "
        "frames after a point was first hidden (is it back?); silent %: tracks more than "
        f"{metrics.LOST_PX:g} px off on a frame the method itself reports as visible (wrong without saying so); "
        "FB px: median over "
        "points of the frame-0 distance after tracking forward and back again (no ground truth needed)."
    )
    return "\n".join(rows)


def report_json(runs, config: dict, descriptions: dict[str, str]) -> dict:
    return {
        "format": "pipstrack-eval",
        "version": 1,
        "config": config,
        "methods": descriptions,
        "results": {
            d: {name: {**run.summary(), "per_clip": run.per_clip} for name, run in per_method.items()}
            for d, per_method in runs.items()
        },
    }


def write_json(path, doc: dict) -> None:
    """Atomic, like every pipstrack output: a temporary file renamed into place."""
    import os
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    os.replace(tmp, path)


def evaluate(
    model=None,
    model_label: str = "pipstrack",
    synthetic: int = 10,
    photo: int = 5,
    frames: int = 24,
    size: tuple[int, int] = (256, 320),
    points: int = 48,
    baselines: list[str] = ("zero", "lk", "blender-loc", "blender-perspective"),
    device: str = "auto",
    seed: int = EVAL_SEED,
    progress: bool = True,
    lone: bool = False,
    families: list[str] = (),
    family_count: int = 2,
    precision: str = "auto",
    threads: int | str | None = None,
) -> tuple[str, dict]:
    """The whole evaluation: (Markdown report, JSON-able document). ``model`` None skips pipstrack;
    ``lone`` adds pipstrack with every point tracked alone (one call per point: slow); ``families``
    adds ``family_count`` clips of each of :data:`pipstrack.datasets.families.FAMILIES` named;
    ``threads`` as the Tracker takes it (None: torch's setting as it is)."""
    from ..datasets.families import FAMILIES, LONG_FRAMES
    from .baselines import pipstrack_method

    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; known: {', '.join(BASELINES)}")
    if frames < 2:
        raise ValueError("--frames must be at least 2")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown clip families {', '.join(unknown)}; known: {', '.join(FAMILIES)}")
    methods: dict[str, Method] = {}
    descriptions: dict[str, str] = {}
    if model is not None:
        options = dict(precision=precision, threads=threads)  # every pipstrack row runs alike
        methods["pipstrack"] = pipstrack_method(model, device, **options)
        meta = getattr(model, "meta", None) or {}
        about = ", ".join(f"{k} {meta[k]}" for k in ("step", "note") if k in meta)
        descriptions["pipstrack"] = (
            f"pipstrack, {model_label}{f' ({about})' if about else ''}, on {methods['pipstrack'].tracker.device}, "
            f"precision {precision}, "
            "with sub-pixel refinement and co-motion (the default)"
        )
        methods["pipstrack-raw"] = pipstrack_method(model, device, refine=False, **options)
        descriptions["pipstrack-raw"] = "the same network's own positions, without refinement or co-motion"
        if lone:
            methods["pipstrack-lone"] = pipstrack_method(model, device, lone=True, **options)
            descriptions["pipstrack-lone"] = "pipstrack with every point tracked alone (no co-moving company)"
    for b in baselines:
        descriptions[b], methods[b] = BASELINES[b]
    if any(b.startswith("blender") for b in baselines):
        blender_available()  # import bpy now (~1 s), not inside the first clip's timing

    clips = evaluation_clips(synthetic, photo, families, family_count, frames, size, points, seed)
    runs = run_eval(methods, clips, total=synthetic + photo + family_count * len(families), progress=progress)
    H, W = size
    title = (
        f"pipstrack eval: {frames} frames of {H}x{W} (HxW), up to {points} points per clip, "
        f"queries on frame 0, seed {seed}"
    )
    if "long" in families:
        title += (
            f"; long clips {max(frames, LONG_FRAMES)} frames with queries on the first, a third-way and a "
            "two-thirds-way frame (tracked both ways)"
        )
    base = [d for d in ("synthetic", "photo") if d in runs]
    tables = [markdown_table(runs, list(methods), base)] if base else []
    tables += [f"{family}:\n\n{markdown_table(runs, list(methods), [family])}" for family in families if family in runs]
    text = f"{title}\n\n" + "\n\n".join(tables) + f"\n\n{legend(descriptions)}"
    config = {
        "synthetic": synthetic,
        "photo": photo,
        "frames": frames,
        "size": [H, W],
        "points": points,
        "seed": seed,
        "baselines": list(baselines),
        "model": model_label,
        "precision": precision,
        "families": list(families),
        "family_clips": family_count if families else 0,
    }
    return text, report_json(runs, config, descriptions)
