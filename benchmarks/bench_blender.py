"""pipstrack against Blender's own tracker: time and accuracy on the same clip and points (issue 14).

Photo clips with exact ground truth (a photograph under a hand-held camera move, a bar
crossing it), the points good features of the first frame: 48 frames of 512x288 with 60 points
and 240 frames of 960x540 with 84 points, and the first again without the bar (a clean shot).
Each is tracked by pipstrack (in process, the model loaded beforehand, default options) and by
Blender 5.0's tracker through bpy (Perspective, pattern 21, search 71, match keyframe: what an
artist would pick), alternating, best of ``--repeat``, all in one run. Reports seconds, the
ratio, and for both the median error on the frames each reports as tracked and the share of
visible point-frames it tracks. pipstrack runs twice: with its defaults, and with the network
over every frame of every point (``lead=False``), and with the network for every point the
lead lost (``company_lead=False``).

    .venv/bin/python benchmarks/bench_blender.py --repeat 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

CASES = (
    ("48 frames, 512x288, 60 points", 48, (288, 512), 60, True),
    ("240 frames, 960x540, 84 points", 240, (540, 960), 84, True),
    ("48 frames, 512x288, 60 points, no bar", 48, (288, 512), 60, False),
)


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))
    from pipstrack import Tracker, load_model
    from pipstrack.datasets.sample import homography_clip
    from pipstrack.evaluation.baselines import blender_available, blender_tracker
    from pipstrack.evaluation.harness import load_photo

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", default="auto", help="torch threads: a number, or auto (the CLI's default)")
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument("--precision", default="auto", help="the tracker's arithmetic (auto, fp32, bf16, int8)")
    ap.add_argument("--cases", default="1,2,3", help="which clips (1-based, comma-separated)")
    ap.add_argument("--quick", action="store_true", help="pipstrack with its defaults and Blender only")
    args = ap.parse_args(argv)
    threads = args.threads if args.threads == "auto" else int(args.threads)
    why = blender_available()
    if why:
        print(why, file=sys.stderr)
        return 2
    model = load_model()
    trackers = {
        "pipstrack": Tracker(model, device="cpu", threads=threads, precision=args.precision),
        # the network over every frame of every point (before the classical lead, engine/lead.py)
        "no-lead": Tracker(model, device="cpu", threads=threads, lead=False, precision=args.precision),
        # the network for every point the lead lost (the lead without its company, engine.lead)
        "no-company": Tracker(model, device="cpu", threads=threads, company_lead=False, precision=args.precision),
    }
    rows = []
    for k, (label, frames, size, points, bar) in enumerate(CASES, 1):
        if str(k) not in args.cases.split(","):
            continue
        clip = homography_clip(load_photo("chelsea"), frames, size, seed=11, occluder=bar, points=points)
        rgbs, gt, vis = clip["rgbs"], clip["trajs"].astype(np.float64), clip["visible"]
        q = np.c_[np.zeros(gt.shape[1]), gt[0]]
        best = {}
        for _ in range(args.repeat):
            for name in ("pipstrack", "blender") if args.quick else ("pipstrack", "no-lead", "no-company", "blender"):
                t0 = time.perf_counter()
                if name in trackers:
                    r = trackers[name].track(rgbs, q)
                    xy, claimed = r.xy.astype(np.float64), r.visible
                else:
                    xy, claimed = blender_tracker(rgbs, q, motion_model="Perspective")
                seconds = time.perf_counter() - t0
                if name not in best or seconds < best[name]["seconds"]:
                    err = np.linalg.norm(xy - gt, axis=-1)
                    ok = vis & claimed
                    ok[0] = False
                    best[name] = {
                        "seconds": seconds,
                        "err_tracked_px": float(np.median(err[ok])),
                        "tracked_share": float(ok.sum() / max(vis[1:].sum(), 1)),
                    }
        rows.append({"case": label, **{f"{k}_{m}": v for k, d in best.items() for m, v in d.items()}})
        b = best["blender"]
        names = ("pipstrack", "no-lead", "no-company")
        seconds = [f"{best[k]['seconds']:.1f}" if k in best else "-" for k in names]
        ratios = [f"{best[k]['seconds'] / b['seconds']:.1f}x" if k in best else "-" for k in names]
        errors = [
            f"{best[k]['err_tracked_px']:.3f} / {100 * best[k]['tracked_share']:.0f} %" if k in best else "-"
            for k in (*names, "blender")
        ]
        print(" | ".join(["", label, *seconds, f"{b['seconds']:.1f}", *ratios, *errors, ""]).strip(), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
