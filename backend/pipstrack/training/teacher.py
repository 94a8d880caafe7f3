"""Pseudo-labels from real footage: the full pipeline teaches the network (``pipstrack teach``).

The network alone is weak on real video; the full pipeline (network, classical lead, polish,
re-detection, co-motion) is far better on clean frames, and it says where it verified a point
(found the point's own patch there). CoTracker3's recipe: track clean real clips with the strong
tracker once, keep only what it verified, and train the network on *degraded* copies of those
clips (motion blur, fast motion, pasted occluders, noise, flicker, compression) against the clean
clip's labels, so the prior learns to carry points through what the classical stages cannot see.

Two parts: :func:`build_bank` tracks the clips and writes a bank (an ``.npz`` of frames and
labels, no pickle), and :func:`teacher_clip` draws one training window from a bank, in the same
form as :func:`pipstrack.datasets.synth.make_clip` plus a ``valid`` mask (frames the teacher
verified: the only ones the coordinate loss sees).

The evaluation's real-footage test (``pipstrack eval --real``) reads the first 100 frames of
each clip; the bank holds only frames from :data:`TRAIN_FROM` on, so no evaluated frame is
learned (the scenes are the same: see docs/model.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from ..conventions import to_working
from ..datasets import synth

TRAIN_FROM = 100  # eval --real scores frames 0..99; the bank starts after them
BANK_LONG_SIDE = 320  # frames are stored at this long side: windows are cropped from them
MIN_VERIFIED = 8  # frames: a point verified on fewer than one window's worth teaches nothing
QUERY_EVERY = 25  # frames between two query grids: points lost on fast footage are replaced
MAX_STRIDE = 3  # windows skip up to this many source frames: fast motion


# -- the bank ------------------------------------------------------------------------------
def _query_grid(H: int, W: int, n: int, frame: int) -> np.ndarray:
    from ..evaluation.real_footage import grid

    q = grid(H, W, n)
    q[:, 0] = frame
    return q


def build_bank(
    path,
    clips=None,
    first_frame: int = TRAIN_FROM,
    long_side: int = BANK_LONG_SIDE,
    points: int = 256,
    tracker=None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Tracks each clip (frames ``first_frame`` on, long side ``long_side``) from grids of about
    ``points / 3`` queries every :data:`QUERY_EVERY` frames (at least three grids), with the full
    pipeline, and writes
    ``path`` (.npz): per clip its frames and, per point and frame, the position where the
    pipeline verified it. Returns {clip: (frames, points kept, labelled point-frames)}."""
    from ..conventions import resize_to_working, working_size
    from ..engine.tracker import Tracker
    from ..engine.weights import load_model
    from ..evaluation.real_footage import CLIPS, clip_path
    from ..io.frames import open_frames

    tracker = tracker or Tracker(load_model(), device="cpu")
    arrays, summary = {}, {}
    for name in clips or tuple(CLIPS):
        src = open_frames(clip_path(name))
        size = working_size(*src.size, long_side)
        rgbs = np.stack([resize_to_working(src.read(i), size) for i in range(first_frame, len(src))])
        src.close()
        T, H, W = rgbs.shape[:3]
        at = np.linspace(0, T - 1, max(3, int(np.ceil(T / QUERY_EVERY)))).round().astype(int)
        queries = np.concatenate([_query_grid(H, W, points // 3, int(f)) for f in at])
        if progress:
            progress(f"{name}: tracking {len(queries)} points over {T} frames")
        result = tracker.track(rgbs, queries)
        valid = result.verified & result.tracked
        keep = valid.sum(0) >= min(MIN_VERIFIED, T)
        arrays[f"{name}.rgbs"] = rgbs
        arrays[f"{name}.xy"] = np.nan_to_num(result.xy[:, keep]).astype(np.float32)
        arrays[f"{name}.valid"] = valid[:, keep]
        summary[name] = (T, int(keep.sum()), int(valid[:, keep].sum()))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)  # never a half-written bank
    return summary


_BANKS: dict[str, dict] = {}


def load_bank(path) -> dict:
    """{clip: (rgbs, xy, valid)}, read once per process (no pickle)."""
    key = str(path)
    if key not in _BANKS:
        with np.load(path, allow_pickle=False) as z:
            names = sorted({k.rsplit(".", 1)[0] for k in z.files})
            _BANKS[key] = {n: (z[f"{n}.rgbs"], z[f"{n}.xy"], z[f"{n}.valid"]) for n in names}
    return _BANKS[key]


# -- one training window -------------------------------------------------------------------
def _exposure(rgbs: np.ndarray, idx: np.ndarray, half: int) -> np.ndarray:
    """Each frame ``idx[k]`` as the mean of the source frames ``idx[k]-half .. idx[k]+half``:
    motion blur integrated over sub-frames, the label at the middle of the exposure."""
    T = len(rgbs)
    out = np.empty((len(idx),) + rgbs.shape[1:], np.float32)
    for k, i in enumerate(idx):
        lo, hi = max(0, i - half), min(T - 1, i + half)
        d = min(i - lo, hi - i)  # symmetric around the labelled frame
        out[k] = rgbs[i - d : i + d + 1].astype(np.float32).mean(0)
    return out


def _occluders(rng, rgbs: np.ndarray, trajs: np.ndarray) -> np.ndarray:
    """Pastes 0-2 moving crops of training photographs (blobs, shapes or thin poles) over the
    window; returns which point-frames they hide."""
    S, H, W = rgbs.shape[:3]
    hidden = np.zeros(trajs.shape[:2], bool)
    photos = {k: v for k, v in synth._load_photos().items() if k not in synth.EVAL_PHOTOS}
    if not photos:
        return hidden
    for _ in range(int(rng.choice([0, 1, 1, 2]))):
        side = int(rng.uniform(0.3, 0.8) * min(H, W))
        pole = rng.random() < 0.3
        mask = (synth._pole_mask(rng, side) if pole else synth._mask(rng, side)).astype(np.float32) / 255.0
        photo = photos[sorted(photos)[int(rng.integers(len(photos)))]]
        ph, pw = photo.shape[:2]
        y0, x0 = int(rng.integers(0, max(1, ph - side))), int(rng.integers(0, max(1, pw - side)))
        tex = cv2.resize(photo[y0 : y0 + side, x0 : x0 + side], (side, side)).astype(np.float32)
        start = rng.uniform([-side / 2, -side / 2], [W - side / 2, H - side / 2])
        speed = rng.uniform(2, 25) * np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)])
        for t in range(S):
            x, y = (start + speed * t).round().astype(int)
            a0, a1, b0, b1 = max(0, x), min(W, x + side), max(0, y), min(H, y + side)
            if a0 >= a1 or b0 >= b1:
                continue
            m = mask[b0 - y : b1 - y, a0 - x : a1 - x, None]
            rgbs[t, b0:b1, a0:a1] = m * tex[b0 - y : b1 - y, a0 - x : a1 - x] + (1 - m) * rgbs[t, b0:b1, a0:a1]
            full = np.zeros((H, W), np.float32)
            full[b0:b1, a0:a1] = m[..., 0]
            xi = np.clip(np.round(trajs[t, :, 0]).astype(int), 0, W - 1)
            yi = np.clip(np.round(trajs[t, :, 1]).astype(int), 0, H - 1)
            hidden[t] |= full[yi, xi] > 0.5
    return hidden


def _degrade(rng, rgbs: np.ndarray) -> np.ndarray:
    """Exposure and white-balance flicker, sensor noise and JPEG compression, each at random."""
    S = len(rgbs)
    if rng.random() < 0.4:
        gain = 1 + rng.uniform(-0.25, 0.25, (S, 1, 1, 1)) * rng.uniform(0.3, 1.0, (1, 1, 1, 3))
        rgbs *= gain
    if rng.random() < 0.5:
        rgbs += rng.normal(0, rng.uniform(2, 10), rgbs.shape).astype(np.float32)
    out = np.clip(rgbs, 0, 255).round().astype(np.uint8)
    if rng.random() < 0.3:
        q = int(rng.integers(25, 85))
        for t in range(S):
            ok, buf = cv2.imencode(".jpg", out[t], [cv2.IMWRITE_JPEG_QUALITY, q])
            out[t] = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return out


def teacher_clip(bank: dict, rng: np.random.Generator, frames: int, height: int, width: int, points: int) -> dict:
    """One training window from ``bank``: ``frames`` frames at a random stride (1..MAX_STRIDE
    source frames: fast motion), blurred over the skipped sub-frames at random, cropped and
    scaled to (height, width), flipped and reversed at random, degraded, with pasted occluders.
    ``trajs`` are the teacher's positions; ``valid`` marks the point-frames it verified on the
    clean clip (``visible`` is False where an occluder hides them); ``source`` says which bank
    clip, frames and points the window shows."""
    names = sorted(bank)
    lengths = np.array([len(bank[n][0]) for n in names], float)
    name = names[int(rng.choice(len(names), p=lengths / lengths.sum()))]
    rgbs, xy, valid = bank[name]
    T, H0, W0 = rgbs.shape[:3]
    stride = int(rng.integers(1, min(MAX_STRIDE, (T - 1) // (frames - 1)) + 1))
    start = int(rng.integers(0, T - (frames - 1) * stride))
    idx = start + stride * np.arange(frames)
    blur = int(rng.integers(0, stride // 2 + 2)) if rng.random() < 0.5 else 0
    clip = _exposure(rgbs, idx, blur)
    trajs, ok = xy[idx].copy(), valid[idx].copy()
    if rng.random() < 0.5:  # time reversed: the query is the window's first frame either way
        clip, trajs, ok, idx = clip[::-1].copy(), trajs[::-1].copy(), ok[::-1].copy(), idx[::-1]
    # crop a (height, width) window at a random scale that covers it
    scale = max(height / H0, width / W0) * rng.uniform(1.0, 2.0)
    h, w = int(np.ceil(H0 * scale)), int(np.ceil(W0 * scale))
    y0, x0 = int(rng.integers(0, h - height + 1)), int(rng.integers(0, w - width + 1))
    clip = np.stack(
        [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA)[y0 : y0 + height, x0 : x0 + width] for f in clip]
    )
    trajs = to_working(trajs, (H0, W0), (h, w)) - [x0, y0]
    if rng.random() < 0.5:
        clip, trajs[..., 0] = clip[:, :, ::-1].copy(), width - 1 - trajs[..., 0]
    inside = (
        (trajs[0, :, 0] >= 0) & (trajs[0, :, 0] <= width - 1) & (trajs[0, :, 1] >= 0) & (trajs[0, :, 1] <= height - 1)
    )
    usable = np.flatnonzero(ok[0] & inside & (ok.sum(0) >= frames - 2))
    if len(usable) == 0:  # nothing labelled in this crop: another draw
        return teacher_clip(bank, rng, frames, height, width, points)
    pick = rng.choice(usable, points, replace=len(usable) < points)
    trajs, ok = trajs[:, pick].astype(np.float32), ok[:, pick]
    hidden = _occluders(rng, clip, trajs)
    return {
        "rgbs": _degrade(rng, clip),
        "trajs": trajs,
        "visible": ~hidden,
        "valid": ok,
        "query_frame": 0,
        "source": (name, idx, pick),  # which bank clip, frames and points (for checks)
    }
