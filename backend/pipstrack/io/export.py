"""Track exporters for compositing packages: Nuke (.nk), After Effects keyframe data (.txt),
Fusion/Resolve (.setting), and the CSV/JSON of formats.py.

Each package has its own origin, y direction, pixel centre and frame numbering; half a pixel or
one frame off is invisible until a comp drifts. So every conversion from pipstrack's convention
(formats.py: pixel centres at integer coordinates, origin top-left, y down, clip frame numbers)
is here, one writer per target, and docs/formats.md ("Exports to compositing packages") is the
table of what each target gets.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from .formats import atomic_write_text, write_tracks

FORMATS = {"nk": ".nk", "ae": ".txt", "fusion": ".setting", "csv": ".csv", "json": ".json"}
LABELS = {
    "nk": "Nuke Tracker4",
    "ae": "After Effects keyframe data",
    "fusion": "Fusion/Resolve setting",
    "csv": "CSV",
    "json": "JSON",
}
CORNERS = "bottom-left, bottom-right, top-right, top-left"


def _num(v: float, digits: int = 4) -> str:
    """Fixed decimals without trailing zeros: exact enough (positions are stored to 1e-4 px) and diff-friendly."""
    s = f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s


def _find(doc: dict, ref) -> dict:
    """A track by name, or by id (an int, or a string of digits that is no track's name)."""
    for t in doc["tracks"]:
        if isinstance(ref, str) and t.get("name") == ref:
            return t
    if isinstance(ref, int) or (isinstance(ref, str) and ref.strip().isdigit()):
        for t in doc["tracks"]:
            if t.get("id") == int(ref):
                return t
    names = [str(t.get("name")) for t in doc["tracks"]]
    more = f" and {len(names) - 8} more" if len(names) > 8 else ""
    raise ValueError(f"unknown track {ref!r}: the file has {', '.join(names[:8])}{more}")


def _keep(p, occluded: str) -> bool:
    """A point with a finite position, and, with occluded='skip', one the network saw."""
    ok = p[1] is not None and p[2] is not None and math.isfinite(p[1]) and math.isfinite(p[2])
    return ok and not (occluded == "skip" and len(p) > 3 and not p[3])


def _keys(t: dict, occluded: str) -> list[tuple[int, float, float]]:
    return sorted((int(p[0]), float(p[1]), float(p[2])) for p in t.get("points", []) if _keep(p, occluded))


def export_format(path: Path, fmt: str | None) -> str:
    if fmt is None:
        by_suffix = {s: f for f, s in FORMATS.items()}
        fmt = by_suffix.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(
                f"cannot tell the export format from {path.name!r}: end it in .nk, .txt (After Effects), "
                ".setting (Fusion), .csv or .json, or pass a format"
            )
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    return fmt


def export_tracks(
    doc: dict,
    path,
    fmt: str | None = None,
    *,
    tracks: list | None = None,
    corner_pin: list | None = None,
    fps: float = 24.0,
    occluded: str = "keep",
    start_frame: int | None = None,
    reference_frame: int | None = None,
) -> Path:
    """Writes ``doc`` (a tracks.json document) for a compositing package; returns the path.

    ``tracks``: names or ids (default: all, or the four corners when ``corner_pin`` is given).
    ``corner_pin``: four tracks in the order bottom-left, bottom-right, top-right, top-left (as the
    image is seen). ``occluded``: "keep" writes the positions estimated through occlusion, "skip"
    leaves those frames out; frames without a position are always left out. ``start_frame``: the
    clip frame written as frame 0 (default: the first tracked frame for ae and fusion, 0 for nk,
    which keeps clip frame numbers). ``reference_frame``: clip frame of the corner pin's "from"
    (default: the first frame where all four corners have a position). Every check happens before
    anything is written, and the write is atomic, so a failed export leaves no file.
    """
    path = Path(path)
    fmt = export_format(path, fmt)
    if occluded not in ("keep", "skip"):
        raise ValueError(f"occluded must be 'keep' or 'skip', got {occluded!r}")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if not doc.get("tracks"):
        raise ValueError("the tracks file has no tracks")
    if corner_pin is not None and len(corner_pin) != 4:
        raise ValueError(f"a corner pin needs exactly 4 tracks ({CORNERS}), got {len(corner_pin)}")
    explicit = tracks is not None
    chosen = [
        _find(doc, r)
        for r in (tracks if explicit else corner_pin if corner_pin is not None else [t["id"] for t in doc["tracks"]])
    ]
    if explicit and not chosen:
        raise ValueError("no track selected: name at least one track")
    chosen = list({id(t): t for t in chosen}.values())
    keyed = [(t["name"], _keys(t, occluded)) for t in chosen]
    why = " (occluded on all its frames, and occluded frames are skipped)" if occluded == "skip" else ""
    for name, k in keyed:
        if explicit and not k:
            raise ValueError(f"track {name!r} has no positions to export{why}")
    keyed = [(n, k) for n, k in keyed if k]
    if not keyed:
        raise ValueError("no track has a position to export")

    if fmt in ("csv", "json"):
        if corner_pin is not None or start_frame is not None:
            raise ValueError(
                f"{fmt} exports keep clip frame numbers and have no corner pin: leave out corner_pin and start_frame"
            )
        if path.suffix.lower() != FORMATS[fmt]:
            raise ValueError(f"a {fmt} export must end in {FORMATS[fmt]}, got {path.name!r}")
        names = {n for n, _ in keyed}
        sub = [dict(t, points=[p for p in t["points"] if _keep(p, occluded)]) for t in chosen if t["name"] in names]
        write_tracks(path, dict(doc, tracks=sub))
        return path

    src = doc.get("source") or {}
    W, H = src.get("width"), src.get("height")
    if not (isinstance(W, int) and isinstance(H, int) and W > 0 and H > 0):
        raise ValueError("the tracks file has no source width/height, which this export needs to convert coordinates")
    corners, ref = None, None
    if corner_pin is not None:
        ct = [_find(doc, r) for r in corner_pin]
        if len({id(t) for t in ct}) != 4:
            raise ValueError(f"a corner pin needs 4 different tracks ({CORNERS})")
        corners = [(t["name"], _keys(t, occluded)) for t in ct]
        common = set.intersection(*({f for f, _, _ in k} for _, k in corners))
        if reference_frame is None:
            if not common:
                raise ValueError("corner pin: there is no frame where all four tracks have a position")
            ref = min(common)
        elif reference_frame not in common:
            raise ValueError(f"corner pin: not all four tracks have a position on reference frame {reference_frame}")
        else:
            ref = reference_frame
        if fmt == "ae" and explicit:
            raise ValueError("an After Effects corner pin paste holds only the four corners: leave out tracks")
    elif fmt == "ae" and len(keyed) != 1:
        raise ValueError(
            "After Effects takes one track per Position paste: "
            f"choose one of {', '.join(n for n, _ in keyed[:8])} with tracks"
        )
    first = min(doc.get("frames") or [k[0][0] for _, k in keyed])
    shift = start_frame if start_frame is not None else (0 if fmt == "nk" else first)
    if fmt == "nk":
        text = _nuke(
            keyed,
            corners,
            W,
            H,
            shift,
            ref if ref is not None else (reference_frame if reference_frame is not None else first),
        )
    elif fmt == "ae":
        text = _after_effects(keyed, corners, W, H, fps, shift)
    else:
        text = _fusion(keyed if corners is None or explicit else [], corners, W, H, shift)
    atomic_write_text(path, text)
    return path


# ---------------------------------------------------------------- Nuke
# Tracker4's `tracks` knob: a table header {1 31 N}, 31 column definitions, then one row per track,
# the layout of a Tracker4 saved by Nuke (seen in public scripts) and written by 3DEqualizer's exporter;
# not opened in Nuke here.
_NK_COLUMNS = (
    [("5 1 20", "enable e"), ("3 1 75", "name name")]
    + [("2 1 58", f"track_{a} track_{a}") for a in "xy"]
    + [("2 1 63", f"offset_{a} offset_{a}") for a in "xy"]
    + [("4 1 27", f"{c} {c}") for c in "TRS"]
    + [("2 0 45", "error error")]
    + [
        ("1 1 0", f"{k} {k}")
        for k in ("error_min", "error_max", *(f"{p}_{s}" for p in ("pattern", "search") for s in "xyrt"))
    ]
    + [
        ("2 1 0", f"{k} {k}")
        for k in (
            "key_track",
            *(f"key_{p}_{s}" for p in ("search", "track") for s in "xyrt"),
            "key_centre_offset_x",
            "key_centre_offset_y",
        )
    ]
)


def _tcl(s: str) -> str:
    """A double-quoted TCL word: backslash the characters TCL would interpret."""
    return '"' + re.sub(r'([\\"$\[\]{}])', r"\\\1", str(s)) + '"'


def _nk_curve(frames: list[int], values: list[float]) -> str:
    """``{curve x1001 v v ...}``: ``x<frame>`` starts each run of consecutive frames and is repeated on
    the run's second key, so a bare value means "previous frame + 1" whichever step rule the reader
    applies after a gap (3DEqualizer's exporter does the same)."""
    out = ["curve"]
    for i, (f, v) in enumerate(zip(frames, values)):
        if i == 0 or f != frames[i - 1] + 1 or (i >= 2 and frames[i - 1] != frames[i - 2] + 1):
            out.append(f"x{f}")
        out.append(_num(v))
    return "{" + " ".join(out) + "}"


def _nuke(keyed, corners, W, H, shift, ref) -> str:
    """Tracker4 with one track per pipstrack track, plus a CornerPin2D when asked. Nuke: origin
    bottom-left, y up, pixel centres at +0.5, so (x, y) becomes (x + 0.5, H - (y + 0.5))."""

    def curves(keys):
        fr = [f - shift for f, _, _ in keys]
        return _nk_curve(fr, [x + 0.5 for _, x, _ in keys]), _nk_curve(fr, [H - (y + 0.5) for _, _, y in keys])

    rows = []
    for name, keys in keyed:
        f0 = keys[0][0] - shift
        cx, cy = curves(keys)
        rows.append(
            f" {{ {{curve K x{f0} 1}} {_tcl(name)} {cx} {cy} {{curve K x{f0} 0}} {{curve K x{f0} 0}} 1 0 0 "
            f"{{curve x{f0} 0}} 0 0 -32 -32 32 32 -22 -22 22 22 " + "{} " * 11 + "}"
        )
    cols = "\n".join(f"{{ {t} {n} 1 }}" for t, n in _NK_COLUMNS)
    last = max(k[-1][0] for _, k in keyed + (corners or []))
    lines = [
        f"# pipstrack export: {len(keyed)} track(s), image format {W} {H}, "
        f"frames {min(k[0][0] for _, k in keyed) - shift}..{last - shift}"
        + (f" (clip frame - {shift})" if shift else " (clip frame numbers)"),
        f"# Nuke coordinates: (x + 0.5, {H} - (y + 0.5)) of pipstrack's (x, y); paste into the Node Graph",
        "set cut_paste_input [stack 0]",
        "push $cut_paste_input",
        "Tracker4 {",
        f" tracks {{ {{ 1 {len(_NK_COLUMNS)} {len(rows)} }}",
        "{ " + cols + "\n}",
        "{\n" + "\n".join(rows) + "\n}",
        "}",
        f" reference_frame {ref - shift}",
        " name pipstrack_tracks",
        f' label "pipstrack {W}x{H}"',
        "}",
    ]
    if corners:
        lines += ["push $cut_paste_input", "CornerPin2D {"]
        for i, (_name, keys) in enumerate(corners, 1):
            cx, cy = curves(keys)
            lines.append(f" to{i} {{{cx} {cy}}}")
        for i, (_name, keys) in enumerate(corners, 1):
            ((x, y),) = [(x, y) for f, x, y in keys if f == ref]
            lines.append(f" from{i} {{{_num(x + 0.5)} {_num(H - (y + 0.5))}}}")
        lines += [" name pipstrack_cornerpin", f' label "pipstrack {W}x{H}, reference frame {ref - shift}"', "}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- After Effects
def _after_effects(keyed, corners, W, H, fps, shift) -> str:
    """The text AE pastes onto a layer. AE: origin top-left, y down, pixel (0, 0) spans 0..1, so its
    centre is (0.5, 0.5): (x, y) becomes (x + 0.5, y + 0.5). Frames are relative (AE pastes the
    first key at the current time)."""
    lines = [
        "Adobe After Effects 8.0 Keyframe Data",
        "",
        f"\tUnits Per Second\t{_num(fps, 6)}",
        f"\tSource Width\t{W}",
        f"\tSource Height\t{H}",
        "\tSource Pixel Aspect Ratio\t1",
        "\tComp Pixel Aspect Ratio\t1",
        "",
    ]
    if corners:  # AE's Corner Pin parameters: Upper Left #2, Upper Right #3, Lower Left #4, Lower Right #5
        bl, br, tr, tl = corners
        for label, (_, keys) in zip(
            ("Upper Left #2", "Upper Right #3", "Lower Left #4", "Lower Right #5"), (tl, tr, bl, br)
        ):
            lines += [f"Effects\tCorner Pin #1\t{label}", "\tFrame\tX pixels\tY pixels\t"]
            lines += [f"\t{f - shift}\t{_num(x + 0.5)}\t{_num(y + 0.5)}\t" for f, x, y in keys] + [""]
    else:
        ((_, keys),) = keyed
        lines += ["Transform\tPosition", "\tFrame\tX pixels\tY pixels\tZ pixels\t"]
        lines += [f"\t{f - shift}\t{_num(x + 0.5)}\t{_num(y + 0.5)}\t0\t" for f, x, y in keys] + [""]
    return "\n".join(lines + ["End of Keyframe Data", ""])


# ---------------------------------------------------------------- Fusion / DaVinci Resolve
def _fusion(keyed, corners, W, H, shift) -> str:
    """A .setting (Lua table) with, per track, a Transform whose Center follows the track through an
    XYPath, and a CornerPositioner for a corner pin. Fusion points are normalised, origin bottom-left,
    y up, (1, 1) the top-right corner: (x, y) becomes ((x + 0.5) / W, 1 - (y + 0.5) / H)."""
    tools, used = [], set()

    def ident(name):
        base = "pips_" + re.sub(r"\W", "_", str(name), flags=re.ASCII)
        out, n = base, 2
        while out in used:
            out, n = f"{base}_{n}", n + 1
        used.add(out)
        return out

    def path(base, keys):
        for axis, color, conv in (
            ("X", "Red = 255, Green = 0, Blue = 0", lambda x, y: (x + 0.5) / W),
            ("Y", "Red = 0, Green = 255, Blue = 0", lambda x, y: 1 - (y + 0.5) / H),
        ):
            kf = "".join(
                f"\t\t\t\t[{f - shift}] = {{ {_num(conv(x, y), 10)}, Flags = {{ Linear = true }} }},\n"
                for f, x, y in keys
            )
            tools.append(
                f"\t\t{base}_{axis} = BezierSpline {{\n\t\t\tSplineColor = {{ {color} }},\n\t\t\tNameSet = true,\n"
                f"\t\t\tKeyFrames = {{\n{kf}\t\t\t}}\n\t\t}},\n"
            )
        tools.append(
            f"\t\t{base}_Path = XYPath {{\n\t\t\tShowKeyPoints = false,\n"
            '\t\t\tDrawMode = "ModifyOnly",\n\t\t\tInputs = {\n'
            f'\t\t\t\tX = Input {{ SourceOp = "{base}_X", Source = "Value", }},\n'
            f'\t\t\t\tY = Input {{ SourceOp = "{base}_Y", Source = "Value", }},\n\t\t\t}},\n\t\t}},\n'
        )
        return f'Input {{ SourceOp = "{base}_Path", Source = "Value", }}'

    for i, (name, keys) in enumerate(keyed):
        base = ident(name)
        center = path(base, keys)
        tools.append(
            f"\t\t{base} = Transform {{\n\t\t\tNameSet = true,\n\t\t\tInputs = {{\n"
            f"\t\t\t\tCenter = {center},\n\t\t\t}},\n"
            f"\t\t\tViewInfo = OperatorInfo {{ Pos = {{ 0, {33 * i} }} }},\n\t\t}},\n"
        )
    if corners:
        base = ident("cornerpin")
        bl, br, tr, tl = corners
        inputs = "".join(
            f"\t\t\t\t{inp} = {path(f'{base}_{inp}', keys)},\n"
            for inp, (_, keys) in (("TopLeft", tl), ("TopRight", tr), ("BottomLeft", bl), ("BottomRight", br))
        )
        tools.append(
            f"\t\t{base} = CornerPositioner {{\n\t\t\tNameSet = true,\n\t\t\tInputs = {{\n{inputs}\t\t\t}},\n"
            f"\t\t\tViewInfo = OperatorInfo {{ Pos = {{ 110, 0 }} }},\n\t\t}},\n"
        )
    return "{\n\tTools = ordered() {\n" + "".join(tools) + "\t},\n}\n"
