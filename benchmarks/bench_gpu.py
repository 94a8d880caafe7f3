"""Point-frames per second on a GPU: 1024 points x 200 frames, official-size network, default
working size (512), with and without refinement, float32 and mixed precision. One prepared
command for a borrowed GPU (about 15 minutes in all; this needs about 5 on an H100-class card):

    python benchmarks/bench_gpu.py                       # cuda (or mps), the full configuration
    python benchmarks/bench_gpu.py --device cpu --points 32 --frames 16   # a dry run on a CPU

The network has the official sizes with seeded weights (speed does not depend on the weights'
values, except through how far windows advance); the clip is a textured photo under a camera
move at 960x540 (working size 512x288). Each configuration runs once to warm up (cuDNN
autotuning, allocator) on a short clip, then is timed on the full one. Prints a Markdown table
for docs/performance.md and, with --json, every number. Target (issue 14): >= 100,000
point-frames per second on an H100/H200 (TAPNext reports about 190,000).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))
sys.path.insert(0, str(ROOT / "tests"))


def official_network():
    from conftest import seeded_state_dict
    from pipstrack import Pips

    model = Pips()
    model.load_state_dict(seeded_state_dict())
    return model


def clip(frames: int, size=(540, 960)):
    from pipstrack.datasets.sample import homography_clip
    from pipstrack.evaluation.harness import load_photo

    return homography_clip(load_photo("astronaut"), frames, size, seed=1, points=4, strength=0.5)["rgbs"]


def grid(points: int, size=(540, 960)) -> np.ndarray:
    side = int(np.ceil(np.sqrt(points)))
    ys, xs = np.meshgrid(np.linspace(20, size[0] - 21, side), np.linspace(20, size[1] - 21, side), indexing="ij")
    xy = np.column_stack([xs.ravel(), ys.ravel()])[:points]
    return np.column_stack([np.zeros(len(xy)), xy])


def run(model, rgbs, queries, device, **options) -> dict:
    import torch

    from pipstrack import Tracker

    tracker = Tracker(model, device=device, **options)
    tracker.track(rgbs[: min(len(rgbs), 16)], queries[: min(len(queries), 64)])  # warm up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = tracker.track(rgbs, queries)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    pf = len(queries) * len(rgbs)
    return {"seconds": seconds, "point_frames_per_s": pf / seconds, "gpu_peak_gib": peak, "stats": result.stats}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--points", type=int, default=1024)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import torch

    from pipstrack.engine.tracker import resolve_device, torch_build

    device = str(resolve_device(args.device))
    print(f"{torch_build()}; device {device}", flush=True)
    if device.startswith("cuda"):
        print(torch.cuda.get_device_name(0), flush=True)
        torch.backends.cudnn.benchmark = True
    model = official_network()
    rgbs = clip(args.frames)
    queries = grid(args.points)
    rows = []
    for refine in (False, True):
        for precision in ("fp32", "auto"):
            r = run(model, rgbs, queries, device, refine=refine, comotion=refine, precision=precision)
            r.update(refine=refine, precision=precision)
            rows.append(r)
            print(
                f"refine={refine} precision={precision}: {r['seconds']:.1f} s, "
                f"{r['point_frames_per_s']:,.0f} point-frames/s, GPU peak {r['gpu_peak_gib']:.1f} GiB",
                flush=True,
            )
    print(f"\n{args.points} points x {args.frames} frames, 960x540 clip, working size 512, official-size network\n")
    print("| refinement | precision | seconds | point-frames/s | GPU peak GiB |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {'on' if r['refine'] else 'off'} | {r['precision']} | {r['seconds']:.1f} | "
            f"{r['point_frames_per_s']:,.0f} | {r['gpu_peak_gib']:.1f} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"device": device, "torch": torch_build(), "rows": rows}, indent=1, default=str)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
