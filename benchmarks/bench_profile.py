"""Where a track call's time goes, and what each speed option costs and gives (issue 14).

Runs the tracker on the bundled sample clip (10 points x 48 frames, 480x270, exact ground truth,
the points crossed by a pole) and on a photo clip of 960x540 with 64 points (48 frames), each
variant side by side in one run, alternating, best of ``--repeat``, one torch thread (so a niced
job on the other core does not disturb it). Reports seconds per stage (from
``TrackResult.stats["seconds"]``) and the accuracy each variant keeps: every track's worst error
on its visible frames and the median error on visible frames.

Variants: the default; ``min_advance=2`` (the authors' window-advance rule); 4 network iterations
instead of 6; the encoder in bfloat16 on the CPU (``precision="bf16"``); the encoder in
channels-last memory format; the mixer's linear layers quantised to int8 (dynamic quantisation).

    .venv/bin/python benchmarks/bench_profile.py --repeat 2 --out /tmp/profile.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

STAGES = ("read", "encode", "updates", "polish", "co-motion", "re-detection", "edge", "fill", "anchored polish")


def variants(model):
    from pipstrack.engine.tracker import quantized_copy

    def channels_last(m):
        c = copy.deepcopy(m)
        c.fnet = c.fnet.to(memory_format=torch.channels_last)
        return c

    return {
        "default": (model, {}),
        "min_advance=2": (model, {"min_advance": 2}),
        "iters=4": (model, {"iters": 4}),
        "encoder bf16": (model, {"precision": "bf16"}),
        "encoder channels-last": (channels_last(model), {}),
        "mixer int8": (quantized_copy(model), {}),
    }


def clips():
    from pipstrack.datasets.sample import homography_clip, load_ground_truth, sample_clip_dir
    from pipstrack.evaluation.harness import load_photo
    from pipstrack.io.frames import open_frames

    truth = load_ground_truth()
    src = open_frames(sample_clip_dir())
    sample = np.stack([src.read(k) for k in range(len(src))])
    yield "sample: 10 points x 48 frames, 480x270", sample, truth["trajs"], truth["visible"]
    big = homography_clip(load_photo("coffee"), 48, (540, 960), seed=3, occluder=True, points=64)
    yield "photo clip: 64 points x 48 frames, 960x540", big["rgbs"], big["trajs"], big["visible"]


def run(model, options, rgbs, gt, vis) -> dict:
    from pipstrack import Tracker

    tracker = Tracker(model, device="cpu", **options)
    q = np.c_[np.zeros(gt.shape[1]), gt[0]]
    t0 = time.perf_counter()
    r = tracker.track(rgbs, q)
    total = time.perf_counter() - t0
    err = np.linalg.norm(r.xy.astype(np.float64) - gt, axis=-1)
    worst = np.where(vis, err, 0.0).max(axis=0)
    return {
        "seconds": total,
        "stages": r.stats.get("seconds", {}),
        "windows": r.stats["windows"],
        "median_err_visible": float(np.median(err[vis])),
        "worst_per_track": [round(float(w), 2) for w in worst],
        "tracks_within_2px": int((worst <= 2.0).sum()),
    }


def table(best: dict) -> str:
    base = best.get("default", next(iter(best.values())))["seconds"]
    lines = [
        "| variant | seconds | vs default | " + " | ".join(STAGES) + " | windows | err vis px | tracks within 2 px |",
        "|---|---:|---:|" + "---:|" * len(STAGES) + "---:|---:|---:|",
    ]
    for name, r in best.items():
        cells = [f"{r['stages'].get(s, 0.0):.2f}" for s in STAGES]
        lines.append(
            f"| {name} | {r['seconds']:.2f} | {r['seconds'] / base:.2f}x | "
            + " | ".join(cells)
            + f" | {r['windows']} | {r['median_err_visible']:.3f} | "
            + f"{r['tracks_within_2px']}/{len(r['worst_per_track'])} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))
    from pipstrack import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", help="also write every number to this JSON file")
    ap.add_argument("--only", help="comma-separated variant names")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    chosen = variants(load_model())
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    results = {}
    for label, rgbs, gt, vis in clips():
        best: dict[str, dict] = {}
        for _ in range(args.repeat):
            for name, (m, opts) in chosen.items():  # alternating: drift in the machine's speed hits all alike
                r = run(m, opts, rgbs, gt, vis)
                if name not in best or r["seconds"] < best[name]["seconds"]:
                    best[name] = r
        results[label] = best
        print(f"\n{label}\n\n{table(best)}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
