"""How well co-motion's fill (pipstrack.engine.comotion.comotion_fill) carries hidden frames,
on its own: ground-truth trajectories of the evaluation's clip families (exact motion: homography,
non-rigid deformation, layers, 240-frame shots, hand-held shake), 0.1 px of noise on the
trustworthy frames, random gaps hidden from it (40 % of them open-ended, running to the clip's
end), scored against the truth on the hidden frames.

    .venv/bin/python benchmarks/bench_comotion_fill.py [--clips 3] [--points 48] [--gaps 2]

No network and no images are involved (the clips' frames are rendered but unused), so it runs in a
minute and isolates the motion model: where the fill is wrong here, no polish can start from it.
Prints, per family, the median and 90th-percentile error of the filled frames and the share more
than 2 px off.
"""

import argparse

import numpy as np

from pipstrack.engine.comotion import comotion_fill
from pipstrack.evaluation.harness import family_clips, photo_clips

FAMILIES = ("photo", "deform", "layers", "long", "hard")


def hide_gaps(trusted: np.ndarray, rng: np.random.Generator, gaps: int, share: float = 0.4) -> np.ndarray:
    """Which of the ``trusted`` frames to hide: ``gaps`` random gaps per point for two thirds of
    the points; 40 % of the gaps run to the clip's end."""
    T, N = trusted.shape
    hidden = np.zeros_like(trusted)
    for n in np.repeat(rng.permutation(N)[: 2 * N // 3], gaps):
        start = int(rng.integers(2, T - 4))
        end = T if rng.random() < share else int(rng.integers(start + 2, min(T, start + 40)))
        hidden[start:end, n] = True
    return hidden & trusted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--points", type=int, default=48)
    ap.add_argument("--gaps", type=int, default=2, help="gaps per point (more: fewer neighbours seen at once)")
    args = ap.parse_args()
    size, frames = (288, 512), 48
    print(f"{'family':8} {'filled':>7} {'median px':>10} {'p90 px':>8} {'> 2 px':>7}")
    for family in FAMILIES:
        if family == "photo":
            clips = photo_clips(args.clips, frames, size, args.points)
        else:
            clips = family_clips(family, args.clips, frames, size, args.points)
        errs = []
        for k, clip in enumerate(clips):
            rng = np.random.default_rng(k)
            truth = np.asarray(clip.trajs, float)
            trusted = np.asarray(clip.visible, bool)
            hidden = hide_gaps(trusted, rng, args.gaps)
            xy = truth + rng.normal(0, 0.1, truth.shape)
            pred = comotion_fill(xy, trusted & ~hidden)
            filled = hidden & np.isfinite(pred[..., 0])
            errs.append(np.linalg.norm(pred - truth, axis=-1)[filled])
        e = np.concatenate(errs)
        print(f"{family:8} {len(e):7d} {np.median(e):10.2f} {np.percentile(e, 90):8.2f} {100 * np.mean(e > 2):6.1f}%")


if __name__ == "__main__":
    main()
