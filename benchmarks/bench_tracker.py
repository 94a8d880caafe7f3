"""Long-clip tracking speed and memory, and the batched engine against the authors' chaining.

    python benchmarks/bench_tracker.py                 # the full table (slow on a CPU)
    python benchmarks/bench_tracker.py --quick         # 64 points x 48 frames only
    python benchmarks/bench_tracker.py --compare 16x48 # engine vs per-point chaining

Each configuration runs in its own process so that its peak memory (max RSS) is its own.
The network is the full-size one (official sizes) with the fixture's seeded weights, so
the numbers do not need the authors' checkpoint; speed does not depend on weight values,
except that visibility decides how far each window advances (noted in the output).
Results go to stdout as a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))
sys.path.insert(0, str(ROOT / "tests"))


def full_model(weights: str | None):

    from pipstrack import Pips, load_model

    if weights:
        return load_model(weights)
    from conftest import seeded_state_dict

    model = Pips(stride=4)
    model.load_state_dict(seeded_state_dict())
    return model.eval()


def clip(frames: int, height: int = 1080, width: int = 1920):
    """A 1080p clip of the sample photo under a camera move (from pipstrack.datasets.sample)."""
    import cv2

    from pipstrack.datasets.sample import homography_clip

    base = cv2.imread(str(ROOT / "backend/pipstrack/data/sample/plate.1001.jpg"))[..., ::-1]
    base = cv2.resize(base, (1280, 720), interpolation=cv2.INTER_CUBIC)
    return homography_clip(base, frames, (height, width), seed=1, points=4)["rgbs"]


def run_one(points: int, frames: int, weights: str | None, device: str) -> dict:

    from pipstrack import Tracker

    rgbs = clip(frames)
    rng = np.random.default_rng(0)
    H, W = rgbs.shape[1:3]
    q = np.c_[np.zeros(points), rng.uniform(0, W - 1, points), rng.uniform(0, H - 1, points)]
    tracker = Tracker(full_model(weights), device=device)
    t0 = time.perf_counter()
    result = tracker.track(rgbs, q)
    elapsed = time.perf_counter() - t0
    return {
        "points": points,
        "frames": frames,
        "seconds": round(elapsed, 2),
        "point_frames_per_s": round(points * frames / elapsed, 1),
        "frames_per_s": round(frames / elapsed, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "working_size": list(result.working_size),
        **result.stats,
    }


def compare(points: int, frames: int, weights: str | None, device: str) -> dict:
    """The engine against the authors' per-point chaining on the same clip and points."""
    import cv2
    import torch

    from pipstrack import Tracker
    from pipstrack.conventions import working_size
    from pipstrack.engine.chaining import track_point_reference

    rgbs = clip(frames)
    H, W = rgbs.shape[1:3]
    work = working_size(H, W, 512)
    small = np.stack([cv2.resize(f, (work[1], work[0]), interpolation=cv2.INTER_AREA) for f in rgbs])
    rng = np.random.default_rng(0)
    q = np.c_[np.zeros(points), rng.uniform(0, work[1] - 1, points), rng.uniform(0, work[0] - 1, points)]
    model = full_model(weights)
    t0 = time.perf_counter()
    # the engine with the command line's default threads (auto: the cores other work leaves free)
    result = Tracker(model, device=device, working_long_side=None, threads="auto").track(small, q)
    engine_s = time.perf_counter() - t0
    threads_used = torch.get_num_threads()
    # the per-point procedure on as many threads as auto gave the engine: beside other work a
    # fixed 2 would collapse (docs/performance.md) and flatter the engine
    torch.set_num_threads(threads_used)
    t0 = time.perf_counter()
    ref = [track_point_reference(model, small, q[i, 1:])[0] for i in range(points)]
    reference_s = time.perf_counter() - t0
    diff = np.linalg.norm(result.xy - np.stack(ref, axis=1), axis=-1)
    return {
        "points": points,
        "frames": frames,
        "engine_s": round(engine_s, 2),
        "per_point_s": round(reference_s, 2),
        "speedup": round(reference_s / engine_s, 1),
        "threads": threads_used,
        "max_diff_px": float(diff.max()),
        "median_diff_px": float(np.median(diff)),
    }


def child(args):
    torch_threads = os.environ.get("BENCH_THREADS")
    if torch_threads:
        import torch

        torch.set_num_threads(int(torch_threads))
    fn = compare if args.child_kind == "compare" else run_one
    print(json.dumps(fn(args.points, args.frames, args.weights, args.device)))


def spawn(kind, points, frames, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--points",
        str(points),
        "--frames",
        str(frames),
        "--device",
        args.device,
    ]
    if args.weights:
        cmd += ["--weights", args.weights]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--compare", default=None, help="PxF: compare engine and per-point chaining, e.g. 16x48")
    p.add_argument("--no-table", action="store_true")
    p.add_argument("--weights", default=None, help="weights file (default: full-size seeded weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", dest="child_kind", default=None)
    p.add_argument("--points", type=int)
    p.add_argument("--frames", type=int)
    args = p.parse_args()
    if args.child_kind:
        return child(args)

    import torch

    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, device {args.device}\n"
    )
    if not args.no_table:
        configs = [(64, 48)] if args.quick else [(p_, f) for f in (48, 200) for p_ in (64, 256, 1024)]
        print("| points | frames | seconds | point-frames/s | frames/s | frames encoded | windows | peak RSS (MiB) |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for points, frames in configs:
            r = spawn("run", points, frames, args)
            print(
                f"| {r['points']} | {r['frames']} | {r['seconds']} | {r['point_frames_per_s']} | "
                f"{r['frames_per_s']} | {r['frames_encoded']} | {r['windows']} | {r['peak_rss_mib']} |",
                flush=True,
            )
    if args.compare:
        points, frames = (int(v) for v in args.compare.split("x"))
        r = spawn("compare", points, frames, args)
        print(
            f"\nengine vs per-point chaining, {points} points x {frames} frames: engine {r['engine_s']} s, "
            f"per-point {r['per_point_s']} s, speed-up {r['speedup']}x, "
            f"difference median {r['median_diff_px']:.2e} px, max {r['max_diff_px']:.2e} px"
        )


if __name__ == "__main__":
    main()
