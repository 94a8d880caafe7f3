"""Tracking metrics as TAP-Vid defines them, plus the errors a compositor asks about.

Positions are rescaled to 256x256 before the thresholds (1, 2, 4, 8, 16 px) apply, and
each point's query frame is left out, as in TAP-Vid. Added: median pixel error (at the
clip's own resolution) on visible frames, and on frames where the point is hidden but
inside the image (how well occlusions are filled).
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = (1, 2, 4, 8, 16)


def tapvid_metrics(pred_xy, pred_visible, gt_xy, gt_visible, size, query_frames=None) -> dict:
    """All arrays (T,N,...) for one clip; ``size`` (H,W) of the clip the coordinates are in."""
    pred_xy = np.asarray(pred_xy, np.float64)
    gt_xy = np.asarray(gt_xy, np.float64)
    pred_visible = np.asarray(pred_visible, bool)
    gt_visible = np.asarray(gt_visible, bool)
    T, N = gt_visible.shape
    H, W = size
    evaluated = np.ones((T, N), bool)
    if query_frames is not None:
        evaluated[np.asarray(query_frames, int), np.arange(N)] = False
    scale = np.array([256.0 / W, 256.0 / H])
    dist256 = np.linalg.norm((pred_xy - gt_xy) * scale, axis=-1)
    dist = np.linalg.norm(pred_xy - gt_xy, axis=-1)
    dist256 = np.where(np.isnan(dist256), np.inf, dist256)

    out = {}
    vis_eval = gt_visible & evaluated
    out["occlusion_accuracy"] = float(np.mean((pred_visible == gt_visible)[evaluated])) if evaluated.any() else np.nan
    within, jaccards = [], []
    for t in THRESHOLDS:
        close = dist256 < t
        frac = float(np.sum(close & vis_eval) / max(vis_eval.sum(), 1))
        out[f"pts_within_{t}"] = frac
        within.append(frac)
        tp = np.sum(close & pred_visible & vis_eval)
        fp = np.sum(pred_visible & evaluated & (~gt_visible | ~close))
        jacc = tp / max(np.sum(vis_eval) + fp, 1)
        out[f"jaccard_{t}"] = float(jacc)
        jaccards.append(jacc)
    out["delta_avg"] = float(np.mean(within))
    out["average_jaccard"] = float(np.mean(jaccards))
    in_frame = (gt_xy[..., 0] >= 0) & (gt_xy[..., 0] <= W - 1) & (gt_xy[..., 1] >= 0) & (gt_xy[..., 1] <= H - 1)
    occ = ~gt_visible & in_frame & evaluated
    out["median_err_visible"] = float(np.nanmedian(dist[vis_eval])) if vis_eval.any() else np.nan
    out["median_err_occluded"] = float(np.nanmedian(dist[occ])) if occ.any() else np.nan
    # Where the tracker itself says the point is seen (and it is): its precision on the frames it
    # tracks, the figure to put beside a tracker that gives up on points.
    claimed = vis_eval & pred_visible
    out["median_err_claimed"] = float(np.nanmedian(dist[claimed])) if claimed.any() else np.nan
    out.update(per_track_summary(dist, vis_eval))
    # Wrong while claiming to see it: tracks more than LOST_PX off on a frame the method reports
    # as visible (and the point is) -- the failure an artist cannot see in the tool.
    d_claimed = errors_where(dist, claimed).max(axis=0)
    tracked_any = vis_eval.any(axis=0)
    out["silent_tracks"] = float(np.mean(d_claimed[tracked_any] > LOST_PX)) if tracked_any.any() else np.nan
    # Back after an occlusion: the error on visible frames after a point's first hidden in-frame
    # frame (per-frame median over the points that were hidden and came back).
    after = np.zeros((T, N), bool)
    hidden = occ.copy()
    for n in np.flatnonzero(hidden.any(axis=0)):
        first = int(np.flatnonzero(hidden[:, n])[0])
        after[first + 1 :, n] = vis_eval[first + 1 :, n]
    out["median_err_after_occlusion"] = float(np.nanmedian(dist[after])) if after.any() else np.nan
    return out


LOST_PX = 8.0  # a track this far off on any visible frame is lost, whatever its median says


def errors_where(dist: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """(T,N) errors on ``frames`` (an untracked position, NaN, counts as infinitely off) and -inf
    elsewhere: a track's maximum over time is its worst error on those frames."""
    return np.where(frames, np.nan_to_num(dist, nan=np.inf), -np.inf)


def per_track_summary(dist: np.ndarray, visible: np.ndarray) -> dict:
    """Medians hide failures: the worst error of each track on its visible frames (median over
    tracks) and the share of tracks more than ``LOST_PX`` off on at least one visible frame."""
    worst = errors_where(dist, visible).max(axis=0)[visible.any(axis=0)]
    if not len(worst):
        return {"worst_err_visible": np.nan, "lost_tracks": np.nan}
    return {"worst_err_visible": float(np.median(worst)), "lost_tracks": float(np.mean(worst > LOST_PX))}


def mean_metrics(results: list[dict]) -> dict:
    keys = results[0].keys()
    return {k: float(np.nanmean([r[k] for r in results])) if results else np.nan for k in keys}


def forward_backward_error(xy_forward, xy_backward) -> np.ndarray:
    """Per point median distance between a forward track and the backward track started
    from the forward track's last position; for clips with no ground truth."""
    d = np.linalg.norm(np.asarray(xy_forward) - np.asarray(xy_backward), axis=-1)
    return np.nanmedian(d, axis=0)
