"""The ``pipstrack`` command line.

Every command reports bad input as one line on stderr (``pipstrack: error: ...``) and a
non-zero exit status: 2 for a usage or input problem, 1 for a failure while working,
130 when interrupted.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

EXIT_USAGE, EXIT_FAILURE, EXIT_INTERRUPTED = 2, 1, 130


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def _progress_bar(desc: str, unit: str):
    """A tqdm bar on a terminal; silent when stderr is piped."""
    from tqdm import tqdm

    bar = tqdm(total=1, desc=desc, unit=unit, disable=None, dynamic_ncols=True, leave=True)

    def update(done, total):
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def _parse_frames(spec: str | None, numbers: list[int]) -> tuple[int, int]:
    """``A:B`` in clip frame numbers (inclusive; either side may be empty) -> 0-based indices."""
    first, last = 0, len(numbers) - 1
    if not spec:
        return first, last
    try:
        a, b = spec.split(":")
        a = int(a) if a.strip() else numbers[0]
        b = int(b) if b.strip() else numbers[-1]
    except ValueError:
        raise CliError(f"--frames must look like A:B (clip frame numbers), got {spec!r}") from None
    lookup = {n: i for i, n in enumerate(numbers)}
    for f in (a, b):
        if f not in lookup:
            raise CliError(f"--frames {spec}: the clip has no frame {f} (its frames are {numbers[0]}..{numbers[-1]})")
    if lookup[a] > lookup[b]:
        raise CliError(f"--frames {spec}: the first frame comes after the last")
    return lookup[a], lookup[b]


def _queries(args, source, first):
    """(names, anchors in clip frame numbers, queries in 0-based indices)."""
    import numpy as np

    from .formats import PointsFileError, grid_points, read_points

    numbers = list(source.frame_numbers)
    H, W = source.size
    if args.grid:
        try:
            xy = grid_points(args.grid, W, H)
        except ValueError as e:
            raise CliError(str(e)) from None
        f = numbers[first]
        anchors = [np.array([[f, x, y]]) for x, y in xy]
        names = [f"grid{i + 1:04d}" for i in range(len(xy))]
    else:
        try:
            named = read_points(args.points)
        except PointsFileError as e:
            raise CliError(str(e)) from None
        names = [n for n, _ in named]
        anchors = [a for _, a in named]
    lookup = {n: i for i, n in enumerate(numbers)}
    queries = []
    for name, a in zip(names, anchors):
        rows = []
        for f, x, y in a:
            if int(f) not in lookup:
                raise CliError(f"point {name}: the clip has no frame {int(f)} (its frames are {numbers[0]}..{numbers[-1]})")
            if not (-0.5 <= x <= W - 0.5 and -0.5 <= y <= H - 0.5):
                raise CliError(f"point {name}: ({x:g}, {y:g}) on frame {int(f)} is outside the {W}x{H} frame")
            rows.append([lookup[int(f)], x, y])
        queries.append(np.array(rows))
    return names, anchors, queries


def cmd_track(args) -> int:
    from .formats import tracks_document, write_tracks
    from .frames import open_frames
    from .tracker import Tracker
    from .weights import load_model

    out = Path(args.out)
    if out.suffix.lower() not in (".json", ".csv"):
        raise CliError(f"--out must end in .json or .csv, got {out}")
    source = open_frames(args.input, exposure=args.exposure)
    first, last = _parse_frames(args.frames, list(source.frame_numbers))
    names, anchors, queries = _queries(args, source, first)
    model = load_model(args.model)
    tracker = Tracker(model, device=args.device, iters=args.iters, working_long_side=args.working_size,
                      refine=not getattr(args, "no_refine", False), comotion=not getattr(args, "no_comotion", False))
    log = logging.getLogger("pipstrack")
    log.info("tracking %d points over frames %s..%s of %s on %s", len(queries), source.frame_numbers[first], source.frame_numbers[last], source.name, tracker.device)
    bar, update = _progress_bar("tracking", "frame")
    t0 = time.perf_counter()
    try:
        result = tracker.track(source, queries, frame_range=(first, last), direction=args.direction, progress=update)
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    H, W = source.size
    doc = tracks_document(
        result,
        names,
        anchors,
        source.frame_numbers,
        source={"path": str(args.input), "width": W, "height": H, "frame_count": len(source)},
        model={"weights": getattr(model, "source", None), "working_size": list(result.working_size), "iters": tracker.iters},
    )
    write_tracks(out, doc)
    print(f"wrote {len(names)} tracks x {len(result.frame_indices)} frames to {out} ({elapsed:.1f} s)")
    if args.preview:
        from .preview import write_preview

        bar, update = _progress_bar("preview", "frame")
        try:
            write_preview(source, result.xy, result.visible, args.preview, frame_indices=result.frame_indices, progress=update)
        finally:
            bar.close()
        print(f"wrote preview {args.preview}")
    return 0


def cmd_weights(args) -> int:
    from .weights import DEFAULT_MODEL, KNOWN_SHA256, WeightsError, official_candidates, read_checkpoint, sha256

    def describe(label, path):
        print(f"{label}: {path}")
        if not Path(path).is_file():
            print("  not found")
            return False
        digest = sha256(path)
        known = KNOWN_SHA256.get(Path(path).name)
        verdict = "" if known is None else (" (matches the published checksum)" if known == digest else " (DOES NOT MATCH the published checksum)")
        print(f"  size {Path(path).stat().st_size / 2**20:.1f} MiB, sha256 {digest}{verdict}")
        try:
            ckpt = read_checkpoint(path)
            from .model import Pips
            from .weights import check_state_dict

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


def cmd_demo(args) -> int:
    """Tracks the bundled sample clip, writes tracks, a preview movie and a still, and
    scores the result against the clip's exact ground truth: the README's first command."""
    import numpy as np

    from .formats import read_tracks
    from .sample import load_ground_truth, report, sample_clip_dir, sample_points_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ns = argparse.Namespace(
        input=str(sample_clip_dir()), points=str(sample_points_file()), grid=None, frames=None, model=args.model,
        device=args.device, iters=6, working_size=512, direction="both", exposure=0.0,
        out=str(out / "tracks.json"), preview=str(out / "preview.mp4"),
    )
    cmd_track(ns)

    doc = read_tracks(out / "tracks.json")
    truth = load_ground_truth()
    T, N = truth["visible"].shape
    xy = np.full((T, N, 2), np.nan)
    vis = np.zeros((T, N), bool)
    first = int(truth["frame_numbers"][0])
    for n, track in enumerate(doc["tracks"]):
        for f, x, y, v, _ in track["points"]:
            xy[f - first, n] = (x, y)
            vis[f - first, n] = v
    m, still_frame = report(xy, vis, out)
    print(
        f"against the sample's ground truth: median error {m['median_err_visible']:.2f} px on visible frames, "
        f"{m['median_err_occluded']:.2f} px behind the occluder; delta_avg {m['delta_avg']:.3f}, "
        f"occlusion accuracy {m['occlusion_accuracy']:.3f}, AJ {m['average_jaccard']:.3f}"
    )
    print(f"wrote {out / 'still.png'} (frame {still_frame}, tracks drawn; rings are points estimated behind the occluder)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="pipstrack", description="PIPs point tracking for compositors.")
    p.add_argument("--version", action="version", version=f"pipstrack {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more (to stderr)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("track", help="track points through a movie or an image sequence")
    t.add_argument("input", help="movie (mp4/mov/...), image folder, or pattern like shot.%%04d.exr / shot.####.png")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--points", metavar="FILE", help="points: lines 'frame,x,y[,name]' in clip frame numbers and pixels, or a tracks .json")
    src.add_argument("--grid", metavar="CxR", help="a grid of CxR points on the first tracked frame, e.g. 16x16")
    t.add_argument("--frames", metavar="A:B", help="clip frame numbers to track, inclusive (default: all)")
    t.add_argument("--direction", choices=("both", "forward", "backward"), default="both")
    t.add_argument("--model", default=None, help="weights file, 'default' (shipped) or 'official' (see `pipstrack weights`)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    t.add_argument("--iters", type=int, default=6, help="refinement iterations per window")
    t.add_argument("--working-size", type=int, default=512, help="long side in pixels the network works at (0: full resolution)")
    t.add_argument("--no-refine", action="store_true",
                   help="keep the network's own positions (default: sub-pixel Lucas-Kanade polish of visible frames)")
    t.add_argument("--no-comotion", action="store_true",
                   help="do not fill or recover a point from the points that moved with it (default: do)")
    t.add_argument("--exposure", type=float, default=0.0, help="stops applied to linear (EXR) plates before the display transform")
    t.add_argument("--out", required=True, help="tracks.json or tracks.csv")
    t.add_argument("--preview", metavar="FILE", help="also write the frames with the tracks drawn (.mp4, or .png sequence)")
    t.set_defaults(func=cmd_track)

    w = sub.add_parser("weights", help="show which model weights are installed and check them")
    w.add_argument("files", nargs="*", help="more weights files to check")
    w.set_defaults(func=cmd_weights)

    d = sub.add_parser("demo", help="track the bundled sample clip (tracks.json + preview.mp4)")
    d.add_argument("--out", default="pipstrack-demo", help="output folder")
    d.add_argument("--model", default=None)
    d.add_argument("--device", default="auto")
    d.set_defaults(func=cmd_demo)

    ev = sub.add_parser("eval", help="compare pipstrack with classical trackers on clips with exact ground truth")
    ev.add_argument("--model", default=None, help="weights file, 'default' (shipped) or 'official'")
    ev.add_argument("--synthetic", type=int, default=10, metavar="N", help="held-out synthetic clips (default 10)")
    ev.add_argument("--photo-clips", type=int, default=5, metavar="N", help="scikit-image photo clips (default 5)")
    ev.add_argument("--frames", type=int, default=24, help="frames per clip (default 24)")
    ev.add_argument("--size", default="256x320", help="clip size HxW (default 256x320)")
    ev.add_argument("--points", type=int, default=48, help="points per clip (default 48)")
    ev.add_argument("--baselines", default="zero,lk,blender-loc,blender-perspective", help="comma-separated: zero, lk, blender-loc, blender-perspective ('' for none)")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--seed", type=int, default=20_000,
                    help="draws the clips (default 20000: the held-out set docs/model.md reports; another seed, another draw)")
    ev.add_argument("--json", metavar="FILE", help="also write every number, per clip, to this JSON file")
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
    tr.add_argument("--iters", type=int, default=4, help="refinement iterations in training (inference uses 6 by default)")
    tr.add_argument("--slow", type=float, default=0.0, metavar="P",
                    help="share of slow / near-static clips (0..1); real shots are often slow")
    tr.add_argument("--shake", type=float, default=0.0, metavar="P", help="share of clips with hand-held camera shake (0..1)")
    tr.set_defaults(func=cmd_train)

    sv = sub.add_parser("serve", help="run the tracking service (ZeroMQ) for the Blender add-on and scripts")
    sv.add_argument("--bind", default="tcp://127.0.0.1:5555", help="ZeroMQ endpoint (default tcp://127.0.0.1:5555)")
    sv.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    sv.add_argument("--model", default=None, help="weights file, 'default' or 'official'")
    sv.add_argument("--keys", metavar="DIR", default=None, help="CurveZMQ keys from `pipstrack keys DIR` (required off loopback)")
    sv.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without encryption")
    sv.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    sv.set_defaults(func=cmd_serve)

    pg = sub.add_parser("ping", help="ask a tracking service for its version, model and device")
    pg.add_argument("address", help="e.g. tcp://127.0.0.1:5555")
    pg.add_argument("--timeout", type=float, default=3.0)
    pg.add_argument("--keys", metavar="DIR", default=None, help="CurveZMQ keys folder (client.key_secret, server.key)")
    pg.set_defaults(func=cmd_ping)

    ky = sub.add_parser("keys", help="make CurveZMQ key pairs for a service reachable from other machines")
    ky.add_argument("dir", help="folder for server.key*, NAME.key* and authorized_clients/")
    ky.add_argument("--name", default="client", help="client key name (default client)")
    ky.set_defaults(func=cmd_keys)
    from .export import add_export_parser

    add_export_parser(sub)
    return p


def cmd_serve(args) -> int:
    """Loads the model once and serves jobs until SIGINT/SIGTERM (pipstrack.service)."""
    from .service import ServiceError, serve
    from .weights import load_model

    logging.getLogger("pipstrack").setLevel(args.log_level.upper())
    model = load_model(args.model)
    try:
        serve(model, bind=args.bind, device=args.device, keys_dir=args.keys, insecure=args.insecure)
    except ServiceError as e:
        raise CliError(str(e)) from None
    return 0


def cmd_ping(args) -> int:
    """Exit 0 when a server answers (and prints what it runs), 1 otherwise."""
    from .client import TrackingError, ping

    try:
        h = ping(args.address, timeout=args.timeout, keys_dir=args.keys)
    except TrackingError as e:
        print(f"{args.address}: no usable answer ({e})")
        return EXIT_FAILURE
    print(f"{args.address}: pipstrack {h.get('server')}, protocol {h.get('protocol')}, model {h.get('model')}, device {h.get('device')}")
    return 0


def cmd_keys(args) -> int:
    """Makes the server key pair (once) and a client key pair that the server allows."""
    from .service import ServiceError, make_keys

    try:
        made = make_keys(args.dir, args.name)
    except ServiceError as e:
        raise CliError(str(e)) from None
    for what, path in made.items():
        print(f"made {what} key pair: {path}")
    print(f"server: pipstrack serve --bind tcp://0.0.0.0:5555 --keys {args.dir}")
    print(f"client machine: copy {args.name}.key_secret and server.key (never server.key_secret) into its keys folder")
    return 0


def cmd_train(args) -> int:
    from .tracker import resolve_device
    from .train import TrainOptions, train

    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise CliError(f"--size must look like 128x160, got {args.size!r}") from None
    opts = TrainOptions(
        out=Path(args.out), config=args.config, steps=args.steps, batch=args.batch, lr=args.lr, height=h, width=w,
        device=str(resolve_device(args.device)), threads=args.threads, eval_every=args.eval_every, init=args.init, seed=args.seed,
        iters=args.iters, slow_prob=args.slow, shake_prob=args.shake,
    )
    for name in ("slow", "shake"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise CliError(f"--{name} must be a share between 0 and 1, got {getattr(args, name)}")
    best = train(opts, log=lambda m: print(m, file=sys.stderr))
    print(f"best weights: {best}")
    return 0


def cmd_eval(args) -> int:
    """Prints one Markdown table (pipstrack and the baselines on both datasets); see pipstrack.eval."""
    from .eval import evaluate, write_json
    from .weights import load_model

    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise CliError(f"--size must look like 256x320, got {args.size!r}") from None
    if h < 32 or w < 32 or args.frames < 2 or args.synthetic < 0 or args.photo_clips < 0 or args.points < 1:
        raise CliError("--size must be at least 32x32, --frames at least 2, --points at least 1, clip counts not negative")
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    model = load_model(args.model)
    text, doc = evaluate(model, model_label=str(getattr(model, "source", args.model or "default")), synthetic=args.synthetic,
                         photo=args.photo_clips, frames=args.frames, size=(h, w), points=args.points, baselines=baselines,
                         device=args.device, seed=args.seed)
    print(text)
    if args.json:
        write_json(args.json, doc)
        print(f"\nwrote {args.json}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if getattr(args, "working_size", None) == 0:
        args.working_size = None
    from .frames import FrameReadError
    from .weights import WeightsError

    try:
        return args.func(args)
    except CliError as e:
        print(f"pipstrack: error: {e}", file=sys.stderr)
        return e.code
    except (FileNotFoundError, ValueError, WeightsError) as e:
        print(f"pipstrack: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except FrameReadError as e:
        print(f"pipstrack: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("pipstrack: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
