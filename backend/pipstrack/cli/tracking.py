"""``pipstrack track`` and ``pipstrack demo``."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from .common import CliError, add_device_options, add_threads_option, check_writable, progress_bar, resolve_threads


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

    from ..io.formats import PointsFileError, grid_points, read_points

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
                raise CliError(
                    f"point {name}: the clip has no frame {int(f)} (its frames are {numbers[0]}..{numbers[-1]})"
                )
            if not (-0.5 <= x <= W - 0.5 and -0.5 <= y <= H - 0.5):
                raise CliError(f"point {name}: ({x:g}, {y:g}) on frame {int(f)} is outside the {W}x{H} frame")
            rows.append([lookup[int(f)], x, y])
        queries.append(np.array(rows))
    return names, anchors, queries


def cmd_track(args) -> int:
    from ..engine.tracker import Tracker
    from ..engine.weights import load_model
    from ..io.formats import tracks_document, write_tracks
    from ..io.frames import open_frames

    out = Path(args.out)
    if out.suffix.lower() not in (".json", ".csv"):
        raise CliError(f"--out must end in .json or .csv, got {out}")
    check_writable(out, "tracks file")
    if args.preview:  # found now, not after the whole run
        from ..io.preview import check_preview_target

        try:
            check_preview_target(args.preview)
        except ValueError as e:
            raise CliError(f"--preview: {e}") from None
        check_writable(args.preview, "preview")
    source = open_frames(args.input, exposure=args.exposure)
    first, last = _parse_frames(args.frames, list(source.frame_numbers))
    names, anchors, queries = _queries(args, source, first)
    model = load_model(args.model)
    tracker = Tracker(
        model,
        device=args.device,
        iters=args.iters,
        working_long_side=args.working_size,
        precision=getattr(args, "precision", "auto"),
        refine=not getattr(args, "no_refine", False),
        comotion=not getattr(args, "no_comotion", False),
        lead=not getattr(args, "no_lead", False),
        company_lead=not getattr(args, "no_company_lead", False),
        threads=resolve_threads(getattr(args, "threads", "auto")),
    )
    log = logging.getLogger("pipstrack")
    log.info(
        "tracking %d points over frames %s..%s of %s on %s",
        len(queries),
        source.frame_numbers[first],
        source.frame_numbers[last],
        source.name,
        tracker.device,
    )
    bar, update = progress_bar("tracking", "frame")
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
        model={
            "weights": getattr(model, "source", None),
            "working_size": list(result.working_size),
            "iters": tracker.iters,
        },
    )
    write_tracks(out, doc)
    print(f"wrote {len(names)} tracks x {len(result.frame_indices)} frames to {out} ({elapsed:.1f} s)")
    _report_quality(doc)
    if args.preview:
        from ..io.preview import write_preview

        bar, update = progress_bar("preview", "frame")
        try:
            write_preview(
                source, result.xy, result.visible, args.preview, frame_indices=result.frame_indices, progress=update
            )
        finally:
            bar.close()
        print(f"wrote preview {args.preview}")
    return 0


def _report_quality(doc: dict, limit: int = 12) -> None:
    """Names the tracks with stretches the tracker could not verify (estimates behind an
    occluder, or a point it lost), so nobody learns it from a median."""
    from ..io.formats import describe_quality

    lines = [describe_quality(t["name"], t["quality"]) for t in doc["tracks"] if "quality" in t]
    lines = [line for line in lines if line]
    if not lines:
        return
    lost = sum(1 for t in doc["tracks"] if any(g[2] is None for g in t.get("quality", {}).get("unverified", [])))
    print(f"{len(lines)} of {len(doc['tracks'])} tracks have frames that are estimates, not verified; {lost} end lost:")
    for line in lines[:limit]:
        print(f"  {line}")
    if len(lines) > limit:
        print(f"  ... and {len(lines) - limit} more (see 'quality' in the tracks file)")


def cmd_demo(args) -> int:
    """Tracks the bundled sample clip, writes tracks, a preview movie and a still, and
    scores the result against the clip's exact ground truth: the README's first command."""
    import numpy as np

    from ..datasets.sample import load_ground_truth, sample_clip_dir, sample_points_file
    from ..evaluation.sample_report import report
    from ..io.formats import read_tracks

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ns = argparse.Namespace(
        input=str(sample_clip_dir()),
        points=str(sample_points_file()),
        grid=None,
        frames=None,
        model=args.model,
        device=args.device,
        iters=6,
        working_size=512,
        direction="both",
        exposure=0.0,
        out=str(out / "tracks.json"),
        preview=str(out / "preview.mp4"),
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
    print(
        f"wrote {out / 'still.png'} (frame {still_frame}, tracks drawn; rings are points estimated behind the occluder)"
    )
    return 0


def add_parsers(sub) -> None:
    t = sub.add_parser("track", help="track points through a movie or an image sequence")
    t.add_argument("input", help="movie (mp4/mov/...), image folder, or pattern like shot.%%04d.exr / shot.####.png")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--points",
        metavar="FILE",
        help="points: lines 'frame,x,y[,name]' in clip frame numbers and pixels, or a tracks .json",
    )
    src.add_argument("--grid", metavar="CxR", help="a grid of CxR points on the first tracked frame, e.g. 16x16")
    t.add_argument("--frames", metavar="A:B", help="clip frame numbers to track, inclusive (default: all)")
    t.add_argument("--direction", choices=("both", "forward", "backward"), default="both")
    t.add_argument(
        "--model", default=None, help="weights file, 'default' (shipped) or 'official' (see `pipstrack weights`)"
    )
    add_device_options(t)
    t.add_argument("--iters", type=int, default=6, help="refinement iterations per window")
    t.add_argument(
        "--working-size", type=int, default=512, help="long side in pixels the network works at (0: full resolution)"
    )
    add_threads_option(t)
    t.add_argument(
        "--no-refine",
        action="store_true",
        help="keep the network's own positions (default: sub-pixel Lucas-Kanade polish of visible frames)",
    )
    t.add_argument(
        "--no-comotion",
        action="store_true",
        help="do not fill or recover a point from the points that moved with it (default: do)",
    )
    t.add_argument(
        "--no-lead",
        action="store_true",
        help="run the network over every frame of every point (default: strict KLT steps go first, "
        "the network runs from where they fail)",
    )
    t.add_argument(
        "--no-company-lead",
        action="store_true",
        help="run the network for every point the KLT steps lose (default: the points they keep that "
        "moved with it carry it, and the network runs only where they cannot)",
    )
    t.add_argument(
        "--exposure", type=float, default=0.0, help="stops applied to linear (EXR) plates before the display transform"
    )
    t.add_argument("--out", required=True, help="tracks.json or tracks.csv")
    t.add_argument(
        "--preview", metavar="FILE", help="also write the frames with the tracks drawn (.mp4, or .png sequence)"
    )
    t.set_defaults(func=cmd_track)

    d = sub.add_parser("demo", help="track the bundled sample clip (tracks.json + preview.mp4)")
    d.add_argument("--out", default="pipstrack-demo", help="output folder")
    d.add_argument("--model", default=None)
    d.add_argument("--device", default="auto")
    d.set_defaults(func=cmd_demo)
