"""How the bundled sample clip was tracked: scores against its exact ground truth and a still.

Shared by ``pipstrack demo`` and ``tools/demo.py`` (the README's first command).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from ..datasets.sample import load_ground_truth, sample_clip_dir
from ..io.frames import open_frames
from ..io.preview import draw_tracks
from .metrics import tapvid_metrics


def report(xy: np.ndarray, visible: np.ndarray, out: Path, drawn_visible: np.ndarray | None = None) -> tuple[dict, int]:
    """Scores (T,N) trajectories of the sample's points (points.txt order) against its ground
    truth and draws the frame where most of them are hidden, tracks so far on it: writes
    ``accuracy.json`` and ``still.png`` into ``out``. Returns the metrics and that frame's number.
    ``drawn_visible`` (default ``visible``) picks which points are drawn as hidden (rings)."""
    truth = load_ground_truth()
    N = truth["visible"].shape[1]
    src = open_frames(sample_clip_dir())
    m = tapvid_metrics(xy, visible, truth["trajs"], truth["visible"], src.size, query_frames=np.zeros(N, int))
    (out / "accuracy.json").write_text(json.dumps(m, indent=1) + "\n")
    k = int(np.argmax((~truth["visible"]).sum(axis=1)))
    drawn = visible if drawn_visible is None else drawn_visible
    still = draw_tracks(src.read(k), xy[: k + 1], drawn[: k + 1])
    cv2.imwrite(str(out / "still.png"), cv2.cvtColor(still, cv2.COLOR_RGB2BGR))
    return m, int(truth["frame_numbers"][k])
