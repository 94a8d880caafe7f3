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
    # The nearest co-moving points trustworthy on each frame: the nearest of all may be hidden
    # too (under the same occluder), farther ones still see the surface move.
    frames = np.asarray(frames, int)
    use = _nearest_seen(trusted[frames][:, neighbours])
    seen = use.any(1)
    carried, models, misses = np.zeros((len(frames), 2)), np.zeros(len(frames), int), np.zeros(len(frames))
    if seen.any():
        carried[seen], models[seen], misses[seen] = _carry_many(
            xy[r, n], xy[r, neighbours], xy[frames[seen]][:, neighbours], use[seen]
        )
    done, strength = [], 0  # (frame, position, how well it was carried) so far, away from r
    for k, t in enumerate(frames.tolist()):
        if not seen[k]:
            continue
        p, m, miss = carried[k], int(models[k]), float(misses[k])
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
    """The first :data:`NEIGHBOURS` of the (nearest first) neighbours ``seen`` on a frame (or on
    each frame: rows)."""
    return seen & (np.cumsum(seen, axis=-1) <= NEIGHBOURS)


def _carry(p_r, q_r, q_t) -> tuple[np.ndarray, int, float]:
    """Where point ``p_r`` goes when points ``q_r`` (K,2) go to ``q_t``: the strongest model they
    determine (3 affine, 2 similarity, 1 translation; see :func:`_predict_from`), and how far it
    misses their own motion (median, px)."""
    p, model, miss = _carry_many(p_r, q_r, np.asarray(q_t)[None], np.ones((1, len(q_r)), bool))
    return p[0], int(model[0]), float(miss[0])


def _carry_many(p_r, q_r, q_t, use) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_carry` for F frames at once: ``q_t`` (F,K,2) where the points ``q_r`` (K,2) went on
    each, ``use`` (F,K) which of them count there (at least one per frame). Returns (F,2)
    positions, (F,) models and (F,) misses. Why batched: a fill carries a point over every frame
    of a gap from the same reference, each a fit of at most a dozen neighbours, and fitted one by
    one numpy's per-call overhead was most of the co-motion's time."""
    p_r = np.asarray(p_r, np.float64)
    use = np.asarray(use, bool)
    F, K = use.shape
    count = use.sum(1)
    q_r = np.asarray(q_r, np.float64)
    q_t = np.where(use[..., None], q_t, 0.0)  # unused neighbours (NaN where unseen) weigh nothing
    d0 = np.where(use[..., None], q_r[None] - p_r, 0.0)  # (F,K,2) models are fitted about the point
    norm = np.linalg.norm(d0, axis=2)
    scale = (norm * use).sum(1) / np.maximum(count, 1) + 1.0  # keeps the normal equations well scaled
    d = d0 / scale[:, None, None]
    w0 = np.where(use, 1.0 / (norm + 8.0), 0.0)
    motion = np.where(use[..., None], q_t - q_r[None], 0.0)
    spread = (count >= 4) & _spread_many(d, use)  # points near a line say nothing across it
    p = p_r + (w0[..., None] * motion).sum(1) / w0.sum(1)[:, None]  # translation, the fallback
    model = np.ones(F, int)
    miss = _median_used(np.linalg.norm(motion - (p - p_r)[:, None], axis=2), use)
    fitted = np.zeros(F, bool)
    for rank in (3, 2):  # affine, then similarity where the affine cannot be fitted
        want = ~fitted & (count * 2 >= (7 if rank == 3 else 5)) & (spread if rank == 3 else True)
        if not want.any():
            continue
        rows_x, rows_y = _design(d[want], 6) if rank == 3 else _similarity_design(d[want])
        params, ok = _robust_fit(rows_x, rows_y, motion[want], w0[want])
        idx = np.flatnonzero(want)[ok]
        params, rows_x, rows_y = params[ok], rows_x[ok], rows_y[ok]
        const = [2, 5] if rank == 3 else [2, 3]
        p[idx] = p_r + params[:, const]
        model[idx] = rank
        res = np.hypot(
            np.einsum("fkp,fp->fk", rows_x, params) - motion[idx, :, 0],
            np.einsum("fkp,fp->fk", rows_y, params) - motion[idx, :, 1],
        )
        miss[idx] = _median_used(res, use[idx])
        fitted[idx] = True
    want = fitted & spread & (count * 2 >= 9)
    if HOMOGRAPHY and want.any():
        # perspective (a camera turning, a plane receding): u = (h11 x + h12 y + h13) / (h31 x +
        # h32 y + 1) about the point, written linearly in the h's (u, v: the neighbours' new
        # offsets from the point's old position, px); the point itself goes to (h13, h23). Only
        # where it explains the neighbours clearly better than the fit above: with noisy or
        # non-rigid motion its two extra terms fit the noise and carry the point by it.
        dw, u = d[want], np.where(use[want][..., None], q_t[want] - p_r, 0.0)
        rows_x, rows_y = _design(dw, 8)
        rows_x[..., 6:] = -dw * u[..., :1]
        rows_y[..., 6:] = -dw * u[..., 1:]
        params, ok = _robust_fit(rows_x, rows_y, u, w0[want])
        den = 1.0 + np.einsum("fkc,fc->fk", dw, params[:, 6:8])
        ok &= ((den > 0.5) | ~use[want]).all(1)  # no neighbour behind the horizon: a sane perspective
        den = np.where(use[want], den, 1.0)
        fit_x = (np.einsum("fkc,fc->fk", dw, params[:, 0:2]) + params[:, 2:3]) / den
        fit_y = (np.einsum("fkc,fc->fk", dw, params[:, 3:5]) + params[:, 5:6]) / den
        p_miss = _median_used(np.hypot(fit_x - u[..., 0], fit_y - u[..., 1]), use[want])
        idx = np.flatnonzero(want)
        better = ok & (p_miss < PERSPECTIVE_GAIN * miss[idx] - 0.05)
        idx, params = idx[better], params[better]
        p[idx], model[idx], miss[idx] = p_r + params[:, [2, 5]], 4, p_miss[better]
    return p, model, miss


def _median_used(values: np.ndarray, use: np.ndarray) -> np.ndarray:
    """(F,) median of each row of ``values`` (F,K) over its ``use`` entries."""
    v = np.sort(np.where(use, values, np.inf), axis=1)  # the used ones first
    c = use.sum(1)
    rows = np.arange(len(v))
    return (v[rows, np.maximum(c - 1, 0) // 2] + v[rows, c // 2 - (c == 0)]) / 2


def _design(d: np.ndarray, unknowns: int) -> tuple[np.ndarray, np.ndarray]:
    """The x and y rows of an affine fit about the point (u = a x + b y + tx, v = c x + d y + ty),
    ``unknowns`` columns wide (the perspective's two extra ones left zero for the caller); ``d``
    (F,K,2) the neighbours' offsets from the point, rows (F,K,unknowns)."""
    rows_x, rows_y = np.zeros(d.shape[:2] + (unknowns,)), np.zeros(d.shape[:2] + (unknowns,))
    rows_x[..., 0:2], rows_x[..., 2] = d, 1.0
    rows_y[..., 3:5], rows_y[..., 5] = d, 1.0
    return rows_x, rows_y


def _similarity_design(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of a similarity fit (zoom and rotation): u = a x - b y + tx, v = b x + a y + ty."""
    rows_x, rows_y = np.zeros(d.shape[:2] + (4,)), np.zeros(d.shape[:2] + (4,))
    rows_x[..., 0], rows_x[..., 1], rows_x[..., 2] = d[..., 0], -d[..., 1], 1.0
    rows_y[..., 0], rows_y[..., 1], rows_y[..., 3] = d[..., 1], d[..., 0], 1.0
    return rows_x, rows_y


def _spread_many(d: np.ndarray, use: np.ndarray) -> np.ndarray:
    """(F,) whether each frame's used points ``d`` (F,K,2) spread in two directions: the thinner
    side of their scatter at least a fifth of the wider one (an affine fit from points near a
    line extrapolates wildly). The 2x2 scatter's eigenvalues in closed form."""
    n = np.maximum(use.sum(1), 1)
    c = np.where(use[..., None], d - (d * use[..., None]).sum(1, keepdims=True) / n[:, None, None], 0.0)
    sxx, syy, sxy = (c[..., 0] ** 2).sum(1), (c[..., 1] ** 2).sum(1), (c[..., 0] * c[..., 1]).sum(1)
    half, root = (sxx + syy) / 2, np.hypot((sxx - syy) / 2, sxy)
    return (half - root) >= (MIN_SPREAD**2) * (half + root)


def _robust_fit(rows_x, rows_y, motion, w, rounds: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares of ``motion`` (F,K,2) on a linear model whose x and y equations are
    ``rows_x`` and ``rows_y`` (F,K,p), F fits at once, a neighbour the fit does not explain (half
    covered, a wrong match) weighed down each round. Returns (F,p) parameters and (F,) whether
    the neighbours determine them (where a later round is ill-conditioned, the round before's)."""
    F, K, P = rows_x.shape
    D = np.concatenate((rows_x, rows_y), axis=1)  # (F,2K,P)
    Dt = D.transpose(0, 2, 1)
    y = np.concatenate((motion[..., 0], motion[..., 1]), axis=1)[..., None]  # (F,2K,1)
    params = np.zeros((F, P, 1))
    ok = np.zeros(F, bool)
    live = np.ones(F, bool)
    w = np.asarray(w, np.float64)
    for _ in range(rounds):
        Dw_t = Dt * np.concatenate((w, w), axis=1)[:, None, :]
        A = Dw_t @ D
        s = np.linalg.svd(A, compute_uv=False)  # what np.linalg.cond computes, without its overhead
        live &= (s[:, -1] > 0) & (s[:, 0] <= 1e8 * s[:, -1])
        if not live.any():
            break
        if not live.all():  # the ill-conditioned keep their last round's; solve the rest alone
            A = np.where(live[:, None, None], A, np.eye(P))
        params = np.where(live[:, None, None], np.linalg.solve(A, Dw_t @ y), params)
        ok |= live
        r = (D @ params - y)[..., 0]
        w = w / (1.0 + (np.hypot(r[:, :K], r[:, K:]) / 0.5) ** 2)
    return params[..., 0], ok


# A verified position may depart this far (px) from where its co-moving neighbours carry it, plus
# AGREE_RATE px per frame from the reference (what an affine fit of the neighbours' motion misses) ...
AGREE_PX = 2.5
AGREE_RATE = 0.25
AGREE_MISS = 3.0  # ... plus this many times how far the fit misses the neighbours themselves
AGREE_HOP = 4  # ... from a frame at most this many frames back where it agreed (then that frame is the reference)
# ... plus the point's motion from the reference times its distance to its nearest neighbour over
# this (px): a fit of far neighbours' motion misses a point's by more (perspective, parallax)
AGREE_FAR = 200.0


def _departs(xy, ok, n, r, frames, nb) -> np.ndarray:
    """(len(frames),) whether point ``n`` on each of ``frames`` is further from where neighbours
    ``nb`` carry it from ``r`` than :data:`AGREE_PX` and the rest allow, whichever one neighbour
    is left out (one wrong neighbour, itself slid onto the occluder, must not decide: with few
    neighbours an affine fit absorbs it). The frames are judged together: fitted one by one,
    numpy's per-call overhead was most of the check's time."""
    frames = np.asarray(frames, int)
    use = _nearest_seen(ok[frames][:, nb])  # (B,K) each frame's company
    departs = use.any(1)  # no company there: no model, nothing departs
    rows = np.flatnonzero(departs)
    masks = use[rows]
    for _ in range(2):  # all its company, then each time one neighbour left out
        if not len(rows):
            break
        p, _, miss = _carry_many(xy[r, n], xy[r, nb], xy[frames[rows]][:, nb], masks)
        # where the neighbours' own motion is no model's (a deforming surface), the point's need not be either
        allowed = AGREE_PX + AGREE_RATE * np.minimum(np.abs(frames[rows] - r), HISTORY) + AGREE_MISS * miss
        nearest = xy[r, nb[masks.argmax(1)]]  # the nearest neighbour that counts
        allowed += np.linalg.norm(nearest - xy[r, n], axis=1) / AGREE_FAR * np.linalg.norm(p - xy[r, n], axis=1)
        departs[rows[np.linalg.norm(xy[frames[rows], n] - p, axis=1) <= allowed]] = False
        left_out = [(b, np.flatnonzero(use[b])) for b in np.flatnonzero(departs)]
        rows = np.array([b for b, kept in left_out if len(kept) > 1 for _ in kept], int)
        masks = np.array([use[b] & (np.arange(len(nb)) != k) for b, kept in left_out if len(kept) > 1 for k in kept])
    return departs


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
            chain = (good[good > s] if step == 1 else good[good < s][::-1]).tolist()
            r, nb = s, company(s)
            verdict = {}  # frame -> whether it departs from (r, nb): judged a few frames at a time
            for i, t in enumerate(chain):
                if fixed[t, n]:  # a keyframe is where the point is: the new reference
                    r, nb, verdict = t, company(t, -step), {}
                    continue
                if len(nb) and t not in verdict:
                    # the frames up to where the reference may move on, judged together (a
                    # neighbour's trust does not change while this point is judged)
                    ahead = []
                    for u in chain[i:]:
                        if fixed[u, n]:
                            break
                        ahead.append(u)
                        if abs(u - r) >= AGREE_HOP:
                            break
                    verdict = dict(zip(ahead, _departs(xy, ok, n, r, ahead, nb).tolist()))
                if len(nb) and verdict[t]:
                    if doubt is None or doubt(t, n):
                        bad[t, n], ok[t, n] = True, False
                        continue
                    if spared is not None:
                        spared[t, n] = True
                if abs(t - r) >= AGREE_HOP or not len(nb):
                    # an agreeing frame becomes the reference, where its company can be told
                    near = company(t, -step)
                    if len(near):
                        r, nb, verdict = t, near, {}
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
