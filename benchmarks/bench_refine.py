"""Cost of the sub-pixel refinement (pipstrack.refine) against the tracker: point-frames per second.

    .venv/bin/python benchmarks/bench_refine.py
"""
import time, numpy as np, cv2
from pipstrack.refine import refine_trajectories
T, H, W, N = 48, 288, 512, 256
rng = np.random.default_rng(0)
tex = cv2.GaussianBlur(rng.random((H + 80, W + 80)).astype(np.float32), (0, 0), 2.0)
tex = (255 * (tex - tex.min()) / (tex.max() - tex.min())).astype(np.uint8)
shift = np.cumsum(rng.uniform(-2, 2, (T, 2)), axis=0); shift[0] = 0
frames = [cv2.warpAffine(tex, np.float32([[1, 0, 40 - dx], [0, 1, 40 - dy]]), (W, H), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP) for dx, dy in shift]
start = np.c_[rng.uniform(20, W - 20, N), rng.uniform(20, H - 20, N)]
truth = start[None] + shift[:, None]
rough = truth + rng.normal(0, 2, truth.shape); rough[0] = truth[0]
t0 = time.perf_counter()
out, st = refine_trajectories(lambda i: frames[i], np.arange(T), rough, np.ones((T, N), bool), [[0]] * N)
dt = time.perf_counter() - t0
print(f"refine {N} points x {T} frames at {W}x{H}: {dt:.2f} s ({N*T/dt:.0f} point-frames/s); median err {np.median(np.linalg.norm(out-truth,axis=2)):.3f} px from {np.median(np.linalg.norm(rough-truth,axis=2)):.2f}")
