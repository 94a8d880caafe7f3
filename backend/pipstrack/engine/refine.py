"""Sub-pixel refinement of PIPs trajectories (docs/tracking.md).

Why: PIPs is robust (it keeps a point through occlusions and fast motion) but a small network
trained on a CPU is only precise to a few pixels, and behind an occluder it is often dragged
along by it, while a pyramidal Lucas-Kanade step (Blender's KLT is one) is precise to a few
hundredths of a pixel on a clean, visible feature and hopeless through an occluder. So:
1. each frame's PIPs position seeds one Lucas-Kanade step from the point's last trustworthy
   position (chained away from its first keyframe, in the frames' own pixels), kept only when it
   is forward-backward consistent, stays near its seed and the patch looks like the template
   (stricter where PIPs says hidden);
2. frames still unpolished are predicted from the points of the job that move with the point
   (:mod:`pipstrack.engine.comotion`), or from its own motion, and tried again: a point the network
   lost is found again, and then carries others;
3. a point still unverified is looked for by its patch (:mod:`pipstrack.engine.redetect`),
   alone or in company, and the polish chains on from where it is found;
4. what stays unpolished takes the co-moving prediction, or else PIPs plus the interpolated
   correction of its polished neighbours, or the point's own motion across a gap where PIPs
   strayed. Keyframes never move.
PIPs keeps the point, LK polishes it, its looks and its neighbours bring it back.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from ..conventions import window_inside

WIN = 15  # LK window (px)
# Lucas-Kanade reads a region this many times (a window at the coarsest pyramid level + 32 px)
# beyond its points (_lk_crop): a step that runs further has lost its point anyway (the radius
# checks). Without the 32 px it moved 4 of 633 tracks by 12 px: docs/performance.md.
LK_CROP_MARGIN = 2
LEVELS = 2  # pyramid levels above full resolution: PIPs' seed can be several px off
FB_MAX = 0.5  # max forward-backward disagreement (px)
NCC_VISIBLE = 0.7  # patch similarity a step needs where PIPs says the point is visible
NCC_HIDDEN = 0.95  # ... and where PIPs says it is hidden (PIPs' occlusion calls are not always right)
NCC_ANCHOR = 0.5  # ... and the similarity to the point's patch on its first anchor a step keeps
# Pyramid levels for steps seeded by co-moving points or the point's own motion (seeds within a
# few px): a coarse level sees an occluder's edge near the template and follows it instead.
SEEDED_LEVELS = 1
# ... and how far (px) such a step may end from its seed: a prediction that is right is within a
# few px, and a step that runs further has found something else (an occluder's edge next to a
# point hidden behind it), which then passes its slide on as the next frame's velocity.
SEEDED_RADIUS = 5.0
OWN_MOTION = True  # seed where no co-moving point predicts: the point's own motion
ROUNDS = 4  # co-motion seeding rounds at most (each one only while it polishes something new)
REDETECT_RADIUS = 3.0  # a re-detection's sub-pixel step stays this close to the match (px)
# A gap between two verified frames where the network's positions stray this far (px) from the
# point's own motion between them is filled by that motion.
STRAYED_PX = 8.0
# Elsewhere the frames next to a verified end lean on that motion: fully on the frame beside it,
# half on the next (an occluder that has just passed still drags the network; the point's own
# velocity, one or two frames on, is off by its acceleration only).
NEAR_END_FRAMES = 2
SMOOTH_PX = 1.0  # ... where its velocity over the next two verified frames changes by at most this
# A repeating texture (a checker, stripes, a fence) matches itself one period away as well as
# where the point is, and a step seeded a few px off locks onto the wrong period with a perfect
# score. A step whose template matches this nearly as well (within AMBIGUOUS_NCC) somewhere at
# least AMBIGUOUS_PX from it, within AMBIGUOUS_RADIUS, is not taken as verified.
AMBIGUOUS_CHECK = True
AMBIGUOUS_NCC = 0.03
AMBIGUOUS_PX = 4
AMBIGUOUS_RADIUS = 24  # the steps' own reach (radius 20) and a little more
# At an occluder's edge the point is still in view but its WIN-wide patch is not: the frames next
# to a verified one are tried once more with this narrower window (px), stepping on into the gap
# while it holds; its steps must agree more strictly (FB and similarity) and stay near the seed.
EDGE_PASS = True
EDGE_WIN = 7
EDGE_FB_MAX = 0.25
EDGE_NCC = 0.9
EDGE_RADIUS = 3.0
EDGE_MATCH_NCC = 0.95  # a narrow patch looked for (not stepped to) must match this well
EDGE_MATCH_MARGIN = 0.1  # ... and this much better than anywhere else in its window
# A verified frame where the point is not where its co-moving neighbours carry it (it slid onto an
# occluder as it arrived) is verified no longer (:func:`pipstrack.engine.comotion.departures`).
COMPANY_CHECK = True
COMPANY_REACH = np.inf  # ... judged by the neighbours within this share of the frame's long side
COMPANY_NCC = 0.9  # ... and only where its patch looks less like its first anchor's than this
# ... except where the point is lost on the next frame along its chain (an occluder's arrival: the
# half-covered patch slides onto the occluder and still looks like the point), and so on back
# through departing frames: there a departure is dropped whatever the patch looks like
ONSET_STRICT = True
# ... and where that frame was a step across a gap (the point taken up again after frames where
# it was not verified), every frame stepped from it along the chain: they verified the same wrong
# patch again. (A departure from the frame before is more often a deforming surface; what was
# stepped from it keeps its own verification.)
CHAINED_DROP = True
# ... and so where it was a re-detection (a search, not a step), and through re-detections: a
# point re-detected by the patch of a wrong frame was found at the wrong place again.
CHAINED_SEARCH = True
# A step that breaks from the point's own motion (the two verified frames before it) by more than
# JUMP_PX plus JUMP_SHARE of its speed (a fast point is blurred, its steps noisier), after taking
# out what the camera did meanwhile (the median of the same break over the other points verified
# on those frames, at least JUMP_COMPANY of them: a hand-held camera's shake breaks every point's
# motion alike), and that the co-moving points' prediction (if any) does not back within JUMP_PX
# either, found a look-alike (a repeating texture, the far side of an occluder, a patch cut off by
# the frame's edge): it is not verified, nor what was stepped from it. A point without that many
# others is not judged (its own motion alone cannot tell a jump from a shake), nor is a search
# (re-detection: a jump by design).
JUMP_CHECK = True
JUMP_PX = 8.0
JUMP_SHARE = 1.0
JUMP_COMPANY = 3
# A step whose match's window reaches past the frame's border is not verified (stop 41; the
# classical lead and re-detection already required it). The template's may: a point queried a few
# px from the border must still be stepped from its anchor.
BORDER_CHECK = True


def _ncc(g0, p0, g1, p1, win: int = WIN) -> np.ndarray:
    """Normalised cross-correlation of ``win`` x ``win`` patches around p0 in g0 and p1 in g1."""
    out = np.empty(len(p0))
    for k, (a, b) in enumerate(zip(p0, p1)):
        pa = cv2.getRectSubPix(g0, (win, win), (float(a[0]), float(a[1]))).astype(np.float64).ravel()
        pb = cv2.getRectSubPix(g1, (win, win), (float(b[0]), float(b[1]))).astype(np.float64).ravel()
        pa -= pa.mean()
        pb -= pb.mean()
        den = np.sqrt((pa * pa).sum() * (pb * pb).sum())
        out[k] = (pa * pb).sum() / den if den > 0 else 0.0
    return out


def refine_trajectories(
    image,
    frame_indices,
    xy,
    visible,
    keyframes,
    *,
    radius: float = 20.0,
    comotion: bool = True,
    redetect: bool = True,
    tick=None,
    verified=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Refined copy of ``xy`` (T,N,2 source pixels); ``found`` (T,N): the frames where a step found
    the point (and keyframes); ``similarity`` (T,N): there the patch similarity of that step (1 on
    keyframes), elsewhere that of the patch at the refined position to the point's patch on its
    nearest found frame (NaN where the point was not tracked or never found); and counts.

    ``image(i)``: the (H,W,3 uint8 RGB) frame of 0-based source index ``i`` (colour, not grey:
    a texture can differ in hue alone); ``frame_indices``:
    the (T,) source indices of the rows; ``keyframes``: per point, the source indices of its
    keyframes (the first one starts its chains).
    A refined position may move at most ``radius`` pixels from its seed (all in the frames'
    own pixels). ``comotion``: seed the frames LK could not polish from co-moving points
    (:mod:`pipstrack.engine.comotion`) and try again, and fill what stays unpolished from them.
    ``redetect``: look for a point that is still unverified by its patch
    (:mod:`pipstrack.engine.redetect`), re-anchor it where it is found and chain on from there.
    ``verified``, if given: a (T,N) array of patch similarities, finite on the frames already
    verified by steps as strict as these (:mod:`pipstrack.engine.lead`): they are taken as found
    and not stepped again (the company check still judges them).
    ``tick(fraction, stage)``, if given, is called as the work proceeds (0..1; the stage: "refinement",
    "co-motion" or "re-detection"; it may raise to stop it).
    """
    T, N = xy.shape[:2]
    xy = xy.astype(np.float64)
    out = xy.copy()
    row = {int(f): t for t, f in enumerate(frame_indices)}
    # The row of each point's first anchor: frames after it chain forward, before it backward.
    start = np.array([row.get(int(k[0]), 0) for k in keyframes])
    keyed = np.zeros((T, N), bool)
    for n, k in enumerate(keyframes):
        for f in np.asarray(k).astype(int):
            if f in row:
                keyed[row[f], n] = True
    polished = keyed.copy()  # frames whose position is trustworthy: keyframes and accepted steps
    # The frame each accepted step started from, or each re-detection's patch came from (its
    # template was cut there; -1: none, a keyframe or a lead frame): a frame found wrong takes the
    # frames stepped from it along.
    parent = np.full((T, N), -1)
    tracked = np.isfinite(xy[..., 0])
    led = np.zeros((T, N), bool) if verified is None else np.isfinite(verified) & tracked & ~keyed
    stats = {"comotion": 0, "led": int(led.sum())}

    def frame(t):
        return image(int(frame_indices[t]))

    if tick is not None:  # remembers where it was, for work that checks in without a fraction of its own
        report, last = tick, [0.0, "refinement"]

        def tick(fraction, stage="refinement"):
            last[:] = [fraction, stage]
            report(fraction, stage)

    # Work with no fraction of its own (per-point loops) checks in where it was: a cancel is
    # seen between points.
    check = None if tick is None else (lambda: tick(*last))

    similarity = np.where(keyed, 1.0, np.nan)
    if led.any():
        polished |= led
        similarity[led] = verified[led]
    sweeps = 1 + (ROUNDS if comotion and N > 1 else 0) + (2 if redetect else 0)  # passes at most

    def sweep_tick(k, stage="refinement"):  # progress within sweep k (0-based): fraction of its frames done
        return None if tick is None else (lambda f: tick((k + f) / sweeps, stage))

    def seeded_pass(seeds, tick_fn):  # steps seeded by predictions, or the point's own motion, on one level
        _lk_pass(
            frame,
            out,
            seeds,
            visible,
            start,
            polished,
            similarity,
            tracked & ~polished,
            min(radius, SEEDED_RADIUS),
            own_motion=OWN_MOTION,
            levels=SEEDED_LEVELS,
            tick=tick_fn,
            parent=parent,
        )

    clock = [time.perf_counter()]
    seconds = stats["seconds"] = {}

    def lap(stage):  # the profile of docs/performance.md: seconds per stage
        now = time.perf_counter()
        seconds[stage] = seconds.get(stage, 0.0) + now - clock[0]
        clock[0] = now

    stats["departed"] = 0
    judged = None  # the verified frames as the last check left them
    searched = np.zeros((T, N), bool)  # the frames re-detection found (a search, not a step)

    def drop_departures():  # verified frames the company disagrees with are not verified
        nonlocal judged
        if not (COMPANY_CHECK and comotion and N > 1):
            return
        # Again after later stages: only the points they verified more frames of
        points = None if judged is None else np.flatnonzero((polished & ~judged).any(axis=0))
        from .comotion import departures

        def doubt(t, n):  # the patch there no longer looks much like the point's on its first anchor
            s = start[n]
            return _ncc(frame(s), out[[s], n], frame(t), out[[t], n])[0] < COMPANY_NCC

        reach = COMPANY_REACH * max(frame(0).shape[:2])
        spared = np.zeros((T, N), bool)
        bad = departures(out, polished, keyed, reach=reach, doubt=doubt, check=check, points=points, spared=spared)
        if ONSET_STRICT:
            bad |= _lost_after(spared, polished & ~bad, tracked, start)
        if CHAINED_DROP:  # a point taken up again after a gap, or by a search: what chained from it goes too
            rows = np.arange(T)[:, None]
            across = bad & (parent >= 0) & ((np.abs(rows - parent) > 1) | searched)
            bad |= stepped_from(across, parent)
        polished[bad], similarity[bad] = False, np.nan
        judged = polished.copy()
        stats["departed"] += int(bad.sum())

    stats["jumped"] = 0

    def drop_jumps(pred):  # steps that broke from the point's own motion, and what chained from them
        if not JUMP_CHECK:
            return
        bad = stepped_from(_jumped(out, polished, parent, pred, searched), parent)
        polished[bad], similarity[bad] = False, np.nan
        stats["jumped"] += int(bad.sum())

    todo = tracked & ~keyed & ~led
    _lk_pass(frame, out, xy, visible, start, polished, similarity, todo, radius, tick=sweep_tick(0), parent=parent)
    drop_departures()
    drop_jumps(None)
    lap("polish")
    pred = None
    if comotion and N > 1:
        from .comotion import comotion_fill

        # Rounds: points found again anchor predictions for the others on later frames. Seeds are
        # the co-moving points' prediction, or where there is none the point's own motion since
        # it was last found (a point found again keeps going, as a KLT tracker would).
        for k in range(ROUNDS):
            if tick is not None:
                tick((1 + k) / sweeps, "co-motion")
            pred = comotion_fill(out, polished, check)
            before = int(polished.sum())
            seeded_pass(pred, sweep_tick(1 + k, "co-motion"))
            if int(polished.sum()) == before:
                break
        else:
            pred = comotion_fill(out, polished, check)
        lap("co-motion")
    stats["redetected"] = 0
    if redetect:
        from .redetect import redetect_pass

        def verify(g0, g1, p0, seed):  # a sub-pixel step from the template to a match, nearby
            return _lk_step(g0, g1, p0, seed, np.ones(len(p0), bool), REDETECT_RADIUS, levels=0)

        k = sweeps - 2

        def looks_like(n, g1, p):
            return _looks_like_anchor(frame, out, start, n, g1, p)

        before_search = polished.copy() if CHAINED_SEARCH else None
        found = redetect_pass(
            frame,
            out,
            polished,
            similarity,
            tracked & ~polished,
            start,
            verify,
            looks_like,
            win=WIN,
            tick=sweep_tick(k, "re-detection"),
            parent=parent if CHAINED_SEARCH else None,
            sparse=N > 1,
        )
        if CHAINED_SEARCH:  # what this pass verified (it records each match's parent)
            searched |= polished & ~before_search
        stats["redetected"] = found
        if found:  # chain on from where points were found again
            no_seeds = np.full_like(xy, np.nan)
            seeded_pass(no_seeds, sweep_tick(k + 1, "re-detection"))
            if comotion and N > 1:
                pred = comotion_fill(out, polished, check)
        lap("re-detection")
    edge = _edge_pass(frame, out, pred, polished, similarity, tracked, start, check, parent) if EDGE_PASS else 0
    stats["edge"] = edge
    before = stats["departed"] + stats["jumped"]
    drop_departures()
    drop_jumps(pred)  # the co-moving prediction from before the edge pass
    if (edge or stats["departed"] + stats["jumped"] > before) and comotion and N > 1:
        pred = comotion_fill(out, polished, check)
    lap("edge")
    stats["refined"] = int((polished & ~keyed & ~led).sum())
    stats["kept_pips"] = int((tracked & ~polished).sum())
    filled = np.isfinite(pred[..., 0]) & ~polished & tracked if pred is not None else np.zeros((T, N), bool)
    stats["comotion"] = int(filled.sum())
    for n in range(N):
        if check is not None:
            check()
        good = np.nonzero(polished[:, n])[0]  # polished frames are tracked ones
        rest = np.nonzero(~polished[:, n] & tracked[:, n])[0]
        if len(good) == 0 or len(rest) == 0:
            continue
        # Frames LK could not polish (occluded, rejected) take the co-moving points' prediction,
        # or else inherit the correction of their refined neighbours, interpolated in time:
        # PIPs' error changes slowly along a trajectory.
        for c in range(2):
            out[rest, n, c] = xy[rest, n, c] + np.interp(rest, good, out[good, n, c] - xy[good, n, c])
        # Where the network strayed inside a gap (it followed an occluder), the point's own
        # motion between the two verified ends fills it instead.
        _own_motion_fill(out[:, n], xy[:, n], good)
        if pred is not None:
            out[filled[:, n], n] = pred[filled[:, n], n]
        # How much the patch at the reported position looks like the point on its nearest
        # trustworthy frame: low, and the point is not seen there (an occluder the network
        # missed, or a position it lost), whatever the network said.
        ref = good[np.abs(rest[:, None] - good[None]).argmin(1)]
        for g in np.unique(ref):
            ts = rest[ref == g]
            img = frame(g)
            similarity[ts, n] = [_ncc(img, out[[g], n], frame(t), out[[t], n])[0] for t in ts]
    lap("fill")
    return out.astype(np.float32), polished, similarity, stats


def _edge_pass(frame, out, pred, polished, similarity, tracked, start, check=None, parent=None) -> int:
    """The frames an occluder's edge leaves in view but the WIN-wide patch cannot verify, for
    each point: narrow ``EDGE_WIN`` steps into each unverified stretch from the verified frame on
    either side, one frame at a time while they are accepted (seeded by the co-moving prediction,
    the point's own velocity, or standing still); then, on frames still unverified, the narrow
    patch of the nearest verified frame looked for within ``2 * EDGE_RADIUS`` of the best estimate
    there (a short stretch between two occluders), stepping on from what it finds. Updates
    ``out``, ``polished`` and ``similarity`` in place; returns how many frames it verified.
    ``check``, if given, is called before each point (a cancel raises there); ``parent``, if
    given, records the frame each accepted step started from."""
    from .redetect import best_match

    T, N = out.shape[:2]
    found = 0
    for n in range(N):
        if check is not None:
            check()
        if not (tracked[:, n] & ~polished[:, n]).any() or not polished[:, n].any():
            continue
        found += _step_into_gaps(frame, out, pred, polished, similarity, tracked, start, n, parent)
        for t in np.flatnonzero(tracked[:, n] & ~polished[:, n]):
            if polished[t, n]:
                continue
            good = np.flatnonzero(polished[:, n])
            ref = int(good[np.abs(good - t).argmin()])
            centre = pred[t, n] if pred is not None and np.isfinite(pred[t, n, 0]) else out[t, n]
            g0, g1 = frame(ref), frame(t)
            template = cv2.getRectSubPix(g0, (EDGE_WIN, EDGE_WIN), (float(out[ref, n, 0]), float(out[ref, n, 1])))
            hit = best_match(g1, template, centre, 2 * EDGE_RADIUS)
            if hit is None or hit[1] < EDGE_MATCH_NCC or hit[1] - hit[2] < EDGE_MATCH_MARGIN:
                continue
            p1, ok, ncc = _narrow_step(g0, g1, out[ref, n], np.asarray(hit[0], np.float64))
            if ok and _looks_like_anchor(frame, out, start, n, g1, p1):
                out[t, n], similarity[t, n], polished[t, n] = p1, ncc, True
                if parent is not None:
                    parent[t, n] = ref
                found += 1 + _step_into_gaps(frame, out, pred, polished, similarity, tracked, start, n, parent)
    return found


def _step_into_gaps(frame, out, pred, polished, similarity, tracked, start, n, parent=None) -> int:
    """Narrow steps into every unverified stretch of point ``n`` from both ends (see _edge_pass)."""
    T = out.shape[0]
    found = 0
    for step in (1, -1):
        for t in range(T) if step == 1 else range(T - 1, -1, -1):
            r = t - step
            if not (0 <= r < T and polished[r, n] and tracked[t, n] and not polished[t, n]):
                continue
            rr = r - step
            vel = out[r, n] - out[rr, n] if 0 <= rr < T and polished[rr, n] else np.zeros(2)
            seeds = [out[r, n] + vel, out[r, n]]  # its own motion, or standing still
            if pred is not None and np.isfinite(pred[t, n, 0]):
                seeds.insert(0, pred[t, n])  # the co-moving points' prediction first
            for seed in seeds:
                p1, ok, ncc = _narrow_step(frame(r), frame(t), out[r, n], np.asarray(seed, np.float64))
                if ok and _looks_like_anchor(frame, out, start, n, frame(t), p1):
                    out[t, n], similarity[t, n], polished[t, n] = p1, ncc, True
                    if parent is not None:
                        parent[t, n] = r
                    found += 1
                    break
    return found


def _narrow_step(g0, g1, p0, seed):
    """One Lucas-Kanade step with the narrow edge window, no pyramid: (position, accepted, NCC)."""
    a = np.asarray(p0, np.float32).reshape(1, 2)
    p1, back, st = lk_there_and_back(g0, g1, a, np.asarray(seed).reshape(1, 2), EDGE_WIN, 0)
    p1 = p1.reshape(2).astype(np.float64)
    ok = bool(st[0])
    if BORDER_CHECK:
        h, w = g1.shape[:2]
        ok &= bool(window_inside(p1, width=w, height=h, half=EDGE_WIN // 2))
    ok &= float(np.linalg.norm(back.reshape(2) - a.reshape(2))) < EDGE_FB_MAX
    ok &= float(np.linalg.norm(p1 - seed)) < EDGE_RADIUS
    ncc = float(_ncc(g0, np.asarray(p0, np.float64)[None], g1, p1[None], EDGE_WIN)[0])
    return p1, ok and ncc >= EDGE_NCC, ncc


def _looks_like_anchor(frame, out, start, n, g1, p) -> bool:
    """Whether point ``n`` at ``p`` in ``g1`` still looks like its patch on its first anchor."""
    s = start[n]
    return _ncc(frame(s), out[[s], n], g1, np.asarray(p, np.float64)[None])[0] >= NCC_ANCHOR


def _own_motion_fill(out, net, good) -> None:
    """Fills, in place, each gap between two ``good`` (verified) frames where the position
    so far (the network's, shifted by the verified ends' corrections) strays ``STRAYED_PX`` or
    more from the point's own motion: a cubic through the ends with the point's velocity there
    (Hermite; the velocity from the verified frame next to each end, or the chord where there is
    none). A point's motion is smooth where the network, dragged along by an occluder, is not.
    Elsewhere the ``NEAR_END_FRAMES`` frames next to an end where the point moves smoothly blend
    from that motion into the network's."""
    verified = set(good.tolist())
    for j in range(len(good) - 1):
        a, b = int(good[j]), int(good[j + 1])
        if b - a < 2:
            continue
        ts = np.arange(a + 1, b)
        ts = ts[np.isfinite(net[ts, 0])]  # tracked frames only
        chord = (out[b] - out[a]) / (b - a)
        va = out[a] - out[a - 1] if a - 1 in verified else chord
        vb = out[b + 1] - out[b] if b + 1 in verified else chord
        s = ((ts - a) / (b - a))[:, None]
        h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
        own = h00 * out[a] + h10 * (b - a) * va + h01 * out[b] + h11 * (b - a) * vb
        if not len(ts):
            continue
        if np.linalg.norm(out[ts] - own, axis=1).max() >= STRAYED_PX:
            out[ts] = own
            continue
        # Next to an end where the point moves smoothly (under a shaking camera it does not), the
        # own motion, blended into the network's path over NEAR_END_FRAMES frames
        w = np.zeros(len(ts))
        for end, side in ((a, -1), (b, 1)):
            if _smooth_at(out, verified, end, side):
                w = np.maximum(w, np.clip((NEAR_END_FRAMES + 1 - np.abs(ts - end)) / max(NEAR_END_FRAMES, 1), 0, 1))
        out[ts] = w[:, None] * own + (1 - w[:, None]) * out[ts]


def _smooth_at(out, verified, end: int, side: int) -> bool:
    """Whether the point's motion over the verified frames beyond ``end`` (``side``: -1 before
    it, 1 after it) changes by at most ``SMOOTH_PX`` per frame (its acceleration)."""
    r1, r2 = end + side, end + 2 * side
    if r1 not in verified or r2 not in verified:
        return False
    return float(np.linalg.norm(out[end] - 2 * out[r1] + out[r2])) <= SMOOTH_PX


def _lk_pass(
    frame,
    out,
    seeds,
    visible,
    start,
    polished,
    similarity,
    todo,
    radius,
    own_motion=False,
    levels=LEVELS,
    tick=None,
    parent=None,
) -> None:
    """One Lucas-Kanade sweep away from each point's first anchor, forward then backward, over
    the frames in ``todo``: each step starts at the point's last trustworthy position and is
    seeded by ``seeds`` (NaN: no step, or with ``own_motion`` the point's velocity between its
    last two trustworthy frames carried on); accepted steps update ``out``, ``polished`` and
    ``similarity`` (and ``parent``, where given: the frame each step started from) in place."""
    T = out.shape[0]
    for half, (step, ts) in enumerate(((1, range(1, T)), (-1, range(T - 2, -1, -1)))):
        # Each point chains from its last trustworthy position (its anchor, a keyframe, or a
        # refined frame): a template is only ever cut where the point really is.
        last_t = start.copy()
        prev_t = np.full_like(start, -1)  # the trustworthy frame before last_t
        for i, t in enumerate(ts):
            if tick is not None:  # every frame: a cancel is seen within one frame's work
                tick((half + i / max(len(ts), 1)) / 2)
            ahead = (t > start) if step == 1 else (t < start)
            for n in np.nonzero(ahead & polished[t] & ~todo[t])[0]:
                prev_t[n], last_t[n] = last_t[n], t
            go = ahead & todo[t] & ~polished[t] & (np.isfinite(seeds[t, :, 0]) | own_motion)
            for lt in np.unique(last_t[go]):
                idx = np.nonzero(go & (last_t == lt))[0]
                p0 = out[lt, idx].reshape(-1, 2)
                # Where the point's own motion puts it (its velocity between its last two
                # trustworthy frames carried on; where it has only one, standing still): the seed
                # where nothing else predicts, and on a repeating texture the one of several equal
                # matches to believe.
                pt = prev_t[idx]
                prior = np.full_like(p0, np.nan)
                has = pt >= 0
                prior[has] = p0[has] + (p0[has] - out[pt[has], idx[has]]) / (lt - pt[has])[:, None] * (t - lt)
                seed = seeds[t, idx].copy()
                miss = ~np.isfinite(seed[:, 0])
                seed[miss] = np.where(has[miss, None], prior[miss], p0[miss])
                g0, g1 = frame(lt), frame(t)
                p1, ok, ncc = _lk_step(g0, g1, p0, seed, visible[t, idx], radius, levels, prior=prior)
                # Chained steps drift onto what slides over a point (each compares with the last
                # frame only): a step must still look like the point's first anchor.
                for j in np.nonzero(ok)[0]:
                    ok[j] = _looks_like_anchor(frame, out, start, idx[j], g1, p1[j])
                out[t, idx[ok]] = p1[ok]
                polished[t, idx[ok]] = True
                similarity[t, idx[ok]] = ncc[ok]
                if parent is not None:
                    parent[t, idx[ok]] = lt
                prev_t[idx[ok]] = last_t[idx[ok]]
                last_t[idx[ok]] = t


def _jumped(out, polished, parent, pred, searched) -> np.ndarray:
    """(T,N) bool: the verified frames reached by a step (``parent``: where it started, ``k``
    frames away; not a search) whose displacement misses the point's own motion (``k`` times the
    velocity from the verified frame before the step's start) by more than ``JUMP_PX +
    JUMP_SHARE * k * speed`` once the median miss of the other points verified on the same three
    frames (the camera's shake) is taken out, where the co-moving prediction ``pred`` (T,N,2, NaN
    where none; or None) is no nearer than ``JUMP_PX`` either. Not judged: frames without two
    verified frames behind their step, or fewer than ``JUMP_COMPANY`` such other points."""
    T, N = polished.shape
    rows = np.arange(T)[:, None]
    cols = np.broadcast_to(np.arange(N)[None], (T, N))
    r = parent
    rr = r - np.sign(rows - r)  # the frame before the step's start, on the far side
    judged = polished & (r >= 0) & (r != rows) & ~searched & (rr >= 0) & (rr < T)
    judged[judged] &= polished[rr[judged], cols[judged]] & polished[r[judged], cols[judged]]
    bad = np.zeros((T, N), bool)
    t_all, n_all = np.nonzero(judged)
    a_all, b_all = r[t_all, n_all], rr[t_all, n_all]
    # One group per (frame, step start, the frame before it): the camera's break is the same there.
    keys = np.stack([t_all, a_all, b_all], axis=1)
    groups, which = np.unique(keys, axis=0, return_inverse=True)
    for g, (t, a, b) in enumerate(groups):
        seen = np.flatnonzero(polished[t] & polished[a] & polished[b])  # the judged ones are among them
        if len(seen) <= JUMP_COMPANY:
            continue
        members = n_all[which.ravel() == g]
        k = abs(int(t) - int(a))
        miss = out[t, seen] - out[a, seen] - k * (out[a, seen] - out[b, seen])  # breaks from own motion
        camera = _median_without(miss)  # each point's: the others' median
        at = np.searchsorted(seen, members)
        speed = np.linalg.norm(out[a, members] - out[b, members], axis=1)  # in the frame: blur grows with it
        far = np.linalg.norm(miss[at] - camera[at], axis=1) > JUMP_PX + JUMP_SHARE * k * speed
        if pred is not None:
            far &= ~(np.linalg.norm(out[t, members] - pred[t, members], axis=1) <= JUMP_PX)  # NaN: none
        bad[t, members[far]] = True
    return bad


def _median_without(values: np.ndarray) -> np.ndarray:
    """(m,D): for each row, the per-column median of the other m-1 rows (m >= 2)."""
    m = len(values)
    order = np.argsort(values, axis=0, kind="stable")
    ranks = np.empty_like(order)
    cols = np.arange(values.shape[1])
    ranks[order, cols] = np.arange(m)[:, None]
    ordered = np.take_along_axis(values, order, axis=0)
    lo, hi = (m - 2) // 2, (m - 1) // 2  # the middle of m-1 values (the same index when m-1 is odd)

    def pick(i):  # the i-th smallest of the others: skip the row's own rank
        return ordered[np.where(i < ranks, i, i + 1), cols]

    return 0.5 * (pick(lo) + pick(hi))


def stepped_from(bad: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """``bad`` (T,N bool) and every frame stepped from a bad one, directly or along a chain of
    steps (``parent``: the frame each step started from, -1 for none). Why: a step compares with
    the patch where its chain last was; from a wrong frame it verifies the wrong patch again (a
    repeating texture a period off looks like the point's anchor as well as the point does)."""
    bad = bad.copy()
    cols = np.arange(bad.shape[1])[None]
    while True:
        inherit = (parent >= 0) & bad[np.maximum(parent, 0), cols] & ~bad
        if not inherit.any():
            return bad
        bad |= inherit


def lk_there_and_back(g0, g1, p0, seed, win: int, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pyramidal Lucas-Kanade from ``p0`` in ``g0`` to ``g1`` started at ``seed`` (K,2), and back
    from there to ``g0``: (K,2) float32 positions in ``g1``, (K,2) float32 positions back in
    ``g0`` (the forward-backward check compares them with ``p0``), and whether both converged."""
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 0.001)
    kw = dict(winSize=(win, win), maxLevel=levels, criteria=criteria, flags=cv2.OPTFLOW_USE_INITIAL_FLOW)
    a = np.asarray(p0).astype(np.float32).reshape(-1, 1, 2)
    b = np.asarray(seed).astype(np.float32).reshape(-1, 1, 2)
    g0, g1, origin = _lk_crop(g0, g1, np.concatenate((a, b)).reshape(-1, 2), win, levels)
    a, b = a - origin, b - origin
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(g0, g1, a, b, **kw)
    back, st2, _ = cv2.calcOpticalFlowPyrLK(g1, g0, p1, a.copy(), **kw)
    ok = (st1.ravel() == 1) & (st2.ravel() == 1)
    return (p1 + origin).reshape(-1, 2), (back + origin).reshape(-1, 2), ok


def _lk_crop(g0, g1, points, win: int, levels: int):
    """``g0`` and ``g1`` cut down to the region that Lucas-Kanade for ``points`` reads (the
    windows at every pyramid level with room to converge), and the cut's origin (x, y) as float32.
    Why: OpenCV builds both pyramids and their derivatives over the whole frame on every call,
    and most calls here step one point (1.1 ms a call at 512x288, most of it for pixels the
    step never reads). The cut starts on a multiple of the coarsest level's scale, so every
    pyramid level holds the same pixels as the whole frame's away from the cut's edge, which
    lies :data:`LK_CROP_MARGIN` x (a coarsest-level window + 32 px) beyond the points."""
    h, w = g0.shape[:2]
    scale = 2**levels
    margin = LK_CROP_MARGIN * (win * scale + 32)
    finite = points[np.isfinite(points).all(1)]
    if not len(finite):
        return g0, g1, np.zeros(2, np.float32)
    lo = np.floor(finite.min(0) - margin).astype(int)
    hi = np.ceil(finite.max(0) + margin).astype(int) + 1
    x0, y0 = (max(int(lo[0]), 0) // scale) * scale, (max(int(lo[1]), 0) // scale) * scale
    x1, y1 = min(int(hi[0]), w), min(int(hi[1]), h)
    if (x1 - x0) * (y1 - y0) > 0.5 * w * h:
        return g0, g1, np.zeros(2, np.float32)  # most of the frame anyway: no cut
    return g0[y0:y1, x0:x1], g1[y0:y1, x0:x1], np.array([x0, y0], np.float32)


def nearest_of_rivals(p1, others, prior) -> bool:
    """Whether match ``p1`` is the one of a repeating texture's matches (``others``, the rivals
    :func:`_rival_matches` found) nearest to ``prior``, by at least 1 px."""
    return bool(np.linalg.norm(p1 - prior) + 1.0 < np.linalg.norm(others - prior, axis=1).min())


def _lk_step(g0, g1, p0, seed, visible, radius, levels=LEVELS, prior=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lucas-Kanade from ``p0`` in ``g0`` to ``g1``, started at ``seed``: positions (K,2), whether
    each is accepted (forward-backward consistent, within ``radius`` of the seed, patch alike,
    and not one of several equal matches of a repeating texture -- unless it is the one nearest
    to ``prior``, the point's own-motion prediction, where given) and the patch similarity (NCC)."""
    p1, back, ok = lk_there_and_back(g0, g1, p0, seed, WIN, levels)
    p1 = p1.astype(np.float64)
    if BORDER_CHECK:
        h, w = g1.shape[:2]
        ok &= window_inside(p1, width=w, height=h, half=WIN // 2)
    ok &= np.linalg.norm(back - p0, axis=1) < FB_MAX
    ok &= np.linalg.norm(p1 - seed, axis=1) < radius
    ncc = _ncc(g0, p0, g1, p1)
    ok &= ncc > np.where(visible, NCC_VISIBLE, NCC_HIDDEN)
    if AMBIGUOUS_CHECK:
        for k in np.flatnonzero(ok):
            others = _rival_matches(g0, p0[k], g1, p1[k])
            if len(others):
                pk = None if prior is None or not np.isfinite(prior[k, 0]) else prior[k]
                ok[k] = pk is not None and nearest_of_rivals(p1[k], others, pk)
    return p1, ok, ncc


def _rival_matches(g0, p0, g1, p1, win: int = WIN) -> np.ndarray:
    """(K,2) positions where the ``win`` patch at ``p0`` in ``g0`` matches ``g1`` nearly as well
    (within AMBIGUOUS_NCC) as at ``p1``, at least AMBIGUOUS_PX from it and within
    AMBIGUOUS_RADIUS: the other periods of a repeating texture (none: the match is unique)."""
    none = np.zeros((0, 2))
    k, r = win // 2, AMBIGUOUS_RADIUS
    h, w = g1.shape[:2]
    x, y = int(round(p1[0])), int(round(p1[1]))
    x0, x1, y0, y1 = max(x - r - k, 0), min(x + r + k + 1, w), max(y - r - k, 0), min(y + r + k + 1, h)
    if x1 - x0 <= win or y1 - y0 <= win:
        return none
    template = cv2.getRectSubPix(g0, (win, win), (float(p0[0]), float(p0[1])))
    score = np.nan_to_num(cv2.matchTemplate(g1[y0:y1, x0:x1], template, cv2.TM_CCOEFF_NORMED), nan=-1.0)
    cx, cy = x - x0 - k, y - y0 - k  # p1's cell in the score map
    if not (0 <= cx < score.shape[1] and 0 <= cy < score.shape[0]):
        return none  # at the image border: no room to judge
    here = score[max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2].max()
    # Other peaks only (local maxima): a smooth texture's broad peak has shoulders as high a few
    # px away, which are the same match, not another one.
    peaks = score >= cv2.dilate(score, np.ones((3, 3), np.uint8))
    yy, xx = np.mgrid[0 : score.shape[0], 0 : score.shape[1]]
    rival = peaks & ((xx - cx) ** 2 + (yy - cy) ** 2 >= AMBIGUOUS_PX**2) & (score >= here - AMBIGUOUS_NCC)
    ys, xs = np.nonzero(rival)
    return np.c_[xs + x0 + k, ys + y0 + k].astype(np.float64)


def _lost_after(spared: np.ndarray, kept: np.ndarray, tracked: np.ndarray, start: np.ndarray) -> np.ndarray:
    """(T,N) the ``spared`` frames (they departed from the company, their looks kept them) after
    which, along the point's chain away from its first anchor ``start``, the point is not ``kept``:
    the frame before a loss, and back through the spared frames before it."""
    T, N = kept.shape
    rows = np.arange(T)[:, None]
    drop = np.zeros((T, N), bool)
    while True:
        lost = tracked & ~(kept & ~drop)
        nxt = np.zeros((T, N), bool)  # lost on the next frame away from the anchor
        nxt[:-1] = lost[1:] & (rows[:-1] > start)
        nxt[1:] |= lost[:-1] & (rows[1:] < start)
        new = spared & ~drop & nxt
        if not new.any():
            return drop
        drop |= new
