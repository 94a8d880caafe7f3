"""Keyframe-anchored polish at the source resolution: the last step of refinement.

Why: the chained polish (:mod:`pipstrack.engine.refine`) matches each frame against the previous
one with a translation-only window at the working size, so its error accumulates along a chain
and grows with the downsizing. Blender's tracker, 3-10x more precise on clean frames, matches
every frame against the keyframe's pattern with an affine or perspective warp at full resolution.
Here every frame that refinement verified is matched once more against the pattern of the
point's nearest keyframe, on the source frame (read lazily, a few at a time), by the enhanced
correlation coefficient (ECC) with an affine warp: invariant to brightness and contrast
(exposure changes), and started from the verified position and the warp of the point's previous
matched frame, so it never searches far. A match is kept only where the correlation is high and
it stays close to the verified position; elsewhere the verified position stands.
"""

from __future__ import annotations

from collections import OrderedDict

import cv2
import numpy as np

PATTERN = 21  # template side at the source resolution (px): Blender's default pattern size
MARGIN = 6  # the frame's crop around the estimate reaches this far beyond the pattern (px)
MIN_ECC = 0.9  # correlation a match needs
MAX_SHIFT = 4.0  # a match stays this close to the verified position (px, in the image matched): a chain drifts
SCALE_RANGE = (0.67, 1.5)  # an affine warp whose area changes more is a false match
CACHE_FRAMES = 6  # grey source frames kept at once (memory bounded for 4K plates)
CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-4)


class _Frames:
    """Grey float32 frames, read on demand, the last few kept."""

    def __init__(self, read):
        self.read = read
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __call__(self, i: int) -> np.ndarray:
        img = self.cache.get(i)
        if img is None:
            rgb = self.read(i)
            img = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
            self.cache[i] = img
            if len(self.cache) > CACHE_FRAMES:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(i)
        return img


def _match(template, img, est, affine):
    """ECC of ``template`` (centred on the point) in ``img`` around ``est``; (position, affine
    2x2, correlation) or None."""
    half = (PATTERN - 1) / 2
    side = PATTERN + 2 * MARGIN
    c = np.round(est).astype(int)
    x0, y0 = c[0] - side // 2, c[1] - side // 2
    H, W = img.shape
    if x0 < 0 or y0 < 0 or x0 + side > W or y0 + side > H:
        return None
    crop = img[y0 : y0 + side, x0 : x0 + side]
    warp = np.zeros((2, 3), np.float32)
    warp[:, :2] = affine
    warp[:, 2] = (est - (x0, y0)) - affine @ (half, half)
    try:
        ecc, warp = cv2.findTransformECC(template, crop, warp, cv2.MOTION_AFFINE, CRITERIA, None, 1)
    except cv2.error:  # did not converge, or a flat patch
        return None
    if not np.isfinite(ecc):  # a flat crop (an occluder of one colour): no correlation at all
        return None
    a = warp[:, :2].astype(np.float64)
    pos = a @ (half, half) + warp[:, 2] + (x0, y0)
    return pos, a, float(ecc)


def anchored_polish(read, size, frame_indices, xy, verified, keyframes, tick=None):
    """Positions ``xy`` (T,N,2, source pixels) re-matched, on the frames ``verified`` (T,N), to
    the pattern of each point's nearest keyframe; returns (positions, matched (T,N) bool).

    ``read(i)``: frame of source index ``i`` as (h,w,3) uint8, at the source ``size`` (height,
    width) or smaller (a service keeps only working-size frames: the match is then made there);
    ``keyframes``: per point, its (K,3) rows [source index, x, y]."""
    from ..conventions import to_source, to_working

    T, N = xy.shape[:2]
    out = xy.astype(np.float64).copy()
    matched = np.zeros((T, N), bool)
    frames = _Frames(read)
    row = {int(f): t for t, f in enumerate(frame_indices)}
    # per point: its keyframes' rows and exact positions
    plans = [
        [(row[int(f)], np.array([x, y], np.float64)) for f, x, y in np.asarray(k) if int(f) in row] for k in keyframes
    ]
    # Every keyframe's pattern, cut first (keyframe frames in order): a frame before a keyframe
    # needs that keyframe's pattern before the pass gets there.
    templates: dict = {}
    for t in sorted({kt for rows in plans for kt, _ in rows}):
        img = frames(int(frame_indices[t]))
        for n, rows in enumerate(plans):
            for j, (kt, p) in enumerate(rows):
                if kt == t:
                    pw = to_working(p, size, img.shape[:2])
                    templates[(n, j)] = cv2.getRectSubPix(img, (PATTERN, PATTERN), (float(pw[0]), float(pw[1])))

    # One pass in frame order (each frame read once); a point's affine warp carries over from its
    # last matched frame on the same side of the same keyframe, so far from the keyframe the match
    # starts close, and a frame's result does not depend on frames tracked on the keyframe's
    # other side (tracking forward only gives the same positions after it).
    affine = {}  # (point, keyframe, side) -> the last matched frame's affine
    for t in range(T):
        if tick is not None:  # every frame: a cancel is seen within one frame's work
            tick(t / T)
        todo = []
        for n in np.nonzero(verified[t])[0]:
            if not plans[n]:
                continue
            j = int(np.argmin([abs(t - kt) for kt, _ in plans[n]]))
            if plans[n][j][0] != t:  # keyframes stay as they are
                todo.append((n, j))
        if not todo:
            continue
        img = frames(int(frame_indices[t]))
        for n, j in todo:
            est = to_working(out[t, n], size, img.shape[:2])
            key = (n, j, t > plans[n][j][0])
            got = _match(templates[(n, j)], img, est, affine.get(key, np.eye(2)))
            if got is None:
                continue
            pos, a, ecc = got
            area = abs(np.linalg.det(a))
            if ecc < MIN_ECC or not (SCALE_RANGE[0] <= area <= SCALE_RANGE[1]):
                continue
            if np.linalg.norm(pos - est) > MAX_SHIFT:
                continue
            out[t, n] = to_source(pos, size, img.shape[:2])
            matched[t, n] = True
            affine[key] = a
    return out.astype(np.float32), matched
