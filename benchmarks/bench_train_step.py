"""Seconds per training step of the shipped small network on the CPU, by variant, and how far
each variant's gradient is from float32's (issue 13: more steps per CPU hour, by measurement).

One step of the campaign's settings (batch 2, 64 points, 8 frames of 128x160, 6 iterations,
a 0.3 teacher share when ``--teacher`` is given): rendering the batch, then forward, backward
and the optimiser step, for each variant: float32; ``train --precision bf16`` (the encoder under
bfloat16 autocast); the whole network under autocast; the encoder in channels-last memory.
Variants alternate on the same batches, best of ``--repeat`` steps each, all in one run (ratios
are the result; absolute times here are noisy). *gradient cosine*: the variant's gradient
against float32's from the same weights on the same batch (1: the same direction), over
``--batches`` batches, and the ratio of the losses: a faster step that learns another function
is not a faster campaign.

    .venv/bin/python benchmarks/bench_train_step.py --threads 1 --repeat 5
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))
    import torch

    from pipstrack.datasets import synth
    from pipstrack.engine.threads import BLAS_THREADS, limit_blas
    from pipstrack.engine.weights import load_model
    from pipstrack.training.trainer import TrainOptions, _render_batch, train_step

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--teacher", help="a teacher bank (pipstrack teach), as in the campaign")
    ap.add_argument("--batches", type=int, default=6, help="batches the gradients are compared on")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    limit_blas(BLAS_THREADS)
    opts = TrainOptions(out=Path("unused"), iters=6, teacher=args.teacher)
    scfg = synth.SynthConfig(
        frames=8, height=opts.height, width=opts.width, points=opts.points, slow_prob=0.3, shake_prob=0.3,
        fast_prob=0.25, flicker_prob=0.3, pole_prob=0.25, exclude_photos=tuple(opts.exclude_photos),
    )  # fmt: skip
    base = load_model()

    def variant(name):  # (model, context around the step, options, optimiser)
        m = copy.deepcopy(base).train()
        context, o = contextlib.nullcontext, opts
        if name == "encoder bf16 (--precision bf16)":
            o = dataclasses.replace(opts, precision="bf16")
        elif name == "whole network bf16":
            context = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
        elif name == "encoder channels-last":
            m.fnet = m.fnet.to(memory_format=torch.channels_last)
        return m, context, o, torch.optim.AdamW(m.parameters(), lr=1e-5)

    def gradient(m, context, o, clips):
        m.zero_grad(set_to_none=True)
        with context():
            loss = train_step(m, clips, o, "cpu")["loss"]
        loss.float().backward()
        return float(loss.detach()), torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])

    names = ["float32", "encoder bf16 (--precision bf16)", "whole network bf16", "encoder channels-last"]
    models = {n: variant(n) for n in names}
    cosines, ratios = {n: [] for n in names}, {n: [] for n in names}
    for b in range(args.batches):  # batches of their own (seed 8): one batch can mislead
        clips = _render_batch((8, b, opts.batch, scfg, args.teacher, opts.teacher_share))
        ref_loss, ref = gradient(*models["float32"][:3], clips)
        for n in names[1:]:
            loss, g = gradient(*models[n][:3], clips)
            cosines[n].append(float(torch.nn.functional.cosine_similarity(g, ref, dim=0)))
            ratios[n].append(loss / ref_loss)
    cosines["float32"], ratios["float32"] = [1.0], [1.0]
    render, best = [], {n: np.inf for n in names}
    for k in range(1, args.repeat + 1):
        t0 = time.perf_counter()
        clips = _render_batch((7, k, opts.batch, scfg, args.teacher, opts.teacher_share))
        render.append(time.perf_counter() - t0)
        for n in names:
            m, context, o, optim = models[n]
            t0 = time.perf_counter()
            with context():
                losses = train_step(m, clips, o, "cpu")
            optim.zero_grad(set_to_none=True)
            losses["loss"].float().backward()
            optim.step()
            best[n] = min(best[n], time.perf_counter() - t0)
    print(f"# {args.threads} thread(s); rendering a batch: best {min(render):.2f} s, median {np.median(render):.2f} s")
    print("| variant | step s (best) | vs float32 | gradient cosine (min / median) | loss / float32's (max) |")
    print("|---|---:|---:|---:|---:|")
    for n in names:
        c, r = cosines[n], ratios[n]
        print(
            f"| {n} | {best[n]:.2f} | {best[n] / best['float32']:.2f}x | "
            f"{min(c):.3f} / {np.median(c):.3f} | {max(r):.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
