"""Training PIPs networks on pipstrack's synthetic clips (``pipstrack train``).

Losses are the paper's: iteration-weighted L1 on the coordinates (gamma 0.8, later
iterations count more) over every frame whose true position is near the image, and a
balanced binary cross-entropy on visibility. Runs resume from ``<out>/last.pt``; the
data stream is a pure function of (seed, clip index), so a resumed run sees the clips it
would have seen.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets import synth
from ..engine.model import Pips, PipsConfig
from . import teacher

# The default model: measured on the 2-core CPU to train at ~1 step/s at 128x160
# while keeping the official structure (see docs/model.md).
SMALL = PipsConfig(
    encoder_widths=(32, 48, 64, 64),
    encoder_hidden=128,
    latent_dim=64,
    mixer_dim=256,
    mixer_depth=6,
)
CONFIGS = {"small": SMALL, "official": PipsConfig()}


PRECISIONS = ("fp32", "bf16")  # TrainOptions.precision


@dataclass
class TrainOptions:
    out: Path
    config: str = "small"
    steps: int = 20000
    batch: int = 2
    points: int = 64
    height: int = 128
    width: int = 160
    iters: int = 4
    lr: float = 5e-4
    weight_decay: float = 1e-5
    gamma: float = 0.8
    vis_weight: float = 1.0
    seed: int = 0
    eval_every: int = 500
    eval_clips: int = 32
    save_every: int = 100
    device: str = "cpu"
    threads: int | None = None
    init: str | None = None  # start from these weights (pipstrack or official file)
    slow_prob: float = 0.0  # share of slow / near-static clips (synth.SynthConfig.slow_prob)
    shake_prob: float = 0.0  # share of clips with camera shake (synth.SynthConfig.shake_prob)
    fast_prob: float = 0.0  # share of fast clips (synth.SynthConfig.fast_prob)
    flicker_prob: float = 0.0  # share of clips with exposure / white-balance flicker
    pole_prob: float = 0.0  # chance that a sprite is a thin pole
    linger_prob: float = 0.0  # share of clips with a lingering occluder (long occlusions)
    # The evaluation's photographs stay out of training, so its photo clips measure unseen content.
    exclude_photos: tuple[str, ...] = synth.EVAL_PHOTOS
    # Clip generation in this many worker processes (0: in the training loop). A GPU steps far
    # faster than one core renders clips (~50 clips/s), so a borrowed GPU needs many.
    workers: int = 0
    # Stop (saving last.pt and best.pt, with a final held-out evaluation) after this many seconds
    # of training: a borrowed GPU's time is fixed in advance. None: run to ``steps``.
    time_budget_s: float | None = None
    # Pseudo-labelled real footage (training/teacher.py): a bank file, and the share of a batch's
    # clips drawn from it (the rest are synthetic).
    teacher: str | None = None
    teacher_share: float = 0.3
    # "bf16": the encoder's forward pass under bfloat16 autocast, as inference's bf16 does; the
    # iterative updates, the weights, the optimiser and the held-out evaluation stay float32. On a
    # CPU with native bfloat16 a step of the small network took 0.87x the float32 time, and its
    # gradient pointed the same way (cosine 0.97-0.99); the whole network under autocast was 0.62x
    # but on one batch its gradient was another one (cosine 0.53, loss +17 %): docs/model.md.
    precision: str = "fp32"
    # A running average of the weights (decay per step; None: off). Late in a fine-tune the
    # weights swing between held-out evaluations by about as much as they gain (ft14: 0.5662 ->
    # 0.5675 -> 0.5661); the average smooths the last few hundred steps' noise out. Both the
    # trained and the averaged weights are scored at each evaluation, and best.pt is the better.
    ema: float | None = None


class WeightAverage:
    """Exponential moving average of a network's parameters, kept beside the trained network.

    The decay ramps up from 0 ((1 + n) / (10 + n) over the first updates), so that an average
    started from --init weights follows the first steps instead of staying stuck at the start."""

    def __init__(self, model: Pips, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be between 0 and 1, not {decay}")
        self.decay = decay
        self.updates = 0
        self.model = Pips(config=model.config).to(next(model.parameters()).device)
        self.model.load_state_dict(model.state_dict())
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: Pips) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, p in zip(self.model.parameters(), model.parameters()):
            avg.lerp_(p.detach(), 1.0 - d)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def sequence_loss(preds, trajs, valid, gamma: float) -> torch.Tensor:
    """preds: list of (B,S,N,2); trajs (B,S,N,2); valid (B,S,N) float."""
    n = len(preds)
    total = 0.0
    denom = valid.sum().clamp(min=1.0)
    for i, p in enumerate(preds):
        err = (p - trajs).abs().mean(dim=-1)
        total = total + gamma ** (n - i - 1) * (err * valid).sum() / denom
    return total / n


def balanced_vis_loss(logits, visible, valid) -> torch.Tensor:
    """Cross-entropy averaged separately over visible and occluded samples."""
    ce = F.binary_cross_entropy_with_logits(logits, visible, reduction="none")
    pos = visible * valid
    neg = (1 - visible) * valid
    return 0.5 * ((ce * pos).sum() / pos.sum().clamp(min=1.0) + (ce * neg).sum() / neg.sum().clamp(min=1.0))


def batch_from_clips(clips, device):
    rgbs = torch.from_numpy(np.stack([c["rgbs"] for c in clips])).to(device).permute(0, 1, 4, 2, 3).float()
    trajs = torch.from_numpy(np.stack([c["trajs"] for c in clips])).to(device).float()
    vis = torch.from_numpy(np.stack([c["visible"] for c in clips])).to(device).float()
    return rgbs, trajs, vis


def labelled(clips, device):
    """(B,S,N) 1 where a clip knows the position: everywhere on synthetic clips, where the
    teacher verified the point on pseudo-labelled ones."""
    masks = [c["valid"] if "valid" in c else np.ones(c["visible"].shape, bool) for c in clips]
    return torch.from_numpy(np.stack(masks)).to(device).float()


def near_image(trajs, H, W, margin: float = 32.0):
    x, y = trajs[..., 0], trajs[..., 1]
    return ((x > -margin) & (x < W - 1 + margin) & (y > -margin) & (y < H - 1 + margin)).float()


def train_step(model: Pips, clips, opts: TrainOptions, device) -> dict:
    rgbs, trajs, vis = batch_from_clips(clips, device)
    B, S, _, H, W = rgbs.shape
    with _encoder_autocast(opts.precision, torch.device(device).type):
        fmaps = model.encode(rgbs.reshape(B * S, 3, H, W)).float()
    fmaps = fmaps.reshape(B, S, *fmaps.shape[1:])
    preds, vis_logits, _ = model.refine(fmaps, trajs[:, 0], opts.iters, lock_first=False)
    valid = near_image(trajs, H, W) * labelled(clips, device)
    coord_loss = sequence_loss(preds, trajs, valid, opts.gamma)
    vis_loss = balanced_vis_loss(vis_logits, vis, valid)
    return {"loss": coord_loss + opts.vis_weight * vis_loss, "coord": coord_loss, "vis": vis_loss}


def _encoder_autocast(precision: str, device_type: str):
    """bfloat16 autocast for the encoder where ``precision`` is bf16 (TrainOptions.precision)."""
    if precision == "bf16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_windows(model: Pips, clips, iters: int = 6, device="cpu") -> dict:
    """Window-level metrics on held-out clips (TAP-Vid style thresholds at 256x256)."""
    from ..evaluation.metrics import mean_metrics, tapvid_metrics

    model.eval()
    results = []
    for c in clips:
        rgbs, trajs, vis = batch_from_clips([c], device)
        _, S, _, H, W = rgbs.shape
        preds, logits = model(trajs[:, 0], rgbs, iters=iters)
        pred = preds[-1][0].cpu().numpy()
        results.append(
            tapvid_metrics(
                pred,
                torch.sigmoid(logits[0]).cpu().numpy() > 0.5,
                c["trajs"],
                c["visible"],
                (H, W),
                query_frames=np.zeros(pred.shape[1], int),
            )
        )
    return mean_metrics(results)


def _render_batch(job) -> list[dict]:
    """The clips of one training step: a pure function of (seed, step), so workers and the
    training loop give the same batch. With a teacher bank, each clip is a pseudo-labelled
    window from it with probability ``share``."""
    seed, step, batch, scfg, bank, share = job
    clips = []
    for b in range(batch):
        rng = np.random.default_rng([seed, step, b])
        if bank is not None and rng.random() < share:
            window = teacher.teacher_clip(
                teacher.load_bank(bank), rng, scfg.frames, scfg.height, scfg.width, scfg.points
            )
            clips.append(window)
        else:
            clips.append(synth.make_clip(rng, scfg))
    return clips


def _batches(opts: "TrainOptions", scfg, first_step: int):
    """Training batches from ``first_step`` on, rendered ahead by ``opts.workers`` processes."""
    jobs = (
        (opts.seed, step, opts.batch, scfg, opts.teacher, opts.teacher_share) for step in range(first_step, opts.steps)
    )
    if opts.workers <= 0:
        yield from map(_render_batch, jobs)
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(opts.workers, initializer=_quiet_worker) as pool:
        yield from pool.imap(_render_batch, jobs, chunksize=1)


def _quiet_worker():
    import cv2

    from ..engine.threads import BLAS_THREADS, limit_blas

    cv2.setNumThreads(1)  # one core per worker: the pool is the parallelism
    torch.set_num_threads(1)
    limit_blas(BLAS_THREADS)


def _atomic_save(obj, path: Path):
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def held_out_mismatch(drawn: synth.SynthConfig, run: synth.SynthConfig) -> list[str]:
    """A notice (one line, or none) where held-out windows were drawn from another clip mix than
    the run trains on. Why: a run is judged against its own step 0 on those windows, but windows
    made by a run without the mix flags are other clips, and their scores do not compare with
    runs on the mix's windows (docs/model.md, ft15)."""
    differ = [
        f"{f.name} {getattr(drawn, f.name)} (this run {getattr(run, f.name)})"
        for f in fields(run)
        if getattr(drawn, f.name) != getattr(run, f.name)
    ]
    if not differ:
        return []
    return ["note: the held-out windows were drawn from another clip mix: " + ", ".join(differ)]


def train(opts: TrainOptions, log=print) -> Path:
    """Runs (or resumes) a training run; returns the path of the best weights file (the --init
    file itself when no evaluated step beat it)."""
    from tqdm import tqdm

    from ..engine.threads import BLAS_THREADS, limit_blas
    from ..engine.weights import load_model, save_model

    if opts.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {opts.precision!r}")
    limit_blas(BLAS_THREADS)  # numpy's small products gain nothing from threads (engine/threads.py)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = CONFIGS[opts.config]
    model = load_model(opts.init) if opts.init else Pips(config=cfg)
    model.to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        optim, opts.lr, total_steps=opts.steps + 100, pct_start=0.02, cycle_momentum=False, anneal_strategy="linear"
    )
    step, best = 0, -math.inf
    average = WeightAverage(model, opts.ema) if opts.ema else None
    last = out / "last.pt"
    if last.exists():
        state = torch.load(last, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        step, best = int(state["step"]), float(state["best"])
        if average is not None:
            if "ema" in state:
                average.load_state_dict(state["ema"])
            else:  # a run that had no average before: start it from the resumed weights
                average = WeightAverage(model, opts.ema)
        log(f"resumed {last} at step {step}")

    scfg = synth.SynthConfig(
        frames=model.S,
        height=opts.height,
        width=opts.width,
        points=opts.points,
        slow_prob=opts.slow_prob,
        shake_prob=opts.shake_prob,
        fast_prob=opts.fast_prob,
        flicker_prob=opts.flicker_prob,
        pole_prob=opts.pole_prob,
        linger_prob=opts.linger_prob,
        exclude_photos=tuple(opts.exclude_photos),
    )
    held_out_path = out / "heldout.npz"
    if not held_out_path.exists():
        synth.write_test_set(held_out_path, opts.eval_clips, seed=10_000 + opts.seed, cfg=scfg)
    else:  # windows copied in from another run, so that scores compare: say what they are
        for line in held_out_mismatch(synth.load_test_config(held_out_path), scfg):
            log(line)
    held_out = synth.load_test_set(held_out_path)
    metrics_log = open(out / "metrics.jsonl", "a")
    meta_base = {
        "config_name": opts.config,
        "train_resolution": [opts.height, opts.width],
        "iters": opts.iters,
        "seed": opts.seed,
        "precision": opts.precision,
    }

    def save():
        state = {
            "model": model.state_dict(),
            "optim": optim.state_dict(),
            "sched": sched.state_dict(),
            "step": step,
            "best": best,
        }
        if average is not None:
            state["ema"] = average.state_dict()
        _atomic_save(state, last)

    def record(m: dict, label: str):  # one held-out evaluation: to metrics.jsonl and the log
        metrics_log.write(json.dumps(m) + "\n")
        metrics_log.flush()
        log(f"{label}: " + ", ".join(f"{k}={v:.4g}" for k, v in m.items() if isinstance(v, float)))

    if step == 0 and opts.init:
        # The weights a run starts from are its bar: score them on the same held-out windows
        # first, so best.pt appears only when training beats them (a like-for-like comparison).
        m = evaluate_windows(model, held_out, device=device)
        m.update(step=0, init=str(opts.init))
        record(m, "step 0 (the --init weights)")
        best = m["delta_avg"]
        save()

    t0 = time.time()
    bar = tqdm(total=opts.steps, initial=step, desc="train", unit="step", disable=None, dynamic_ncols=True)
    running = None
    batches = _batches(opts, scfg, step)
    out_of_time = False
    while step < opts.steps and not out_of_time:
        model.train()
        clips = next(batches)
        losses = train_step(model, clips, opts, device)
        optim.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        if average is not None:
            average.update(model)
        step += 1
        vals = {k: float(v.detach()) for k, v in losses.items()}
        running = vals if running is None else {k: 0.98 * running[k] + 0.02 * vals[k] for k in vals}
        bar.update(1)
        bar.set_postfix(loss=f"{running['loss']:.3f}", coord=f"{running['coord']:.2f}", vis=f"{running['vis']:.3f}")
        out_of_time = opts.time_budget_s is not None and time.time() - t0 >= opts.time_budget_s
        if step % opts.save_every == 0 or step == opts.steps or out_of_time:
            save()
        if step % opts.eval_every == 0 or step == opts.steps or out_of_time:
            m = evaluate_windows(model, held_out, device=device)
            m.update(
                step=step,
                elapsed_s=round(time.time() - t0, 1),
                lr=sched.get_last_lr()[0],
                **{f"train_{k}": v for k, v in running.items()},
            )
            record(m, f"step {step}")
            if m["delta_avg"] > best:
                best = m["delta_avg"]
                save_model(model, out / "best.pt", meta={**meta_base, "step": step, "heldout": m})
            if average is not None:
                a = evaluate_windows(average.model, held_out, device=device)
                a.update(step=step, weights="ema", ema=opts.ema)
                record(a, f"step {step}, averaged weights")
                if a["delta_avg"] > best:
                    best = a["delta_avg"]
                    meta = {**meta_base, "step": step, "ema": opts.ema, "heldout": a}
                    save_model(average.model, out / "best.pt", meta=meta)
            save()
    batches.close()
    bar.close()
    best_path = out / "best.pt"
    if not best_path.exists():
        if opts.init and step > 0:
            log(f"no step beat the --init weights' held-out delta_avg {best:.4g}: no best.pt written")
            return Path(opts.init)
        save_model(model, best_path, meta={**meta_base, "step": step})
    return best_path
