"""Sub-pixel refinement of PIPs trajectories (docs/tracking.md).

Why: PIPs is robust (it keeps a point through occlusions and fast motion, and never loses it
for good) but a small network trained on a CPU is only precise to a few pixels, while a
pyramidal Lucas-Kanade step (Blender's KLT is one) is precise to a few hundredths of a pixel on
a clean, visible feature and hopeless through an occluder. So each frame's PIPs position seeds
one Lucas-Kanade step from the point's last trustworthy position (chained away from its first
keyframe, in the frames' own pixels), kept only when it is forward-backward consistent, stays
near what PIPs says and the patch looks like the template (stricter where PIPs says hidden).
Frames no step polished take the interpolated correction of their polished neighbours;
keyframes never move. PIPs keeps the point, LK polishes it.
"""
from __future__ import annotations

import cv2
import numpy as np

WIN = 15  # LK window (px)
LEVELS = 2  # pyramid levels above full resolution: PIPs' seed can be several px off
FB_MAX = 0.5  # max forward-backward disagreement (px)
NCC_VISIBLE = 0.7  # patch similarity a step needs where PIPs says the point is visible
NCC_HIDDEN = 0.95  # ... and where PIPs says it is hidden (PIPs' occlusion calls are not always right)


def _ncc(g0, p0, g1, p1) -> np.ndarray:
    """Normalised cross-correlation of WIN x WIN patches around p0 in g0 and p1 in g1."""
    out = np.empty(len(p0))
    for k, (a, b) in enumerate(zip(p0, p1)):
        pa = cv2.getRectSubPix(g0, (WIN, WIN), (float(a[0]), float(a[1]))).astype(np.float64).ravel()
        pb = cv2.getRectSubPix(g1, (WIN, WIN), (float(b[0]), float(b[1]))).astype(np.float64).ravel()
        pa -= pa.mean()
        pb -= pb.mean()
        den = np.sqrt((pa * pa).sum() * (pb * pb).sum())
        out[k] = (pa * pb).sum() / den if den > 0 else 0.0
    return out


def refine_trajectories(gray, frame_indices, xy, visible, keyframes, *, radius: float = 20.0) -> tuple[np.ndarray, dict]:
    """Refined copy of ``xy`` (T,N,2 source pixels) and counts.

    ``gray(i)``: the grey (H,W uint8) frame of 0-based source index ``i``; ``frame_indices``:
    the (T,) source indices of the rows; ``keyframes``: per point, the source indices of its
    keyframes (the first one starts its chains).
    A refined position may move at most ``radius`` pixels from PIPs' estimate (all in the
    frames' own pixels).
    """
    T, N = xy.shape[:2]
    out = xy.astype(np.float64).copy()
    row = {int(f): t for t, f in enumerate(frame_indices)}
    # The row of each point's first anchor: frames after it chain forward, before it backward.
    start = np.array([row.get(int(k[0]), 0) for k in keyframes])
    keyed = np.zeros((T, N), bool)
    for n, k in enumerate(keyframes):
        for f in np.asarray(k).astype(int):
            if f in row:
                keyed[row[f], n] = True
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 0.001)
    kw = dict(winSize=(WIN, WIN), maxLevel=LEVELS, criteria=criteria)
    stats = {"refined": 0, "kept_pips": 0}
    polished = keyed.copy()  # frames whose position is trustworthy: keyframes and accepted steps

    def frame(t):
        return gray(int(frame_indices[t]))

    for step, ts in ((1, range(1, T)), (-1, range(T - 2, -1, -1))):
        # Each point chains from its last trustworthy position (its anchor, a keyframe, or a
        # refined frame): a template is only ever cut where the point really is.
        last_t = start.copy()
        for t in ts:
            ahead = (t > start) if step == 1 else (t < start)
            for n in np.nonzero(ahead & keyed[t])[0]:
                last_t[n] = t
            go = ahead & ~keyed[t] & np.isfinite(xy[t, :, 0])
            for lt in np.unique(last_t[go]):
                idx = np.nonzero(go & (last_t == lt))[0]
                p0 = out[lt, idx].astype(np.float32).reshape(-1, 1, 2)
                seed = xy[t, idx].astype(np.float32).reshape(-1, 1, 2)
                g0, g1 = frame(lt), frame(t)
                p1, st1, _ = cv2.calcOpticalFlowPyrLK(g0, g1, p0, seed.copy(), flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **kw)
                back, st2, _ = cv2.calcOpticalFlowPyrLK(g1, g0, p1, p0.copy(), flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **kw)
                p1, back = p1.reshape(-1, 2).astype(np.float64), back.reshape(-1, 2)
                ok = (st1.ravel() == 1) & (st2.ravel() == 1)
                ok &= np.linalg.norm(back - p0.reshape(-1, 2), axis=1) < FB_MAX
                ok &= np.linalg.norm(p1 - xy[t, idx], axis=1) < radius
                ncc = _ncc(g0, p0.reshape(-1, 2), g1, p1)
                ok &= ncc > np.where(visible[t, idx], NCC_VISIBLE, NCC_HIDDEN)
                out[t, idx[ok]] = p1[ok]
                polished[t, idx[ok]] = True
                last_t[idx[ok]] = t
                stats["refined"] += int(ok.sum())
                stats["kept_pips"] += int((~ok).sum())
    # Frames LK could not polish (occluded, rejected) inherit the correction of their refined
    # neighbours, interpolated in time: PIPs' error changes slowly along a trajectory.
    tracked = np.isfinite(xy[..., 0])
    for n in range(N):
        good = np.nonzero(polished[:, n] & tracked[:, n])[0]
        rest = np.nonzero(~polished[:, n] & tracked[:, n])[0]
        if len(good) == 0 or len(rest) == 0:
            continue
        for c in range(2):
            d = out[good, n, c] - xy[good, n, c]
            out[rest, n, c] = xy[rest, n, c] + np.interp(rest, good, d)
    return out.astype(np.float32), stats
