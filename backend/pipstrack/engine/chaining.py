"""The authors' long-clip chaining rule, and their per-point procedure as a reference.

PIPs sees 8 frames at a time. To go further the authors move the window start to the
latest frame of the current window where the point is confidently visible, and carry the
point's original target feature into the next window (shared/docs/pips-model.md,
"Long clips"). :func:`next_window_offset` is that rule; both the batched engine
(:mod:`pipstrack.engine.tracker`) and the slow reference below use it, so they can only differ
in how they batch, never in what they decide.
"""

from __future__ import annotations

import numpy as np
import torch

FIRST_THRESHOLD = 0.9
THRESHOLD_STEP = 0.02


def next_window_offset(visibility: np.ndarray, min_advance: int = 1) -> int:
    """How far the next window starts after this one's first frame (``min_advance``..S-1).

    ``visibility`` holds the window's S visibility confidences (sigmoid of the logits).
    The latest frame s in ``min_advance``..S-1 above the threshold wins; if none is, the
    threshold is lowered by 0.02 and the search repeats. ``min_advance`` 1 is the written
    procedure; 2 is what the authors' demo code does (its search never tests s = 1).
    """
    last = len(visibility) - 1
    thr = FIRST_THRESHOLD
    lowest = min(max(int(min_advance), 1), last)
    while True:
        for s in range(last, lowest - 1, -1):
            if visibility[s] > thr:
                return s
        thr -= THRESHOLD_STEP


def window_frames(start: int, length: int, window: int) -> list[int]:
    """Frame indices (relative to the segment) of the window at ``start``, padded by
    repeating the last real frame, as the authors pad a short final window."""
    stop = min(start + window, length)
    frames = list(range(start, stop))
    return frames + [stop - 1] * (window - len(frames))


@torch.no_grad()
def track_point_reference(model, rgbs: np.ndarray, xy, iters: int = 6):
    """The authors' procedure for ONE point from frame 0 of ``rgbs`` to its end.

    ``rgbs`` (T,H,W,3) uint8 at the network's working resolution; ``xy`` the pixel
    position on frame 0. Every window re-encodes its frames; slow by design. Returns
    (T,2) positions and (T,) visibility confidences.
    """
    T = len(rgbs)
    S = model.S
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    traj = np.zeros((T, 2), np.float64)
    vis_out = np.zeros((T,), np.float64)
    traj[0] = xy
    cur, feat = 0, None
    while cur < T:
        idx = window_frames(cur, T, S)
        window = torch.from_numpy(rgbs[idx]).to(device, dtype).permute(0, 3, 1, 2)
        fmaps = torch.cat([model.encode(frame[None]) for frame in window]).unsqueeze(0)
        start = torch.from_numpy(traj[cur].reshape(1, 1, 2)).to(device, dtype)
        preds, vis_logits, feat = model.refine(fmaps, start, iters, feat_init=feat)
        xys = preds[-1][0, :, 0].cpu().numpy()
        vis = torch.sigmoid(vis_logits[0, :, 0]).cpu().numpy()
        n = min(S, T - cur)
        traj[cur : cur + n] = xys[:n]
        vis_out[cur : cur + n] = vis[:n]
        cur += next_window_offset(vis)
    return traj, vis_out
