"""Cost of the sub-pixel refinement (pipstrack.refine, with and without the co-motion fill of
pipstrack.comotion) against the tracker: point-frames per second, and the error it leaves.

    .venv/bin/python benchmarks/bench_refine.py

Two colour plates at the 512x288 working size, 256 points x 48 frames, seeds ("PIPs") 2 px off:
- clean: a textured plate under a smooth pan and zoom, every point always visible;
- occluded: the same with a flat card sweeping across it; behind the card and after it the
  seeds of the covered points ride along with the card (what a small network does when it is
  dragged by an occluder), so the co-motion fill has to carry them and bring them back.
"""

import time

import cv2
import numpy as np

from pipstrack.engine.refine import refine_trajectories

T, H, W, N = 48, 288, 512, 256


def plate(card: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.random((H, W, 3)).astype(np.float32), (0, 0), 2.0)
    tex = (255 * (tex - tex.min()) / (tex.max() - tex.min())).astype(np.uint8)
    start = np.c_[rng.uniform(20, W - 20, N), rng.uniform(20, H - 20, N)]
    frames, truth, hidden = [], [], []
    for t in range(T):
        s, dx, dy = 1 + 0.004 * t, 1.5 * t, 0.5 * t
        A = np.float32([[s, 0, (1 - s) * W / 2 + dx], [0, s, (1 - s) * H / 2 + dy]])
        img = cv2.warpAffine(tex, A, (W, H), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        p = start @ A[:, :2].T + A[:, 2]
        x0 = -120 + 16 * t  # 100 px wide card, 16 px per frame
        h = np.zeros(N, bool)
        if card:
            img[:, max(0, x0) : max(0, x0 + 100)] = 90
            h = (p[:, 0] >= x0 - 8) & (p[:, 0] < x0 + 108)
        frames.append(img)
        truth.append(p)
        hidden.append(h)
    truth, hidden = np.array(truth), np.array(hidden)
    rough = truth + rng.normal(0, 2, truth.shape)
    rough[0] = truth[0]
    dragged = np.zeros((T, N), bool)
    for n in np.nonzero(hidden.any(0))[0]:  # dragged along by the card from its first covered frame on
        t0 = int(np.argmax(hidden[:, n]))
        if t0 == 0:
            continue
        rough[t0:, n] = truth[t0, n] + np.c_[16.0 * np.minimum(np.arange(T - t0), hidden[:, n].sum()), np.zeros(T - t0)]
        dragged[t0:, n] = True
    return frames, truth, rough, hidden, dragged


for card in (False, True):
    frames, truth, rough, hidden, dragged = plate(card)
    for comotion in (False, True):
        t0 = time.perf_counter()
        out, _, _, st = refine_trajectories(
            lambda i: frames[i], np.arange(T), rough, ~hidden, [[0]] * N, comotion=comotion
        )
        dt = time.perf_counter() - t0
        err = np.linalg.norm(out - truth, axis=2)
        line = (
            f"{'occluded' if card else 'clean':8s} comotion={'on ' if comotion else 'off'}: {dt:5.2f} s "
            f"({N * T / dt:6.0f} point-frames/s); median error {np.median(err):.3f} px "
            f"(seeds {np.median(np.linalg.norm(rough - truth, axis=2)):.2f})"
        )
        if card:
            line += (
                f"; dragged points after the card {np.median(err[dragged & ~hidden]):.2f} px, "
                f"behind it {np.median(err[dragged & hidden]):.2f} px"
            )
        print(line, flush=True)
