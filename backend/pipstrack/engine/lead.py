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
failure ends the steps of that run, so a point the classical tracker lost is never trusted beyond
that frame unless a strict step finds its own patch again.

Its company, where it has one, carries it from there (``company``): the points that moved with it
still show its surface moving, so the network is needed only where they cannot carry it. Where
it comes back (into the frame, out from behind the occluder) a strict step at their prediction
finds it again and the steps go on.
"""

from __future__ import annotations

import numpy as np

from ..conventions import window_inside
from . import comotion, refine

FB_MAX = 0.25  # px: forward-backward disagreement a step may have
NCC_STEP = 0.9  # patch similarity to the previous frame's
NCC_ANCHOR = 0.8  # ... and to the anchor's patch
LEVELS = 2  # pyramid levels above the working size (frame-to-frame motion of up to ~30 px)


def lead(image, segments, check=None, company: bool = False) -> dict:
    """Advances each segment (in place) along the frames strict KLT steps verify from its anchor:
    its ``out_xy`` and ``out_vis`` (1.0) are filled there, ``led`` is the last such frame and
    ``led_ncc`` the patch similarity to the anchor's on each (NaN on frames not verified), ``cur``
    and ``pos`` are set to the last verified frame (where the network takes over) or to the
    segment's end. ``image(i)``: the working-size RGB frame of absolute index ``i``. Returns
    counts: point-frames verified here, segments verified to their end, and (``company``) the
    stretches over which a run was carried by its company, and those ended by finding it again.
    ``check``, if given, is called before each frame's steps (a cancel raises there; a service
    hears from the job).

    ``company``: an open run whose step fails is not handed to the network at once. Where points
    that moved with it (verified by these steps on the frames before) carry it on (see
    :class:`_Company`), it takes their prediction, unverified, and on each frame a strict step
    from its last verified patch to the prediction may find it again (within :data:`FOUND_PX` of
    it); the lead then goes on from there. Only where the company can no longer carry it does the
    network take over, from its last verified frame."""
    half = refine.WIN // 2
    for s in segments:
        s.led = 0  # local index of the last frame verified here
        s.led_ncc = np.full(s.length, np.nan)  # the similarity to the anchor's patch there
    stats = {"lead_frames": 0, "lead_whole": 0}
    board = _Company(segments) if company else None
    if company:
        stats.update(company_carried=0, company_found=0)
    for step in (1, -1):
        alive = [s for s in segments if s.step == step and s.length > 1]
        k = {id(s): 0 for s in alive}  # local index of each run's current frame
        prev = {id(s): None for s in alive}  # the position before it (for the own-motion seed)
        carried = {}  # id -> the co-moving neighbours of a run its company carries now
        while alive:
            if check is not None:
                check()
            t = min((s.absolute(k[id(s)]) for s in alive), key=lambda f: step * f)
            group = [s for s in alive if s.absolute(k[id(s)]) == t]
            stepping = [s for s in group if id(s) not in carried]
            g1 = image(t + step)
            h, w = g1.shape[:2]
            ok = np.zeros(len(stepping), bool)
            if stepping:
                g0 = image(t)
                p0 = np.array([s.out_xy[k[id(s)]] for s in stepping], np.float64)
                seed = np.array(
                    [p if prev[id(s)] is None else 2 * p - prev[id(s)] for s, p in zip(stepping, p0)], np.float64
                )
                p1, ok = _steps(g0, g1, p0, seed)
                ok &= window_inside(p1, width=w, height=h, half=half)
                likes = [None] * len(stepping)
                for j in np.flatnonzero(ok):
                    likes[j] = _like_the_point(image, stepping[j], g0, p0[j], g1, p1[j], seed[j])
                    ok[j] = likes[j] is not None
            done = []
            for j, s in enumerate(stepping):
                key = id(s)
                if ok[j]:
                    _verify(s, k[key] + 1, p1[j], likes[j], board, stats)
                    k[key] += 1
                    prev[key] = p0[j]
                    if k[key] == s.length - 1:
                        done.append(s)
                    continue
                nb = board.neighbours(s) if board is not None and s.kind == "open" else ()
                if len(nb) < COMPANY_MIN:
                    done.append(s)
                    continue
                carried[key] = nb
                stats["company_carried"] += 1
            for s in [s for s in group if id(s) in carried and s not in done]:
                key = id(s)
                local = k[key] + 1
                p = board.predict(s, t + step, carried[key])
                if p is None:  # the company cannot carry it on: the network takes over
                    done.append(s)
                    continue
                k[key] = local
                s.out_xy[local], s.out_vis[local] = p, 0.0
                found = _find_again(image, s, g1, p, w, h, half)
                if found is not None:
                    _verify(s, local, *found, board, stats)
                    stats["company_found"] += 1
                    prev[key] = None if local < 2 else s.out_xy[local - 1].copy()
                    del carried[key]
                if local == s.length - 1:
                    done.append(s)
            for s in done:
                key = id(s)
                carried.pop(key, None)
                s.led_ncc[s.led + 1 :] = np.nan
                if k[key] == s.length - 1:
                    s.filled = s.length
                    s.cur = s.length  # verified, or carried, to its end: no network window
                    stats["lead_whole"] += s.led == s.length - 1
                else:  # the network takes over from the last verified frame
                    s.filled = max(s.filled, s.led + 1)
                    s.cur, s.pos = s.led, s.out_xy[s.led].copy()
            alive = [s for s in alive if s not in done]
    return stats


def _like_the_point(image, s, g0, p0, g1, p1, seed) -> float | None:
    """A step's patch similarity to the anchor's where it still looks like the point there
    (:data:`NCC_ANCHOR`) and is not a rival match of a repeating texture (unless the match
    nearest to ``seed``, where the point's own motion puts it), else None."""
    like = refine._ncc(image(s.start), s.xy[None], g1, p1[None])[0]
    if like < NCC_ANCHOR:
        return None
    if AMBIGUOUS:
        others = refine._rival_matches(g0, p0, g1, p1)
        if len(others) and not refine.nearest_of_rivals(p1, others, seed):
            return None
    return float(like)


def _verify(s, local, p, like, board, stats) -> None:
    """Frame ``local`` of run ``s`` verified at ``p``: its position, visibility, similarity."""
    s.out_xy[local], s.out_vis[local], s.led_ncc[local] = p, 1.0, like
    s.led = local
    stats["lead_frames"] += 1
    if board is not None:
        board.trust(s, local)


def _find_again(image, s, g1, pred, w, h, half):
    """A strict step from the run's last verified patch to the company's prediction ``pred`` on
    ``g1``: (position, similarity to the anchor) where it lands within :data:`FOUND_PX` of it and
    passes every check a lead step passes, else None."""
    g0, p0 = image(s.absolute(s.led)), s.out_xy[s.led][None]
    p1, ok = _steps(g0, g1, p0, pred[None])
    ok &= window_inside(p1, width=w, height=h, half=half) & (np.linalg.norm(p1 - pred, axis=1) <= FOUND_PX)
    if not ok[0]:
        return None
    like = _like_the_point(image, s, g0, p0[0], g1, p1[0], pred)
    return None if like is None else (p1[0], like)


class _Company:
    """Every frame the strict steps verified, of every point (the anchors too), so that a run
    they lose can be carried by the points that moved with it (:mod:`pipstrack.engine.comotion`)."""

    def __init__(self, segments):
        frames = [f for s in segments for f in (s.start, s.end)]
        self.lo = min(frames)
        T, N = max(frames) - self.lo + 1, max(s.point for s in segments) + 1
        self.xy = np.full((T, N, 2), np.nan)
        self.trusted = np.zeros((T, N), bool)
        for s in segments:
            self.trust(s, 0)

    def trust(self, s, local: int) -> None:
        row = s.absolute(local) - self.lo
        self.xy[row, s.point], self.trusted[row, s.point] = s.out_xy[local], True

    def neighbours(self, s) -> np.ndarray:
        """The points that moved with run ``s``'s point on the verified frames behind its last one."""
        return comotion.comoving_neighbours(self.xy, self.trusted, s.point, s.absolute(s.led) - self.lo, -s.step)

    def predict(self, s, frame: int, nb):
        """Where ``nb`` carry the point from its last verified frame to ``frame``, or None where
        fewer than :data:`COMPANY_MIN` of them are verified there, or they determine less than a
        similarity, or their own motion is no such model's (they miss it by more than
        :data:`COMPANY_MISS`)."""
        row = frame - self.lo
        if self.trusted[row, nb].sum() < COMPANY_MIN:
            return None
        miss = np.full(1, np.inf)
        p, model = comotion._predict_from(self.xy, self.trusted, s.point, s.absolute(s.led) - self.lo, [row], nb, miss)
        if model[0] < COMPANY_MODEL or not miss[0] <= COMPANY_MISS:
            return None
        return p[0]


# A run the strict steps lost is carried on by its company instead of the network while at least
# this many points that moved with it (verified by the steps themselves) are verified ...
COMPANY_MIN = 4
# ... and determine a model at least this strong (2: similarity; see comotion._predict_from) ...
COMPANY_MODEL = 2
# ... that misses their own motion by at most this (px, median).
COMPANY_MISS = 1.0
FOUND_PX = 1.5  # a strict step from the last verified patch finds it again this close to the prediction (px)


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
