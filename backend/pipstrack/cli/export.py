"""``pipstrack export``: tracks files to Nuke, After Effects, Fusion/Resolve, CSV or JSON."""

from __future__ import annotations

from ..io.export import CORNERS, FORMATS, LABELS, export_format, export_tracks
from ..io.formats import read_tracks


def _list(spec: str | None) -> list[str] | None:
    return None if spec is None else [c.strip() for c in spec.split(",") if c.strip()]


def add_parsers(sub) -> None:
    e = sub.add_parser("export", help="write tracks for Nuke, After Effects, Fusion/Resolve, CSV or JSON")
    e.add_argument("tracks_json", metavar="TRACKS.json", help="a pipstrack tracks file")
    e.add_argument(
        "out", metavar="OUT", help=".nk (Nuke), .txt (After Effects), .setting (Fusion/Resolve), .csv or .json"
    )
    e.add_argument("--format", choices=list(FORMATS), help="default: from OUT's suffix")
    e.add_argument("--tracks", metavar="A,B", help="track names (or ids) to export; default all")
    e.add_argument("--corner-pin", metavar="BL,BR,TR,TL", help=f"four tracks for a corner pin: {CORNERS}")
    e.add_argument(
        "--fps", type=float, default=24.0, help="frames per second (After Effects' Units Per Second; default 24)"
    )
    e.add_argument(
        "--skip-occluded", action="store_true", help="leave out frames where a point is estimated behind an occluder"
    )
    e.add_argument(
        "--start-frame",
        type=int,
        metavar="N",
        help="clip frame written as frame 0 (default: first tracked frame for ae/fusion; nk keeps clip frames)",
    )
    e.add_argument("--reference-frame", type=int, metavar="N", help="clip frame of the corner pin's 'from' corners")
    e.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    import json

    from .common import CliError, check_writable

    check_writable(args.out, "export")
    try:
        doc = read_tracks(args.tracks_json)
    except json.JSONDecodeError as e:
        raise CliError(f"{args.tracks_json}: not a pipstrack tracks file (JSON error: {e})") from None
    except OSError as e:
        raise CliError(f"{args.tracks_json}: {e.strerror}") from None
    out = export_tracks(
        doc,
        args.out,
        args.format,
        tracks=_list(args.tracks),
        corner_pin=_list(args.corner_pin),
        fps=args.fps,
        occluded="skip" if args.skip_occluded else "keep",
        start_frame=args.start_frame,
        reference_frame=args.reference_frame,
    )
    print(f"wrote {LABELS[export_format(out, args.format)]} to {out}")
    return 0
