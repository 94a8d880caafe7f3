"""Finding a lost point again by its looks (docs/tracking.md, "Re-detection").

Why: Lucas-Kanade polish chains from a point's last trustworthy position and starts each step
where the network puts the point; when the network followed an occluder instead (a pole sweeping
across), every later step starts hundreds of pixels off and fails, and co-motion helps only where
other points of the job move with it. A lone point needs to be looked for: on each frame where it
is not verified, the patch of its last verified frame is matched (normalised cross-correlation)
over a window around where it was, growing with the time since then until it covers the frame.
Lost for longer than ``DENSE_GAP`` frames, it is looked for on every ``SPARSE_EVERY``-th frame
and on the clip's last only (those wide searches were most of the stage's time and rarely found
anything); where it is found, the frames skipped are matched back from there one by one, near the
match after each. A lone point (one marker, one job) is looked for on every frame.
A match counts only when it is strong (``MIN_NCC``), clearly better than any other place in the
window (``MARGIN``: a repeating texture has no single answer), and a Lucas-Kanade step from the
template to it is forward-backward consistent: the point re-anchors there, and the polish chains
on from it. (TAPIR's global matching stage and TAPTRv3's re-detection do the same with learned
features; the patch at the working resolution is enough to verify a point that really is back.)
"""

from __future__ import annotations

import cv2
import numpy as np

from ..conventions import window_inside

MIN_NCC = 0.9  # a match must look this much like the point's last verified patch
MARGIN = 0.1  # ... and this much more than the best other place in the search window
SEARCH_PX = 24  # search radius (px, working size) on the first frame after the point was verified
GROWTH_PX = 12  # ... growing by this much per frame since then (the point may have moved on)
DENSE_GAP = 8  # a point lost for up to this many frames is looked for on every frame ...
SPARSE_EVERY = 4  # ... then on every 4th; found, the frames skipped are matched back from there
SCALES = (1.0, 0.8, 1.25)  # the patch is looked for at its own size, then as if seen further and nearer


def best_match(image: np.ndarray, template: np.ndarray, centre, radius: float):
    """Where ``template`` (odd square, same channels as ``image``) looks most alike within
    ``radius`` of ``centre``: ((x, y) of the match's centre in ``image``, its NCC, the best NCC
    at least ``template``'s size away from it), or None when the window is off the image."""
    h, w = image.shape[:2]
    k = template.shape[0] // 2
    cx, cy = float(centre[0]), float(centre[1])
    x0, x1 = max(int(np.floor(cx - radius)) - k, 0), min(int(np.ceil(cx + radius)) + k + 1, w)
    y0, y1 = max(int(np.floor(cy - radius)) - k, 0), min(int(np.ceil(cy + radius)) + k + 1, h)
    if x1 - x0 <= 2 * k or y1 - y0 <= 2 * k:
        return None
    score = cv2.matchTemplate(image[y0:y1, x0:x1], template, cv2.TM_CCOEFF_NORMED)
    if np.isnan(score).any():
        np.nan_to_num(score, copy=False, nan=-1.0)  # flat windows
    _, peak, _, (px, py) = cv2.minMaxLoc(score)
    s = 2 * k + 1  # anything within a template's width of the peak is the same match
    ya, yb, xa, xb = max(py - s + 1, 0), py + s, max(px - s + 1, 0), px + s
    # the best score outside that box: the rows above and below it, and left and right of it
    parts = (score[:ya], score[yb:], score[ya:yb, :xa], score[ya:yb, xb:])
    runner_up = max((float(part.max()) for part in parts if part.size), default=-1.0)
    return (x0 + px + k, y0 + py + k), float(peak), runner_up


def redetect_pass(
    frame, out, polished, similarity, todo, start, step_fn, looks_like, *, win: int, tick=None, parent=None, sparse=True
) -> int:
    """One sweep away from each point's first anchor (forward, then backward) over the frames in
    ``todo`` that are not polished: looks for the point's patch from its last polished frame on
    that side; accepted matches update ``out``, ``polished`` and ``similarity`` in place.
    ``step_fn(g0, g1, p0, seed)`` is the verifying Lucas-Kanade step: (positions, accepted, ncc);
    ``looks_like(n, g1, p)`` whether point ``n`` at ``p`` in ``g1`` still looks like its anchor;
    ``parent``, if given, records the frame whose patch each match was found by. ``sparse``: a
    point lost for long is looked for on every ``SPARSE_EVERY``-th frame only (a lone point, the
    whole job, on every frame: it may be found from afar on one frame only).
    Returns how many frames were found."""
    T = out.shape[0]
    found = 0
    templates = {}  # per point: a lost one is looked for on every later frame with the same few patches

    def search(n, t, g1, centre, radius, refs, cut):  # point n on frame t (image g1): found there?
        for ref in refs:
            at = _verified_match(frame, ref, out[ref, n], g1, centre, radius, step_fn, win, cut)
            if at is not None and looks_like(n, g1, at[0]):
                out[t, n], similarity[t, n] = at
                polished[t, n] = True
                if parent is not None:
                    parent[t, n] = ref
                return True
        return False

    for half, ts in enumerate((range(1, T), range(T - 2, -1, -1))):
        forward = half == 0
        last_t = start.copy()  # the point's last verified frame on this side
        before_gap = np.full_like(start, -1)  # ... and the last one before the latest gap

        def advance(n, t):
            if abs(t - last_t[n]) > 1:
                before_gap[n] = last_t[n]
            last_t[n] = t

        for i, t in enumerate(ts):
            if tick is not None:  # every frame: a cancel is seen within one frame's work
                tick((half + i / max(len(ts), 1)) / 2)
            ahead = (t > start) if forward else (t < start)
            for n in np.nonzero(ahead & polished[t] & ~todo[t])[0]:
                advance(n, t)
            look = np.nonzero(ahead & todo[t] & ~polished[t])[0]
            if not len(look):
                continue
            g1 = frame(t)
            for n in look:
                lt = last_t[n]
                gap = abs(t - lt)
                # A search over a window this wide costs most of re-detection's time and rarely
                # finds anything frame after frame (a point behind a wide occluder, or gone):
                # every SPARSE_EVERY-th frame is enough to notice it is back. The clip's end is
                # searched: no later search would match back from there.
                if sparse and gap > DENSE_GAP and (gap - DENSE_GAP) % SPARSE_EVERY and t != ts[-1]:
                    continue
                # The patch of the last verified frame looks most like the point now, but right
                # after an occluder it may still hold the occluder's edge: the last verified
                # patch before that gap, and the first keyframe's, are the other candidates.
                refs = dict.fromkeys(r for r in (int(lt), int(before_gap[n]), int(start[n])) if r >= 0)
                cut = templates.setdefault(n, {})
                for key in [key for key in cut if key[0] not in refs]:  # patches no longer looked for
                    del cut[key]
                if not search(n, t, g1, out[lt, n], SEARCH_PX + GROWTH_PX * gap, refs, cut):
                    continue
                advance(n, t)
                found += 1
                if gap <= DENSE_GAP or not sparse:
                    continue
                # Back from where it was found over the frames skipped since its last search, each
                # looked for near the next one's match, until it is not there (it came out there).
                d, near = (1 if forward else -1), t
                for s in range(t - d, lt, -d):
                    if not todo[s, n] or polished[s, n]:
                        continue
                    if not search(n, s, frame(s), out[near, n], SEARCH_PX + GROWTH_PX * abs(near - s), refs, cut):
                        break
                    near = s
                    found += 1
    return found


def _verified_match(frame, ref: int, p_ref, g1, centre, radius: float, step_fn, win: int, templates=None):
    """The point's patch on frame ``ref`` (at ``p_ref``) looked for in ``g1`` within ``radius``
    of ``centre``: (sub-pixel position, NCC) when the match is strong, unique and verified by a
    Lucas-Kanade step, else None. At the patch's own size first; only where nothing there is
    strong and unique, resized by the other :data:`SCALES` (a point back after a zoom).
    ``templates``, a dict if given, keeps the patches cut for later calls."""
    ps = np.asarray(p_ref, np.float64)
    templates = {} if templates is None else templates

    def reference(scale):
        # Seen nearer or further than on ``ref`` (a point back after a long gap): the reference
        # frame resized by ``scale`` about the point, so the patch, the match and the verifying
        # step all compare like with like.
        g0 = frame(ref)
        return g0 if scale == 1.0 else _scaled_about(g0, ps, scale)

    for scale in SCALES:
        key = (ref, float(ps[0]), float(ps[1]), scale, win)
        if key not in templates:
            templates[key] = cv2.getRectSubPix(reference(scale), (win, win), (float(ps[0]), float(ps[1])))
        hit = best_match(g1, templates[key], centre, radius)
        if hit is None:
            continue
        at, peak, runner_up = hit
        if peak < MIN_NCC or peak - runner_up < MARGIN:
            continue
        gs = reference(scale)
        p1, ok, ncc = step_fn(gs, g1, ps[None], np.array([at], np.float64))
        inside = window_inside(p1[0], width=g1.shape[1], height=g1.shape[0], half=win // 2)
        if ok[0] and ncc[0] >= MIN_NCC and inside:
            return p1[0], float(ncc[0])
        if scale == 1.0:
            return None  # it looks alike at its own scale but the step disagrees: not it
    return None


def _scaled_about(image, p, scale: float):
    """``image`` resized by ``scale`` about the point ``p`` (which stays where it is), same size."""
    m = np.array([[scale, 0, (1 - scale) * p[0]], [0, scale, (1 - scale) * p[1]]], np.float64)
    flags = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(image, m, (image.shape[1], image.shape[0]), flags=flags, borderMode=cv2.BORDER_REPLICATE)
