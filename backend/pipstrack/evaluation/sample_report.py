"""How the bundled sample clip was tracked: scores against its exact ground truth and a still.

Shared by ``pipstrack demo`` and ``tools/demo.py`` (the README's first command).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from ..conventions import to_working
from ..datasets.sample import load_ground_truth, sample_clip_dir
from ..io.frames import open_frames
from ..io.preview import draw_tracks, track_colors
from .metrics import LOST_PX, tapvid_metrics


def report(
    xy: np.ndarray, visible: np.ndarray, out: Path, drawn_visible: np.ndarray | None = None, names=None
) -> tuple[dict, int]:
    """Scores (T,N) trajectories of the sample's points (points.txt order) against its ground
    truth and draws the frame where most of them are hidden, tracks so far on it, with the truth
    and each track's worst error: writes ``accuracy.json`` (with every track's worst error on
    visible frames and the lost ones) and ``still.png`` into ``out``. Returns the metrics and that
    frame's number. ``drawn_visible`` (default ``visible``) picks which points are drawn as hidden
    (rings)."""
    truth = load_ground_truth()
    T, N = truth["visible"].shape
    names = list(names) if names is not None else [f"feature{n + 1:02d}" for n in range(N)]
    src = open_frames(sample_clip_dir())
    m = tapvid_metrics(xy, visible, truth["trajs"], truth["visible"], src.size, query_frames=np.zeros(N, int))
    err = np.linalg.norm(np.asarray(xy, np.float64) - truth["trajs"], axis=2)
    worst = np.where(truth["visible"], np.nan_to_num(err, nan=np.inf), 0.0).max(axis=0)
    m["worst_err_visible_per_track"] = {name: round(float(w), 3) for name, w in zip(names, worst)}
    m["lost_tracks_list"] = [name for name, w in zip(names, worst) if w > LOST_PX]
    (out / "accuracy.json").write_text(json.dumps(m, indent=1) + "\n")
    k = int(np.argmax((~truth["visible"]).sum(axis=1)))
    drawn = visible if drawn_visible is None else drawn_visible
    still = honest_still(src.read(k), xy[: k + 1], drawn[: k + 1], truth["trajs"][k], names, worst)
    cv2.imwrite(str(out / "still.png"), cv2.cvtColor(still, cv2.COLOR_RGB2BGR))
    return m, int(truth["frame_numbers"][k])


def honest_still(frame, xy_hist, visible_hist, truth_now, names, worst, scale: int = 2) -> np.ndarray:
    """The tracks drawn over ``frame`` (enlarged ``scale`` times, so labels are legible) with
    where each point really is (a white cross, and a line to the marker when they differ by
    more than a pixel), each track's name and worst error on visible frames (red when the track
    is lost: more than ``LOST_PX`` off), and a legend: a lost track shows at a glance."""
    H, W = frame.shape[:2]
    big = (H * scale, W * scale)
    hist = to_working(np.asarray(xy_hist, np.float64), (H, W), big)
    img = draw_tracks(cv2.resize(frame, (big[1], big[0]), interpolation=cv2.INTER_LINEAR), hist, visible_hist)
    colors = track_colors(len(names))
    gt = to_working(np.asarray(truth_now, np.float64), (H, W), big)
    font, size, arm = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 6
    for n, name in enumerate(names):
        g, p = gt[n], hist[-1, n]
        gi = tuple(int(round(v)) for v in g)
        if np.isfinite(p).all() and np.linalg.norm(p - g) > scale:
            cv2.line(img, gi, tuple(int(round(v)) for v in p), tuple(int(c) for c in colors[n]), 1, cv2.LINE_AA)
        cv2.line(img, (gi[0] - arm, gi[1]), (gi[0] + arm, gi[1]), (255, 255, 255), 1, cv2.LINE_AA)
        cv2.line(img, (gi[0], gi[1] - arm), (gi[0], gi[1] + arm), (255, 255, 255), 1, cv2.LINE_AA)
        lost = worst[n] > LOST_PX
        label = f"{name[-2:] if name.startswith('feature') else name} {worst[n]:.1f}px" + (" LOST" if lost else "")
        at = (gi[0] + arm + 2, gi[1] - arm)
        cv2.putText(img, label, at, font, size, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, label, at, font, size, (255, 60, 60) if lost else (255, 255, 255), 1, cv2.LINE_AA)
    legend = [
        "+ ground truth   dot: marker (ring: estimated behind the occluder)   line: marker to truth",
        f"label: track, its worst error on visible frames; LOST (red): more than {LOST_PX:g} px off",
    ]
    cv2.rectangle(img, (0, 0), (big[1], 14 + 18 * len(legend)), (0, 0, 0), -1)
    for i, text in enumerate(legend):
        cv2.putText(img, text, (6, 16 + 18 * i), font, size, (255, 255, 255), 1, cv2.LINE_AA)
    return img
