"""Occlusion fill from co-moving points (docs/tracking.md).

Why: behind an occluder a point's own pixels say nothing, and a small network's guess there is
rough; worse, it is often dragged along by the occluder and never comes back. But other points of
the same job that sat on the same surface keep moving with it while they stay visible. So for
every frame where a point has no trustworthy position, the local motion of its co-moving
neighbours (points whose offset to it held steady on the frames around its last trustworthy one)
is fitted between that reference frame and this frame (affine, or a similarity or a translation
where the neighbours cannot determine more), and applied to the point. Gaps with a trustworthy
frame on both sides blend the predictions from either side in time.

A point with no co-moving neighbour (a lone marker, or one whose neighbours are all hidden too)
gets no prediction here, and keeps the network's estimate.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

HISTORY = 6  # frames either side of the reference frame that decide who moves with the point
MIN_SHARED = 2  # trusted frames (besides the reference) a neighbour must share with the point
DRIFT_PX = 1.0  # offset change allowed between co-moving points (px) ...
DRIFT_RATE = 0.015  # ... plus this fraction of their distance per frame (zoom, rotation, perspective)
MIN_SPREAD = 0.2  # an affine fit needs neighbours this far from lying on a line (thinner / wider scatter)
NEIGHBOURS = 12  # nearest co-moving points used on each frame (of those trustworthy there)
CHAIN_BACK = 8  # frames back a chained fill may build on (the latest that carries it best)
HOMOGRAPHY = True  # five or more spread neighbours: a perspective model (else affine, ...)
PERSPECTIVE_GAIN = 0.5  # ... where it misses the neighbours by at most this share of the affine's miss


def comoving_neighbours(xy: np.ndarray, trusted: np.ndarray, n: int, r: int, side: int = 0) -> np.ndarray:
    """Indices of the points that moved with point ``n`` around its trusted frame ``r``, nearest
    first: trusted on frame ``r`` and on most of ``n``'s trusted frames within :data:`HISTORY` of
    it, with an offset to ``n`` that drifted less than the tolerance there. ``side`` -1 or 1: only
    the frames before or after ``r`` decide (0: both)."""
    T, N = trusted.shape
    lo, hi = max(0, r - HISTORY), min(T, r + HISTORY + 1)
    if side:
        lo, hi = (lo, r + 1) if side < 0 else (r, hi)
    hist = np.nonzero(trusted[lo:hi, n])[0] + lo
    hist = hist[hist != r]
    if len(hist) < MIN_SHARED:
        return np.zeros(0, int)  # nothing says who moved with it: no guess beats a wrong one
    cand = trusted[r].copy()
    cand[n] = False
    offset_r = xy[r, n] - xy[r]  # (N,2)
    dist = np.linalg.norm(offset_r, axis=1)
    shared = trusted[hist]  # (h,N)
    drift = np.linalg.norm((xy[hist, n][:, None, :] - xy[hist]) - offset_r[None], axis=2)  # (h,N)
    drift = np.where(shared, drift, 0.0)
    enough = shared.sum(0) >= max(MIN_SHARED, int(np.ceil(0.7 * len(hist))))
    allowed = DRIFT_PX + DRIFT_RATE * np.abs(hist - r)[:, None] * dist[None]
    steady = (drift <= allowed).all(0)
    ok = np.nonzero(cand & enough & steady & np.isfinite(dist))[0]
    return ok[np.argsort(dist[ok], kind="stable")]


def _predict_from(xy, trusted, n, r, frames, neighbours, residuals=None, chain=False) -> tuple[np.ndarray, np.ndarray]:
    """(len(frames),2) position of point ``n`` on ``frames`` carried from frame ``r`` by the local
    motion of ``neighbours``: affine from three or more spread in two directions, similarity
    (zoom, rotation) from three or more near a line, translation from fewer; NaN where none is
    trusted. Also (len(frames),) which model it was: 3 affine, 2 similarity, 1 translation, 0 none.
    ``residuals``, a (len(frames),) array if given, receives how far the model misses the
    neighbours' own motion (median, px): how well their motion is a model's at all.
    ``chain`` (``frames`` in order away from ``r``): where fewer neighbours are seen than on the
    frame before, so that only a weaker model fits from ``r``, the point is carried on from its
    position on the frame before instead, by the neighbours seen on both: a short step of a weak
    model misses by less than a long one (a neighbour hidden halfway through a gap made the fill
    jump by a pixel)."""
    out = np.full((len(frames), 2), np.nan)
    model = np.zeros(len(frames), int)
    if len(neighbours) == 0:
        return out, model
    done, strength = [], 0  # (frame, position, how well it was carried) so far, away from r
    for k, t in enumerate(frames):
        # The nearest co-moving points trustworthy on this frame: the nearest of all may be
        # hidden too (under the same occluder), farther ones still see the surface move.
        use = _nearest_seen(trusted[t, neighbours])
        if not use.any():
            continue
        p, m, miss = _carry(xy[r, n], xy[r, neighbours[use]], xy[t, neighbours[use]])
        quality = m
        if chain and done and m < strength:
            # Carried on from a recent frame instead: the latest one from which the neighbours
            # seen on both carry it best (a frame only a translation reached, most neighbours
            # hidden there for a moment, is not what later frames build on).
            best = None
            for s_, p_s, q_s in reversed(done[-CHAIN_BACK:]):
                if best is not None and q_s <= best[1]:
                    continue  # an earlier frame carried no better than the one chosen
                both = _nearest_seen(trusted[s_, neighbours] & trusted[t, neighbours])
                if both.any():
                    nb = neighbours[both]
                    c_p, c_m, c_miss = _carry(p_s, xy[s_, nb], xy[t, nb])
                    if best is None or min(c_m, q_s) > best[1]:
                        best = (c_p, min(c_m, q_s), c_miss)
            if best is not None:
                p, quality, miss = best
                m = strength
        strength = max(strength, m)
        out[k], model[k] = p, m
        done.append((t, p, quality))
        if residuals is not None:
            residuals[k] = miss
    return out, model


def _nearest_seen(seen: np.ndarray) -> np.ndarray:
    """The first :data:`NEIGHBOURS` of the (nearest first) neighbours ``seen`` on a frame."""
    return seen & (np.cumsum(seen) <= NEIGHBOURS)


def _carry(p_r, q_r, q_t) -> tuple[np.ndarray, int, float]:
    """Where point ``p_r`` goes when points ``q_r`` (K,2) go to ``q_t``: the strongest model they
    determine (3 affine, 2 similarity, 1 translation; see :func:`_predict_from`), and how far it
    misses their own motion (median, px)."""
    d = q_r - p_r  # models are fitted about the point itself: its motion is their constant term
    scale = float(np.mean(np.linalg.norm(d, axis=1))) + 1.0  # keeps the normal equations well scaled
    d = d / scale
    w0 = 1.0 / (np.linalg.norm(d, axis=1) * scale + 8.0)
    motion = q_t - q_r  # (k,2)
    spread = len(d) >= 4 and _spread(d)  # points near a line say nothing across it (affine needs 4)
    perspective = None
    if HOMOGRAPHY and len(d) * 2 >= 9 and spread:
        # perspective (a camera turning, a plane receding): u = (h11 x + h12 y + h13) / (h31 x +
        # h32 y + 1) about the point, written linearly in the h's (u, v: the neighbours' new
        # offsets from the point's old position, px); the point itself goes to (h13, h23)
        u = q_t - p_r
        rows_x, rows_y = _design(d, 8)
        rows_x[:, 6:] = -d * u[:, :1]
        rows_y[:, 6:] = -d * u[:, 1:]
        params = _robust_fit(rows_x, rows_y, u, w0)
        if params is not None:
            den = 1.0 + d @ params[6:8]
            if (den > 0.5).all():  # no neighbour behind the horizon: a sane perspective
                fit_x = (d @ params[0:2] + params[2]) / den
                fit_y = (d @ params[3:5] + params[5]) / den
                miss = float(np.median(np.hypot(fit_x - u[:, 0], fit_y - u[:, 1])))
                perspective = (p_r + params[[2, 5]], 4, miss)
    for const, rank in (((2, 5), 3), ((2, 3), 2)):  # affine, then similarity
        unknowns = 6 if rank == 3 else 4
        if len(d) * 2 < unknowns + 1:  # at least one equation more than unknowns
            continue
        if rank == 3 and not spread:
            continue
        if rank == 3:
            rows_x, rows_y = _design(d, 6)
        else:  # u = a x - b y + tx, v = b x + a y + ty
            rows_x, rows_y = np.zeros((len(d), 4)), np.zeros((len(d), 4))
            rows_x[:, 0], rows_x[:, 1], rows_x[:, 2] = d[:, 0], -d[:, 1], 1.0
            rows_y[:, 0], rows_y[:, 1], rows_y[:, 3] = d[:, 1], d[:, 0], 1.0
        params = _robust_fit(rows_x, rows_y, motion, w0)
        if params is not None:
            miss_x, miss_y = rows_x @ params - motion[:, 0], rows_y @ params - motion[:, 1]
            fitted = (p_r + params[list(const)], rank, float(np.median(np.hypot(miss_x, miss_y))))
            # perspective only where it explains the neighbours clearly better: with noisy or
            # non-rigid motion its two extra terms fit the noise and carry the point by it
            if perspective is not None and perspective[2] < PERSPECTIVE_GAIN * fitted[2] - 0.05:
                return perspective
            return fitted
    shift = (w0[:, None] * motion).sum(0) / w0.sum()
    return p_r + shift, 1, float(np.median(np.linalg.norm(motion - shift, axis=1)))


def _design(d: np.ndarray, unknowns: int) -> tuple[np.ndarray, np.ndarray]:
    """The x and y rows of an affine fit about the point (u = a x + b y + tx, v = c x + d y + ty),
    ``unknowns`` columns wide (the perspective's two extra ones left zero for the caller)."""
    rows_x, rows_y = np.zeros((len(d), unknowns)), np.zeros((len(d), unknowns))
    rows_x[:, 0:2], rows_x[:, 2] = d, 1.0
    rows_y[:, 3:5], rows_y[:, 5] = d, 1.0
    return rows_x, rows_y


def _spread(d: np.ndarray) -> bool:
    """Whether points spread in two directions: the thinner side of their scatter at least
    a fifth of the wider one (an affine fit from points near a line extrapolates wildly)."""
    ev = np.linalg.eigvalsh(np.cov((d - d.mean(0)).T))
    return bool(ev[0] >= (MIN_SPREAD**2) * ev[1])


def _robust_fit(rows_x, rows_y, motion, w, rounds: int = 3):
    """Weighted least squares of ``motion`` (k,2) on a linear model whose x and y equations are
    ``rows_x`` and ``rows_y`` (k,p), a neighbour the fit does not explain (half covered, a wrong
    match) weighed down each round; None when the neighbours cannot determine it."""
    D = np.concatenate((rows_x, rows_y))
    y = np.concatenate((motion[:, 0], motion[:, 1]))
    params = None
    for _ in range(rounds):
        Dw = D * np.concatenate((w, w))[:, None]
        A = Dw.T @ D
        s = np.linalg.svd(A, compute_uv=False)  # what np.linalg.cond computes, without its overhead
        if not s[-1] > 0 or s[0] / s[-1] > 1e8:
            return params
        params = np.linalg.solve(A, Dw.T @ y)
        r = (D @ params - y).reshape(2, -1)
        w = w / (1.0 + (np.hypot(r[0], r[1]) / 0.5) ** 2)
    return params


# A verified position may depart this far (px) from where its co-moving neighbours carry it, plus
# AGREE_RATE px per frame from the reference (what an affine fit of the neighbours' motion misses) ...
AGREE_PX = 2.5
AGREE_RATE = 0.25
AGREE_MISS = 3.0  # ... plus this many times how far the fit misses the neighbours themselves
AGREE_HOP = 4  # ... from a frame at most this many frames back where it agreed (then that frame is the reference)
# ... plus the point's motion from the reference times its distance to its nearest neighbour over
# this (px): a fit of far neighbours' motion misses a point's by more (perspective, parallax)
AGREE_FAR = 200.0


def _departs(xy, ok, n, r, t, nb) -> bool:
    """Whether point ``n`` on frame ``t`` is further from where neighbours ``nb`` carry it from
    ``r`` than :data:`AGREE_PX` and the rest allow, whichever one neighbour is left out (one
    wrong neighbour, itself slid onto the occluder, must not decide: with few neighbours an
    affine fit absorbs it)."""
    use = nb[ok[t, nb]][:NEIGHBOURS]
    for leave in range(-1, len(use) if len(use) > 1 else 0):
        company = use if leave < 0 else np.delete(use, leave)
        miss = np.zeros(1)
        p, model = _predict_from(xy, ok, n, r, [t], company, residuals=miss)
        if not model[0]:
            return False
        # where the neighbours' own motion is no model's (a deforming surface), the point's need not be either
        allowed = AGREE_PX + AGREE_RATE * min(abs(t - r), HISTORY) + AGREE_MISS * miss[0]
        allowed += np.linalg.norm(xy[r, company[0]] - xy[r, n]) / AGREE_FAR * np.linalg.norm(p[0] - xy[r, n])
        if np.linalg.norm(xy[t, n] - p[0]) <= allowed:
            return False
    return True


def departures(
    xy: np.ndarray,
    trusted: np.ndarray,
    fixed: np.ndarray,
    reach: float = np.inf,
    doubt=None,
    check=None,
    points=None,
    spared=None,
) -> np.ndarray:
    """(T,N) bool: the ``trusted`` frames (other than the ``fixed`` ones, keyframes) where a point
    is not where the points that moved with it carry it.

    Why: a patch step verifies that the patch looks like the point, not that it is the point; as
    an occluder arrives, the patch half covered, a step can slide onto the occluder and follow it
    with a good score. The surface around the point does not go with it. Along each chain away
    from the point's first keyframe, each trusted frame is compared with the prediction of its
    co-moving neighbours (chosen on the frames behind the reference, so not on the frames being
    judged) from the last frame that agreed; only neighbours within ``reach`` px count (far ones
    say little about a surface that deforms); where the point has no company nothing is judged.
    ``doubt(t, n)``, if given, has the last word on a frame that departs (the refinement asks
    whether the patch there still looks much like the point's on its keyframe: a deforming surface
    departs from any fit of its neighbours' motion, yet its patch still looks like the point).
    ``check()``, if given, is called before each point (it may raise to stop the work);
    ``points``, if given, are the only ones judged (the others still count as company).
    ``spared``, a (T,N) bool array if given, is set where a frame departed but ``doubt`` spared it."""
    T, N = trusted.shape
    xy = np.asarray(xy, np.float64)
    bad = np.zeros((T, N), bool)
    ok = trusted.copy()  # trusted and not found departing (so far)
    for n in range(N) if points is None else points:
        if check is not None:
            check()
        good = np.flatnonzero(trusted[:, n])
        if len(good) < 2 or N < 2:
            continue
        keys = np.flatnonzero(fixed[:, n])
        s = int(keys[0]) if len(keys) else int(good[0])

        def company(t, side=0):
            nb = comoving_neighbours(xy, ok, n, t, side)
            return nb[np.linalg.norm(xy[t, nb] - xy[t, n], axis=1) <= reach]

        for step in (1, -1):
            chain = good[good > s] if step == 1 else good[good < s][::-1]
            r, nb = s, company(s)
            for t in chain.tolist():
                if fixed[t, n]:  # a keyframe is where the point is: the new reference
                    r, nb = t, company(t, -step)
                    continue
                if len(nb) and _departs(xy, ok, n, r, t, nb):
                    if doubt is None or doubt(t, n):
                        bad[t, n], ok[t, n] = True, False
                        continue
                    if spared is not None:
                        spared[t, n] = True
                if abs(t - r) >= AGREE_HOP or not len(nb):
                    # an agreeing frame becomes the reference, where its company can be told
                    near = company(t, -step)
                    if len(near):
                        r, nb = t, near
    return bad


def comotion_fill(xy: np.ndarray, trusted: np.ndarray, check: Callable[[], None] | None = None) -> np.ndarray:
    """(T,N,2) predictions for every frame of every point that is not ``trusted`` (T,N bool),
    from its co-moving neighbours; NaN where there is none (and on trusted frames).
    ``check``, if given, is called before each point (a cancel raises there: hundreds of
    points take seconds)."""
    T, N = trusted.shape
    xy = np.asarray(xy, np.float64)
    pred = np.full((T, N, 2), np.nan)
    for n in range(N):
        if check is not None:
            check()
        good = np.nonzero(trusted[:, n])[0]
        if len(good) == 0:
            continue
        holes = np.nonzero(~trusted[:, n] & np.isfinite(xy[:, n, 0]))[0]
        if len(holes) == 0:
            continue
        # Each hole frame's trusted frame before (a) and after (b), -1 where there is none.
        after_idx = np.searchsorted(good, holes)
        a = np.where(after_idx > 0, good[np.maximum(after_idx - 1, 0)], -1)
        b = np.where(after_idx < len(good), good[np.minimum(after_idx, len(good) - 1)], -1)
        side = {}
        for ref in np.unique(np.r_[a, b]):
            if ref < 0:
                continue
            # the hole frames this reference carries, in order away from it, and the gaps' other
            # verified ends (where the prediction's miss is known)
            ends = np.r_[b[(a == ref) & (b >= 0)], a[(b == ref) & (a >= 0)]]
            span = np.unique(np.r_[holes[(a == ref) | (b == ref)], ends])
            after, before = span[span > ref], span[span < ref][::-1]
            nb = comoving_neighbours(xy, trusted, n, ref)
            for frames in (after, before):
                if len(frames):
                    xy_ref, model_ref = _predict_from(xy, trusted, n, ref, frames, nb, chain=True)
                    side.setdefault(ref, {}).update(zip(frames.tolist(), zip(xy_ref, model_ref)))
        none = (np.full(2, np.nan), 0)
        for t, ra, rb in zip(holes.tolist(), a, b):
            (pa, ma), (pb, mb) = side[ra][t] if ra >= 0 else none, side[rb][t] if rb >= 0 else none
            if ma and ma == mb:
                w = (t - ra) / (rb - ra)  # the nearer reference weighs more
                pred[t, n] = (1 - w) * pa + w * pb
            elif ma or mb:  # the side whose neighbours determine more of the motion ...
                ref, other, p = (ra, rb, pa) if ma > mb else (rb, ra, pb)
                if other >= 0:  # ... its miss on the gap's other, verified end closed in time
                    q, mq = side[ref][int(other)]
                    if mq:
                        p = p + abs(t - ref) / abs(other - ref) * (xy[other, n] - q)
                pred[t, n] = p
    return pred
