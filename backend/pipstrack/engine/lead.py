"""The classical tracker goes first; the network runs only from where it fails.

Why: on clean, textured frames a chained Lucas-Kanade step (what Blender's KLT does) keeps a
point to hundredths of a pixel at a fraction of the network's cost, and the refinement that
follows the network would verify those frames with the same kind of step anyway. The network is
what carries a point through what a KLT tracker cannot follow (an occluder, blur, fast motion).
So before the network, every chaining run of the tracker (:class:`pipstrack.engine.tracker._Segment`)
is followed frame by frame with strict steps from its anchor; a run is handed to the network
only from the last frame those steps verified, and a run verified to its end needs no network
window at all (nor the frames encoded for one). The refinement then treats what came from here
exactly like the network's positions: it polishes, checks and fills every frame as before.

A step counts only when it is stricter than the refinement's own: forward-backward within
:data:`FB_MAX`, the patch like the previous frame's (:data:`NCC_STEP`) and the anchor's
(:data:`NCC_ANCHOR`), the whole window inside the image, and no rival match of a repeating
texture near it (unless it is the one nearest to where the point's own motion puts it). One
failure ends the lead of that run, so a point the classical tracker lost is never trusted beyond
that frame.
"""

from __future__ import annotations

import numpy as np

from . import refine

FB_MAX = 0.25  # px: forward-backward disagreement a step may have
NCC_STEP = 0.9  # patch similarity to the previous frame's
NCC_ANCHOR = 0.8  # ... and to the anchor's patch
LEVELS = 2  # pyramid levels above the working size (frame-to-frame motion of up to ~30 px)


def lead(image, segments, check=None) -> dict:
    """Advances each segment (in place) along the frames strict KLT steps verify from its anchor:
    its ``out_xy`` and ``out_vis`` (1.0) are filled there, ``led`` is the last such frame and
    ``led_ncc`` the patch similarity to the anchor's on each, ``cur`` and ``pos`` are set to the
    last verified frame (where the network takes over) or to the segment's end. ``image(i)``: the
    working-size RGB frame of absolute index ``i``. Returns counts: point-frames verified here and
    segments verified to their end. ``check``, if given, is called before each frame's steps (a
    cancel raises there; a service hears from the job)."""
    half = refine.WIN // 2
    for s in segments:
        s.led = 0  # local index of the last frame verified here
        s.led_ncc = np.full(s.length, np.nan)  # the similarity to the anchor's patch there
    stats = {"lead_frames": 0, "lead_whole": 0}
    for step in (1, -1):
        alive = [s for s in segments if s.step == step and s.length > 1]
        k = {id(s): 0 for s in alive}  # local index of each run's last verified frame
        prev = {id(s): None for s in alive}  # the position before it (for the own-motion seed)
        while alive:
            if check is not None:
                check()
            t = min((s.absolute(k[id(s)]) for s in alive), key=lambda f: step * f)
            group = [s for s in alive if s.absolute(k[id(s)]) == t]
            g0, g1 = image(t), image(t + step)
            h, w = g1.shape[:2]
            p0 = np.array([s.out_xy[k[id(s)]] for s in group], np.float64)
            seed = np.array([p if prev[id(s)] is None else 2 * p - prev[id(s)] for s, p in zip(group, p0)], np.float64)
            p1, ok = _steps(g0, g1, p0, seed)
            inside = (p1[:, 0] >= half) & (p1[:, 0] <= w - 1 - half) & (p1[:, 1] >= half) & (p1[:, 1] <= h - 1 - half)
            ok &= inside
            for j in np.flatnonzero(ok):
                s = group[j]
                anchor = image(s.start)
                like = refine._ncc(anchor, s.xy[None], g1, p1[[j]])[0]
                s.led_ncc[k[id(s)] + 1] = like
                if like < NCC_ANCHOR:
                    ok[j] = False
                elif AMBIGUOUS:
                    # a rival of a repeating texture: only the match nearest to where the point's own
                    # motion puts it counts (as in the refinement; on the first step, where it was)
                    others = refine._rival_matches(g0, p0[j], g1, p1[j])
                    if len(others):
                        ok[j] = refine.nearest_of_rivals(p1[j], others, seed[j])
            done = []
            for j, s in enumerate(group):
                key = id(s)
                if not ok[j]:
                    done.append(s)
                    continue
                k[key] += 1
                prev[key] = p0[j]
                s.out_xy[k[key]] = p1[j]
                s.out_vis[k[key]] = 1.0
                stats["lead_frames"] += 1
                if k[key] == s.length - 1:
                    done.append(s)
            for s in done:
                key = id(s)
                s.led = k[key]
                s.led_ncc[k[key] + 1 :] = np.nan
                s.filled = max(s.filled, k[key] + 1)
                if k[key] == s.length - 1:
                    s.cur = s.length  # verified to its end: no network window
                    stats["lead_whole"] += 1
                else:
                    s.cur, s.pos = k[key], s.out_xy[k[key]].copy()
            alive = [s for s in alive if s not in done]
    return stats


AMBIGUOUS = True  # a step with a rival match (a repeating texture) ends the lead


def _steps(g0, g1, p0, seed) -> tuple[np.ndarray, np.ndarray]:
    """Pyramidal LK from ``p0`` in ``g0`` to ``g1`` started at ``seed``: (K,2) positions and
    whether each is forward-backward consistent and alike (:data:`FB_MAX`, :data:`NCC_STEP`)."""
    p1, back, ok = refine.lk_there_and_back(g0, g1, p0, seed, refine.WIN, LEVELS)
    p1 = p1.astype(np.float64)
    ok &= np.linalg.norm(back - p0, axis=1) < FB_MAX
    ok &= np.isfinite(p1).all(axis=1)
    ok[ok] &= refine._ncc(g0, p0[ok], g1, p1[ok]) >= NCC_STEP
    return p1, ok


# A run the strict steps lost is carried on by its company instead of the network when at least
# this many points that moved with it (verified by the steps themselves) carry it to the run's end,
COMPANY_MIN = 4
# ... by a model at least this strong on every frame (2: similarity; see comotion._predict_from) ...
COMPANY_MODEL = 2
# ... that misses its neighbours' own motion by at most this (px, median) on every frame.
COMPANY_MISS = 0.5


def carry_by_company(segments, first: int, last: int, n_points: int) -> dict:
    """Hands the network none of the open runs whose point the points the strict steps kept can
    carry to the end: their positions after the lead's last frame are the co-motion prediction
    (visibility 0: unverified), and the refinement polishes, checks and fills them as it does the
    network's (:mod:`pipstrack.engine.refine`: its co-motion rounds seed steps there, its search
    finds the point again where it comes back).

    Why: on a clean shot the few points the classical steps lose (they leave the frame, or meet a
    repeating texture) made the network encode nearly every frame, most of the time of such a shot,
    for points whose surface the steps still follow through dozens of others. The network is kept
    wherever the company cannot carry a point all the way (too few of them, a motion no rigid model
    explains, the company lost too) and for every run between two keyframes.
    Returns the count of runs carried (``company_carried``)."""
    from . import comotion

    T = last - first + 1
    xy = np.full((T, n_points, 2), np.nan)
    trusted = np.zeros((T, n_points), bool)
    for s in segments:  # the anchors and every frame the steps verified
        rows = np.array([s.absolute(k) for k in range(s.led + 1)]) - first
        xy[rows, s.point] = s.out_xy[: s.led + 1]
        trusted[rows, s.point] = True
    carried = 0
    for s in segments:
        if s.kind != "open" or s.cur >= s.length:
            continue
        r = s.absolute(s.led) - first
        frames = np.array([s.absolute(k) for k in range(s.led + 1, s.length)]) - first
        nb = comotion.comoving_neighbours(xy, trusted, s.point, r, side=-s.step)
        if len(nb) < COMPANY_MIN:
            continue
        miss = np.full(len(frames), np.inf)
        pred, model = comotion._predict_from(xy, trusted, s.point, r, frames, nb, residuals=miss, chain=True)
        if (model < COMPANY_MODEL).any() or not (miss <= COMPANY_MISS).all():
            continue
        s.out_xy[s.led + 1 :] = pred
        s.out_vis[s.led + 1 :] = 0.0
        s.filled, s.cur = s.length, s.length
        carried += 1
    return {"company_carried": carried}
