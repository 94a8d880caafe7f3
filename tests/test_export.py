"""Exports to compositing packages: each file is parsed back with a small reader written here,
converted back through the target's convention, and compared with the track frame by frame."""

import argparse
import csv
import re

import pytest

from pipstrack.cli.export import add_parsers as add_export_parser
from pipstrack.io.export import export_tracks
from pipstrack.io.formats import read_tracks, write_tracks

W, H = 1920, 1080
FRAMES = list(range(1001, 1011))
OCCLUDED = 1005  # track "a" is behind an occluder here
MISSING = 1008  # track "b" has no position here


def truth(name, f):
    """Known synthetic trajectories: straight lines with sub-pixel steps."""
    k = f - 1001
    return {
        "a": (100.25 + 12.5 * k, 200.75 + 7.25 * k),
        "b": (300.0 + 3.5 * k, 900.5 - 2.25 * k),
        "c": (1500.5 - 1.5 * k, 880.25 - 4.0 * k),
        "d": (1480.0 + 0.75 * k, 150.5 + 5.5 * k),
        "e": (320.5 + 2.0 * k, 140.0 + 1.25 * k),
    }[name]


def make_doc():
    tracks = []
    for i, name in enumerate("abcde"):
        pts = []
        for f in FRAMES:
            if name == "b" and f == MISSING:
                continue
            x, y = truth(name, f)
            vis = not (name == "a" and f == OCCLUDED)
            pts.append([f, x, y, vis, 0.9 if vis else 0.2])
        tracks.append({"id": i, "name": name, "anchors": [[1001, *truth(name, 1001)]], "points": pts})
    return {
        "format": "pipstrack-tracks",
        "version": 1,
        "source": {"path": "plate.####.exr", "width": W, "height": H, "frame_count": 10},
        "model": {},
        "frames": FRAMES,
        "point_fields": ["frame", "x", "y", "visible", "confidence"],
        "tracks": tracks,
    }


def expected(name, occluded="keep"):
    return {
        f: truth(name, f)
        for f in FRAMES
        if not (name == "b" and f == MISSING) and not (occluded == "skip" and name == "a" and f == OCCLUDED)
    }


def close(got: dict, want: dict, tol=1e-3):
    assert sorted(got) == sorted(want)
    for f in want:
        assert got[f] == pytest.approx(want[f], abs=tol), f


# ------------------------------------------------------------------ small readers
def nk_curve(text):
    """``{curve [K] x1001 v v x1005 v}`` -> {frame: value}; a bare value is at previous frame + 1."""
    out, frame = {}, None
    for tok in text.strip("{}").split()[1:]:
        if tok.startswith("x"):
            frame = int(tok[1:])
        elif re.fullmatch(r"-?[\d.]+(e-?\d+)?", tok):
            out[frame] = float(tok)
            frame += 1
    return out


def top_level_items(s):
    """Splits a TCL list body into its top-level words (braced groups, quoted strings, bare words)."""
    items, i = [], 0
    while i < len(s):
        c = s[i]
        if c.isspace():
            i += 1
        elif c == "{":
            depth, j = 0, i
            while True:
                if s[j] == "\\":
                    j += 2
                    continue
                depth += {"{": 1, "}": -1}.get(s[j], 0)
                j += 1
                if depth == 0:
                    break
            items.append(s[i:j])
            i = j
        elif c == '"':
            j = i + 1
            while s[j] != '"':
                j += 2 if s[j] == "\\" else 1
            items.append(s[i : j + 1])
            i = j + 1
        else:
            j = i
            while j < len(s) and not s[j].isspace():
                j += 1
            items.append(s[i:j])
            i = j
    return items


def read_nk(text):
    """Tracker4 tracks (name -> {frame: (x, y)} in Nuke coordinates), the column count, and CornerPin2D knobs."""
    body = text[text.index(" tracks {") + len(" tracks ") :]
    tracks_knob = top_level_items(body)[0]
    header, columns, rows = top_level_items(tracks_knob[1:-1])
    ncols = int(header.strip("{}").split()[1])
    assert int(header.strip("{}").split()[2]) == len(top_level_items(rows[1:-1]))
    assert len(top_level_items(columns[1:-1])) == ncols
    tracks = {}
    for row in top_level_items(rows[1:-1]):
        cells = top_level_items(row[1:-1])
        assert len(cells) == ncols, cells
        xs, ys = nk_curve(cells[2]), nk_curve(cells[3])
        assert sorted(xs) == sorted(ys)
        tracks[cells[1].strip('"')] = {f: (xs[f], ys[f]) for f in xs}
    pin = {}
    if "CornerPin2D {" in text:
        node = text[text.index("CornerPin2D {") :]
        for m in re.finditer(r"^ (to|from)(\d) \{(.*)\}$", node, re.M):
            a, b = top_level_items(m.group(3))
            if m.group(1) == "to":
                xs, ys = nk_curve(a), nk_curve(b)
                pin[f"to{m.group(2)}"] = {f: (xs[f], ys[f]) for f in xs}
            else:
                pin[f"from{m.group(2)}"] = (float(a), float(b))
    return tracks, pin


def from_nuke(d):
    return {f: (x - 0.5, H - y - 0.5) for f, (x, y) in d.items()}


def read_ae(text):
    """Header fields and blocks ('Transform\\tPosition' -> {frame: (x, y)}) of AE keyframe data."""
    lines = text.split("\n")
    assert lines[0] == "Adobe After Effects 8.0 Keyframe Data" and "End of Keyframe Data" in lines
    header, blocks, block = {}, {}, None
    for line in lines[1:]:
        cells = line.split("\t")
        if not line.strip() or line == "End of Keyframe Data":
            block = None
        elif not line.startswith("\t"):
            block = blocks.setdefault(line, {})
        elif block is None:
            header[cells[1]] = cells[2]
        elif cells[1] != "Frame":
            block[int(cells[1])] = (float(cells[2]), float(cells[3]))
    return header, blocks


def from_ae(d, offset):
    return {f + offset: (x - 0.5, y - 0.5) for f, (x, y) in d.items()}


def read_fusion(text):
    """BezierSpline name -> {frame: value} of a Fusion .setting."""
    out = {}
    for m in re.finditer(r"(\w+) = BezierSpline \{(.*?)\n\t\t\},", text, re.S):
        out[m.group(1)] = {int(f): float(v) for f, v in re.findall(r"\[(-?\d+)\] = \{ ([-\d.e]+),", m.group(2))}
    return out


def from_fusion(splines, base, offset):
    xs, ys = splines[base + "_X"], splines[base + "_Y"]
    return {f + offset: (xs[f] * W - 0.5, (1 - ys[f]) * H - 0.5) for f in xs}


# ------------------------------------------------------------------ round trips
def test_nuke_tracker_round_trip(tmp_path):
    out = export_tracks(make_doc(), tmp_path / "t.nk")
    text = out.read_text()
    assert f"image format {W} {H}" in text and "Tracker4 {" in text and "CornerPin2D" not in text
    tracks, _ = read_nk(text)
    assert list(tracks) == list("abcde")
    for name in "abcde":
        close(from_nuke(tracks[name]), expected(name))  # clip frame numbers, occluded frame kept


def test_nuke_skip_occluded_and_start_frame(tmp_path):
    out = export_tracks(make_doc(), tmp_path / "t.nk", occluded="skip", start_frame=1000, tracks=["a", "b"])
    tracks, _ = read_nk(out.read_text())
    assert list(tracks) == ["a", "b"]
    for name in "ab":
        close({f + 1000: p for f, p in from_nuke(tracks[name]).items()}, expected(name, "skip"))


def test_nuke_corner_pin(tmp_path):
    doc = make_doc()
    doc["tracks"][1]["points"] = [p for p in doc["tracks"][1]["points"] if p[0] != 1001]  # b starts at 1002
    out = export_tracks(doc, tmp_path / "pin.nk", corner_pin=["b", "c", "d", "e"])
    tracks, pin = read_nk(out.read_text())
    assert list(tracks) == list("bcde")  # the tracker holds the corners when no tracks are named
    for i, name in enumerate("bcde", 1):
        want = {f: p for f, p in expected(name).items() if not (name == "b" and f == 1001)}
        close(from_nuke(pin[f"to{i}"]), want)
        x, y = truth(name, 1002)  # the first frame where all four corners have a position
        assert pin[f"from{i}"] == pytest.approx((x + 0.5, H - (y + 0.5)), abs=1e-3)
    assert "reference_frame 1002" in out.read_text()


def test_after_effects_position_round_trip(tmp_path):
    out = export_tracks(make_doc(), tmp_path / "a.txt", tracks=["a"], fps=23.976)
    header, blocks = read_ae(out.read_text())
    assert header == {
        "Units Per Second": "23.976",
        "Source Width": "1920",
        "Source Height": "1080",
        "Source Pixel Aspect Ratio": "1",
        "Comp Pixel Aspect Ratio": "1",
    }
    ((name, rows),) = blocks.items()
    assert name == "Transform\tPosition" and min(rows) == 0  # frame - first tracked frame
    close(from_ae(rows, 1001), expected("a"))
    out = export_tracks(make_doc(), tmp_path / "b.txt", "ae", tracks=["b"], start_frame=1000, occluded="skip")
    _, blocks = read_ae(out.read_text())
    close(from_ae(blocks["Transform\tPosition"], 1000), expected("b"))


def test_after_effects_corner_pin(tmp_path):
    out = export_tracks(make_doc(), tmp_path / "pin.txt", corner_pin=["b", "c", "d", "e"], occluded="skip")
    _, blocks = read_ae(out.read_text())
    pins = {"Upper Left #2": "e", "Upper Right #3": "d", "Lower Left #4": "b", "Lower Right #5": "c"}
    assert list(blocks) == [f"Effects\tCorner Pin #1\t{k}" for k in pins]
    for label, name in pins.items():
        close(from_ae(blocks[f"Effects\tCorner Pin #1\t{label}"], 1001), expected(name))


def test_fusion_round_trip_and_corner_pin(tmp_path):
    text = export_tracks(make_doc(), tmp_path / "t.setting", start_frame=1001).read_text()
    assert (
        text.startswith("{\n\tTools = ordered() {")
        and text.count("= Transform {") == 5
        and text.count("{") == text.count("}")
    )
    splines = read_fusion(text)
    for name in "abcde":
        close(from_fusion(splines, f"pips_{name}", 1001), expected(name))
    text = export_tracks(make_doc(), tmp_path / "pin.setting", corner_pin=["b", "c", "d", "e"]).read_text()
    assert "= Transform {" not in text and "= CornerPositioner {" in text
    splines = read_fusion(text)
    for corner, name in {"BottomLeft": "b", "BottomRight": "c", "TopRight": "d", "TopLeft": "e"}.items():
        close(from_fusion(splines, f"pips_cornerpin_{corner}", 1001), expected(name))


def test_known_pixel_centres(tmp_path):
    """The centre of the top-left pixel is Nuke (0.5, H-0.5), AE (0.5, 0.5), Fusion (0.5/W, 1-0.5/H);
    the bottom-right pixel's is Nuke (W-0.5, 0.5), AE (W-0.5, H-0.5)."""
    doc = make_doc()
    doc["tracks"] = [
        {"id": 0, "name": "tl", "anchors": [], "points": [[1001, 0.0, 0.0, True, 1.0]]},
        {"id": 1, "name": "br", "anchors": [], "points": [[1001, W - 1.0, H - 1.0, True, 1.0]]},
    ]
    tracks, _ = read_nk(export_tracks(doc, tmp_path / "p.nk").read_text())
    assert tracks["tl"] == {1001: (0.5, H - 0.5)} and tracks["br"] == {1001: (W - 0.5, 0.5)}
    _, blocks = read_ae(export_tracks(doc, tmp_path / "tl.txt", tracks=["tl"]).read_text())
    assert blocks["Transform\tPosition"] == {0: (0.5, 0.5)}
    _, blocks = read_ae(export_tracks(doc, tmp_path / "br.txt", tracks=["br"]).read_text())
    assert blocks["Transform\tPosition"] == {0: (W - 0.5, H - 0.5)}
    splines = read_fusion(export_tracks(doc, tmp_path / "p.setting").read_text())
    assert splines["pips_tl_X"][0] == pytest.approx(0.5 / W, abs=1e-9) and splines["pips_tl_Y"][0] == pytest.approx(
        1 - 0.5 / H, abs=1e-9
    )


def test_csv_and_json_keep_the_pipstrack_convention(tmp_path):
    out = export_tracks(make_doc(), tmp_path / "t.csv", tracks=["a", 1], occluded="skip")
    rows = list(csv.DictReader(out.read_text().splitlines()))
    for name in "ab":
        close(
            {int(r["frame"]): (float(r["x"]), float(r["y"])) for r in rows if r["name"] == name}, expected(name, "skip")
        )
    back = read_tracks(export_tracks(make_doc(), tmp_path / "t.json", tracks=["a"]))
    assert [t["name"] for t in back["tracks"]] == ["a"] and back["source"]["width"] == W
    close({p[0]: (p[1], p[2]) for p in back["tracks"][0]["points"]}, expected("a"))


def test_odd_track_names_stay_valid(tmp_path):
    doc = make_doc()
    doc["tracks"][0]["name"] = 'sign "A" {x} [y] $z\\'
    text = export_tracks(doc, tmp_path / "t.nk", tracks=[0]).read_text()
    tracks, _ = read_nk(text)
    assert len(tracks) == 1
    assert "pips_sign__A___x___y___z_ = Transform" in export_tracks(doc, tmp_path / "t.setting", tracks=[0]).read_text()


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "name,kwargs,message",
    [
        ("t.xyz", {}, "cannot tell the export format"),
        ("t.nk", {"fmt": "maya"}, "unknown export format 'maya'"),
        ("t.nk", {"corner_pin": ["a", "b", "c"]}, "exactly 4 tracks"),
        ("t.nk", {"corner_pin": ["a", "b", "c", "a"]}, "4 different tracks"),
        ("t.nk", {"tracks": ["a", "nope"]}, "unknown track 'nope'"),
        ("t.txt", {}, "one track per Position paste"),
        ("t.nk", {"occluded": "maybe"}, "occluded must be"),
        ("t.txt", {"fmt": "csv"}, "must end in .csv"),
    ],
)
def test_errors_leave_no_file(tmp_path, name, kwargs, message):
    fmt = kwargs.pop("fmt", None)
    with pytest.raises(ValueError, match=re.escape(message)):
        export_tracks(make_doc(), tmp_path / name, fmt, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_empty_tracks_are_errors(tmp_path):
    doc = make_doc()
    doc["tracks"][0]["points"] = [p for p in doc["tracks"][0]["points"] if p[0] == OCCLUDED]
    with pytest.raises(ValueError, match="track 'a' has no positions to export"):
        export_tracks(doc, tmp_path / "t.nk", tracks=["a"], occluded="skip")
    with pytest.raises(ValueError, match="no tracks"):
        export_tracks(dict(doc, tracks=[]), tmp_path / "t.nk")
    assert list(tmp_path.iterdir()) == []


def test_command_line(tmp_path, capsys):
    src = tmp_path / "tracks.json"
    write_tracks(src, make_doc())
    p = argparse.ArgumentParser()
    add_export_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(
        [
            "export",
            str(src),
            str(tmp_path / "pin.txt"),
            "--corner-pin",
            "b,c,d,e",
            "--skip-occluded",
            "--start-frame",
            "1000",
            "--fps",
            "25",
        ]
    )
    assert args.func(args) == 0 and "After Effects" in capsys.readouterr().out
    header, blocks = read_ae((tmp_path / "pin.txt").read_text())
    assert header["Units Per Second"] == "25"
    close(from_ae(blocks["Effects\tCorner Pin #1\tLower Left #4"], 1000), expected("b"))
    args = p.parse_args(["export", str(src), str(tmp_path / "out.dat"), "--format", "nk", "--tracks", "a,c"])
    assert args.func(args) == 0
    assert list(read_nk((tmp_path / "out.dat").read_text())[0]) == ["a", "c"]
    args = p.parse_args(["export", str(src), str(tmp_path / "x.nk"), "--corner-pin", "a,b"])
    with pytest.raises(ValueError, match="exactly 4 tracks"):
        args.func(args)
    assert not (tmp_path / "x.nk").exists()
