"""One prepared training run for a borrowed GPU (about 15 minutes of device time in all).

Fine-tunes the shipped default model on the hard-footage training mix for a fixed number of
minutes, with clips rendered ahead by worker processes (a GPU steps far faster than one core
renders), then scores the new weights and the shipped ones on the same held-out windows and
writes everything to ``--out``: ``best.pt``, ``last.pt``, ``metrics.jsonl``, ``summary.json``.
Copy ``best.pt`` to ``backend/pipstrack/data/default_model.pt`` only after the per-track checks of
docs/model.md (a better held-out number alone is not enough).

Tested on the CPU first (tests/test_train.py runs it for a few seconds):

    python tools/train_on_gpu.py --minutes 10 --out "$OUT/gpu-run"                 # on the GPU
    python tools/train_on_gpu.py --device cpu --minutes 0.1 --batch 1 --workers 1 --heldout-clips 2 \
        --size 128x160 --out /tmp/r
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT / "backend"))
    import torch

    from pipstrack.datasets import synth
    from pipstrack.engine.weights import load_model
    from pipstrack.training.trainer import PRECISIONS, TrainOptions, evaluate_windows, train

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=10.0, help="training time (the rest: start-up, scoring)")
    ap.add_argument("--heldout-clips", type=int, default=32, help="held-out clips both weights are scored on")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=max((os.cpu_count() or 2) - 2, 1))
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--init", default=str(ROOT / "backend" / "pipstrack" / "data" / "default_model.pt"))
    ap.add_argument("--teacher", default=None, help="a teacher bank (pipstrack teach) to mix in")
    ap.add_argument("--teacher-share", type=float, default=0.3)
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32", help="bf16: the encoder under bfloat16 autocast")
    # The evaluation's working size: on the CPU a fine-tune at 256x320 gained on its held-out
    # windows where five runs at 128x160 had stopped gaining (docs/model.md, ft18)
    ap.add_argument("--size", default="256x320", help="training clip size HxW")
    args = ap.parse_args(argv)
    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(f"--size must be HxW, for example 256x320 (got {args.size!r})", file=sys.stderr)
        return 2
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("no CUDA device here; use --device cpu for a dry run", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out = Path(args.out)
    opts = TrainOptions(
        out=out,
        steps=1_000_000,  # the time budget ends the run
        batch=args.batch,
        height=height,
        width=width,
        lr=args.lr,
        iters=6,
        slow_prob=0.3,
        shake_prob=0.3,
        fast_prob=0.25,
        flicker_prob=0.3,
        pole_prob=0.25,
        device=args.device,
        init=args.init,
        eval_every=500,
        eval_clips=args.heldout_clips,
        save_every=200,
        workers=args.workers,
        time_budget_s=60.0 * args.minutes,
        teacher=args.teacher,
        teacher_share=args.teacher_share,
        precision=args.precision,
    )
    t0 = time.time()
    best = train(opts, log=lambda m: print(m, file=sys.stderr, flush=True))
    held_out = synth.load_test_set(out / "heldout.npz")
    device = torch.device(args.device)
    scores = {}
    for name, path in (("shipped", args.init), ("new", best)):
        model = load_model(path).to(device)
        scores[name] = evaluate_windows(model, held_out, device=device)["delta_avg"]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = {
        "device": str(device),
        "minutes": round((time.time() - t0) / 60, 2),
        "steps": steps[-1] if steps else 0,
        "batch": args.batch,
        "size": f"{height}x{width}",
        "workers": args.workers,
        "heldout_delta_avg": scores,
        # the --init file itself when no evaluated step beat it (then there is no best.pt)
        "best": str(best),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
