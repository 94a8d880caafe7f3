"""Track files: the points a user asks for, and the trajectories pipstrack writes.

docs/formats.md is the reference for both. Frames are always the clip's own frame
numbers (e.g. 1001 for ``plate.1001.exr``), never 0-based indices; positions are
full-resolution pixels with pixel centres at integer coordinates, origin top-left, y down.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

FORMAT = "pipstrack-tracks"
VERSION = 1
CONVENTION = "pixels; pixel centres at integer coordinates; origin top-left; x right, y down"


class PointsFileError(ValueError):
    pass


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path, text: str) -> None:
    """Writes through a temporary file in the same folder, so a failure leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written file follows the user's umask
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_points(path) -> list[tuple[str, np.ndarray]]:
    """Query points: ``[(name, (K,3) rows [frame_number, x, y])]``.

    Text/CSV: one point per line ``frame,x,y`` or ``frame x y``; an optional 4th column
    names the track, and lines with the same name are several keyframes of one point.
    Lines starting with ``#`` and a header line (``frame,x,y``) are skipped. JSON: a
    pipstrack tracks file, whose ``anchors`` become the queries.
    """
    path = Path(path)
    if not path.is_file():
        raise PointsFileError(f"points file not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        return _points_from_json(path, text)
    tracks: dict[str, list] = {}
    first_data_line = True
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cells = [c.strip() for c in (line.split(",") if "," in line else line.split())]
        if first_data_line and cells[0].lower() in ("frame", "f"):
            first_data_line = False
            continue
        first_data_line = False
        if len(cells) not in (3, 4):
            raise PointsFileError(
                f"{path}, line {lineno}: expected 'frame,x,y' or 'frame,x,y,name', got {raw.strip()!r}"
            )
        try:
            frame = float(cells[0])
            x, y = float(cells[1]), float(cells[2])
        except ValueError:
            raise PointsFileError(
                f"{path}, line {lineno}: frame, x and y must be numbers, got {raw.strip()!r}"
            ) from None
        if frame != int(frame) or not (math.isfinite(x) and math.isfinite(y)):
            raise PointsFileError(
                f"{path}, line {lineno}: the frame must be a whole number and x, y finite, got {raw.strip()!r}"
            )
        name = cells[3] if len(cells) == 4 else f"point{len(tracks) + 1}"
        while len(cells) == 3 and name in tracks:
            name += "_"
        tracks.setdefault(name, []).append((int(frame), x, y))
    if not tracks:
        raise PointsFileError(f"{path}: no points in the file")
    return [(name, np.array(rows, np.float64)) for name, rows in tracks.items()]


def _points_from_json(path, text):
    try:
        doc = json.loads(text)
        out = [
            (t.get("name") or f"point{i + 1}", np.array(t["anchors"], np.float64).reshape(-1, 3))
            for i, t in enumerate(doc["tracks"])
        ]
    except (ValueError, KeyError, TypeError) as e:
        raise PointsFileError(f"{path}: not a pipstrack tracks file ({e})") from None
    if not out:
        raise PointsFileError(f"{path}: no tracks in the file")
    return out


def grid_points(spec: str, width: int, height: int) -> np.ndarray:
    """``"16x16"`` -> (N,2) positions evenly spread with a half-cell margin."""
    try:
        cols, rows = (int(v) for v in spec.lower().split("x"))
    except ValueError:
        raise ValueError(f"grid must look like 16x16 (columns x rows), got {spec!r}") from None
    if not (1 <= cols <= 256 and 1 <= rows <= 256):
        raise ValueError(f"grid {spec!r}: columns and rows must be between 1 and 256")
    xs = (np.arange(cols) + 0.5) * width / cols - 0.5
    ys = (np.arange(rows) + 0.5) * height / rows - 0.5
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def track_quality(verified, tracked, frame_numbers) -> dict:
    """One track's summary: how many of its frames the tracker verified (it found the point's
    own patch there), how many are estimates (behind an occluder, or where it could not verify),
    and each stretch of estimates as [first, last, found again on] in clip frame numbers (found
    again: None when the point was never verified after it: lost from ``first``).
    Medians hide a lost track; this does not."""
    verified, tracked = np.asarray(verified, bool), np.asarray(tracked, bool)
    rows = np.flatnonzero(tracked)
    unverified = np.concatenate([[0], (~verified[rows]).astype(np.int8), [0]])
    edges = np.diff(unverified)  # +1 where a stretch of estimates starts, -1 after it ends
    gaps = []
    for k, j in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1):
        again = int(frame_numbers[rows[j + 1]]) if j + 1 < len(rows) else None
        gaps.append([int(frame_numbers[rows[k]]), int(frame_numbers[rows[j]]), again])
    n_verified = int((verified & tracked).sum())
    return {"verified_frames": n_verified, "estimated_frames": int(len(rows) - n_verified), "unverified": gaps}


def describe_quality(name: str, quality: dict) -> str | None:
    """A line for the artist about a track with stretches the tracker could not verify, such as
    "feature06: not verified 1017-1033, found again at 1034"; None for a track verified throughout."""
    parts = []
    for first, last, again in quality.get("unverified", []):
        span = f"{first}" if first == last else f"{first}-{last}"
        parts.append(f"not verified {span}, found again at {again}" if again is not None else f"lost from {first}")
    return f"{name}: " + "; ".join(parts) if parts else None


def tracks_document(result, names, anchors, frame_numbers, source: dict, model: dict) -> dict:
    """The JSON document for a :class:`~pipstrack.engine.tracker.TrackResult`; with refinement each
    track also carries its ``quality`` (:func:`track_quality`)."""
    fn = [int(frame_numbers[i]) for i in result.frame_indices]
    tracks = []
    for n, name in enumerate(names):
        pts = []
        for t, f in enumerate(fn):
            x, y = result.xy[t, n]
            if np.isnan(x):
                continue
            pts.append(
                [
                    f,
                    round(float(x), 4),
                    round(float(y), 4),
                    bool(result.visible[t, n]),
                    round(float(result.confidence[t, n]), 4),
                ]
            )
        track = {
            "id": n,
            "name": name,
            "anchors": [[int(a[0]), float(a[1]), float(a[2])] for a in anchors[n]],
            "points": pts,
        }
        if getattr(result, "verified", None) is not None:
            track["quality"] = track_quality(result.verified[:, n], ~np.isnan(result.xy[:, n, 0]), fn)
        tracks.append(track)
    return {
        "format": FORMAT,
        "version": VERSION,
        "coordinates": CONVENTION,
        "source": source,
        "model": model,
        "frames": fn,
        "point_fields": ["frame", "x", "y", "visible", "confidence"],
        "tracks": tracks,
    }


def write_tracks(path, document: dict) -> None:
    """``.json`` (the full document) or ``.csv`` (one row per track and frame)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        atomic_write_text(path, json.dumps(document, indent=1) + "\n")
    elif suffix == ".csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["track", "name", "frame", "x", "y", "visible", "confidence"])
        for t in document["tracks"]:
            for f, x, y, vis, conf in t["points"]:
                w.writerow([t["id"], t["name"], f, x, y, int(vis), conf])
        atomic_write_text(path, buf.getvalue())
    else:
        raise ValueError(f"unknown tracks format {suffix!r} for {path}: use .json or .csv")


def read_tracks(path) -> dict:
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a pipstrack tracks file")
    return doc
