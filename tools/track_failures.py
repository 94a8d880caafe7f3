"""Every track that fails, one line each: the evaluation's clips tracked by the shipped pipeline,
and for each track that is lost (more than 8 px off on a visible frame) whether the tracker said
so (flagged) or reported the point as seen there (silent), with where and how far.

A development tool for issue 12's "never silently wrong": medians hide failures, this lists them.
Settings of the engine can be changed for one run (``--set refine.EDGE_WIN=9``) to compare a
variant track by track with ``--compare`` against a saved run (``--save run.npz``).

    .venv/bin/python tools/track_failures.py --families synthetic,photo,deform --clips 3 --points 48
    .venv/bin/python tools/track_failures.py --lone --families photo --clips 2 --points 24 --save a.npz
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from pipstrack.evaluation.metrics import LOST_PX, errors_where  # noqa: E402


def clips(families, count, frames, size, points, seed):
    """``count`` clips of each of ``families`` ("synthetic", "photo" or an eval family)."""
    from pipstrack.evaluation.harness import evaluation_clips

    n = {fam: count if fam in families else 0 for fam in ("synthetic", "photo")}
    others = [f for f in families if f not in n]
    return evaluation_clips(n["synthetic"], n["photo"], others, count, frames, size, points, seed)


def apply_settings(settings):
    """``module.NAME=value`` pairs (modules of pipstrack.engine), values parsed as Python literals."""
    import ast

    for item in settings:
        target, value = item.split("=", 1)
        module, name = target.rsplit(".", 1)
        mod = importlib.import_module(f"pipstrack.engine.{module}")
        if not hasattr(mod, name):
            raise SystemExit(f"pipstrack.engine.{module} has no {name}")
        setattr(mod, name, ast.literal_eval(value))


def track_rows(clip, xy, vis):
    """Per track: (worst visible error, worst error on frames reported visible, frame of it, gt there)."""
    dist = np.linalg.norm(xy - clip.trajs, axis=-1)
    evaluated = np.ones_like(clip.visible)
    evaluated[clip.query_frame, np.arange(dist.shape[1])] = False
    seen = clip.visible & evaluated
    worst = errors_where(dist, seen).max(axis=0)
    claimed = errors_where(dist, seen & vis)
    return worst, claimed.max(axis=0), claimed.argmax(axis=0), seen.any(axis=0)


STAGES: dict = {}  # (frame, point) -> the stages that verified (+) or dropped (-) it, last call


def record_stages():
    """Wraps the refinement's stages so that --show can say which stage verified each frame."""
    from pipstrack.engine import comotion, redetect, refine

    def wrap(module, name, label, mask_arg):
        inner = getattr(module, name)

        def wrapped(*a, **kw):
            mask = a[mask_arg]
            before = mask.copy()
            result = inner(*a, **kw)
            if label == "departed":
                for t, n in zip(*np.nonzero(result)):
                    STAGES.setdefault((int(t), int(n)), []).append("-company")
            else:
                for t, n in zip(*np.nonzero(mask & ~before)):
                    STAGES.setdefault((int(t), int(n)), []).append(label)
            return result

        setattr(module, name, wrapped)

    wrap(refine, "_lk_pass", "lk", 5)
    wrap(refine, "_edge_pass", "edge", 3)
    wrap(redetect, "redetect_pass", "redetect", 2)
    wrap(comotion, "departures", "departed", 1)
    original = refine.refine_trajectories

    def fresh(*a, **kw):  # one call's stages only
        STAGES.clear()
        v = kw.get("verified")
        if v is not None:
            for t, n in zip(*np.nonzero(np.isfinite(v))):
                STAGES.setdefault((int(t), int(n)), []).append("lead")
        return original(*a, **kw)

    refine.refine_trajectories = fresh


def print_track(clip, xy, vis, n):
    """Frame by frame: truth, reported position, error, truth's and the tracker's visibility, and
    the refinement stages that verified (or dropped) the frame."""
    print(f"{clip.name} #{n} (query frame {int(clip.query_frame[n])})")
    for t in range(len(xy)):
        g, p = clip.trajs[t, n], xy[t, n]
        err = float(np.linalg.norm(p - g))
        flag = "SILENT" if vis[t, n] and clip.visible[t, n] and err > LOST_PX else ""
        print(
            f"  {t:3d} gt ({g[0]:6.1f},{g[1]:6.1f}) {'seen  ' if clip.visible[t, n] else 'hidden'}  "
            f"ours ({p[0]:6.1f},{p[1]:6.1f}) {'seen  ' if vis[t, n] else 'hidden'} err {err:6.2f} {flag:6s} "
            + " ".join(STAGES.get((t, n), []))
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default="synthetic,photo,deform,layers,hard")
    ap.add_argument("--clips", type=int, default=3, help="clips per family")
    ap.add_argument("--points", type=int, default=48)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--seed", type=int, default=20000)
    ap.add_argument("--lone", action="store_true", help="every point tracked alone")
    ap.add_argument("--model", default="default")
    ap.add_argument("--precision", default="auto", help="the tracker's precision (fp32, bf16, int8, auto)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (results move by tenths of a pixel with it)")
    ap.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=VALUE")
    ap.add_argument("--save", help="write every track's numbers to this .npz")
    ap.add_argument("--show", action="append", default=[], metavar="CLIP#N", help="track N of CLIP, frame by frame")
    ap.add_argument("--compare", help="a saved run: print the tracks whose worst error changed by 0.5 px or more")
    args = ap.parse_args(argv)

    from pipstrack.engine.weights import load_model
    from pipstrack.evaluation.baselines import pipstrack_method

    apply_settings(args.set)
    show = {}
    for item in args.show:
        name, n = item.split("#")
        show.setdefault(name, []).append(int(n))
    if show:
        record_stages()
    method = pipstrack_method(
        load_model(None if args.model == "default" else args.model),
        "cpu",
        lone=args.lone,
        precision=args.precision,
        threads=args.threads,
    )
    families = [f for f in args.families.split(",") if f]
    saved, totals = {}, {}
    for clip in clips(families, args.clips, args.frames, (256, 320), args.points, args.seed):
        if show and clip.name not in show:
            continue
        xy, vis = method(clip.rgbs, clip.queries)
        for n in show.get(clip.name, []):
            print_track(clip, xy, vis, n)
        xy, vis = np.asarray(xy, np.float64), np.asarray(vis, bool)
        worst, claimed, at, any_seen = track_rows(clip, xy, vis)
        saved[f"{clip.name}/worst"], saved[f"{clip.name}/claimed"] = worst, claimed
        t = totals.setdefault(clip.dataset, [0, 0, 0])
        t[0] += int(any_seen.sum())
        H, W = clip.rgbs.shape[1:3]
        for n in np.flatnonzero(any_seen & (worst > LOST_PX)):
            silent = claimed[n] > LOST_PX
            t[1] += 1
            t[2] += int(silent)
            gx, gy = clip.trajs[at[n], n] if silent else (np.nan, np.nan)
            border = min(gx, gy, W - 1 - gx, H - 1 - gy) if silent else np.nan
            q = int(clip.query_frame[n])
            print(
                f"{clip.name:32s} #{n:<3d} q{q:<3d} worst {worst[n]:7.1f} px  "
                + (
                    f"SILENT {claimed[n]:6.1f} px on frame {at[n]} at ({gx:.0f},{gy:.0f}), {border:.0f} px in"
                    if silent
                    else "flagged"
                ),
                flush=True,
            )
    print()
    for fam, (n, lost, silent) in totals.items():
        share = 100 / max(n, 1)
        print(f"{fam:10s} tracks {n:4d}  lost {lost * share:5.1f} %  silent {silent * share:5.1f} %")
    if args.save:
        np.savez(args.save, **saved)
    if args.compare:
        old = np.load(args.compare)
        for key in sorted(k for k in saved if k.endswith("/worst") and k in old.files):
            a, b = old[key], saved[key]
            finite_a, finite_b = (np.nan_to_num(v, posinf=1e9, neginf=-1e9) for v in (a, b))
            for n in np.flatnonzero(np.abs(finite_a - finite_b) >= 0.5):
                print(f"changed {key[:-6]:32s} #{n:<3d} worst {a[n]:7.1f} -> {b[n]:7.1f} px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
