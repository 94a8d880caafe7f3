"""pipstrack's conventions, in one place: pixels and Blender markers, frame numbers, the
network's working size, and the display transform.

Used by the backend, by the Blender extension (this file is vendored into it whole, so it
imports the standard library and numpy only; OpenCV only inside :func:`resize_to_working`,
which the extension never calls) and by the tests, which check it against Blender itself
(tests/test_conventions.py), never against a restated formula.

**Sizes** are ``(height, width)``, in that order, as numpy shapes are; a function that needs
Blender's width and height takes them by keyword (``width=``, ``height=``), so the order can
never be swapped by accident.

**Pixels**: x to the right, y down, the centre of the top-left pixel at (0, 0), so its edges
lie at -0.5 and 0.5 and a W-wide frame spans -0.5 .. W - 0.5.

**Blender markers** (``MovieTrackingMarker.co``): 0..1 across the frame, origin at the bottom
left, y up, edges at 0 and 1. Pixel x of a W-wide clip is ``co.x = (x + 0.5) / W`` and pixel y
of an H-high clip ``co.y = 1 - (y + 0.5) / H`` (Blender's feature detector writes libmv's
pixel-centre positions this way).

**Frames**: a job counts the clip's frames from 0 (job index ``i``); Blender counts clip frames
from 1 (clip frame ``c = i + 1``) and shows clip frame ``c`` on scene frame
``c + frame_start - 1``. An image sequence shows file number ``first + (c - 1) + frame_offset``,
where ``first`` is the number in the clip's file name, found by Blender's rule: the extension
is stripped first, then the last run of digits in what is left is the number
(``plate.1001.jp2`` -> 1001, never 1002 of ``.jp2``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

# -- pixels and Blender markers -------------------------------------------------------------


def pixel_to_marker(xy, *, width: int, height: int) -> np.ndarray:
    """Pixel positions (..., 2) -> Blender marker ``co`` (..., 2)."""
    xy = np.asarray(xy, dtype=np.float64)
    return np.stack([(xy[..., 0] + 0.5) / width, 1.0 - (xy[..., 1] + 0.5) / height], axis=-1)


def marker_to_pixel(co, *, width: int, height: int) -> np.ndarray:
    """Blender marker ``co`` (..., 2) -> pixel positions (..., 2)."""
    co = np.asarray(co, dtype=np.float64)
    return np.stack([co[..., 0] * width - 0.5, (1.0 - co[..., 1]) * height - 0.5], axis=-1)


def inside_frame(xy, *, width: int, height: int) -> np.ndarray:
    """(...,) True where a pixel position lies on the frame (edges included)."""
    xy = np.asarray(xy, dtype=np.float64)
    x, y = xy[..., 0], xy[..., 1]
    return (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)


def window_inside(xy, *, width: int, height: int, half: int) -> np.ndarray:
    """(...,) True where a matching window ``half`` px either side of each pixel position lies
    wholly on the frame. Why: past the border a window holds replicated pixels, which a match can
    find anywhere along the edge (a point leaving the frame was verified on a look-alike 10 px
    away); the polish, the lead and re-detection all judge their matches by this one rule."""
    xy = np.asarray(xy, dtype=np.float64)
    x, y = xy[..., 0], xy[..., 1]
    return (x >= half) & (x <= width - 1 - half) & (y >= half) & (y <= height - 1 - half)


# -- frame numbers ---------------------------------------------------------------------------


def job_index_to_clip_frame(index: int) -> int:
    """A job's frame index (0-based) -> Blender's clip frame (1-based)."""
    return int(index) + 1


def clip_frame_to_job_index(clip_frame: int) -> int:
    return int(clip_frame) - 1


def clip_to_scene_frame(clip_frame: int, frame_start: int) -> int:
    """Clip frame -> the scene frame Blender shows it on (``MovieClip.frame_start``)."""
    return int(clip_frame) + int(frame_start) - 1


def scene_to_clip_frame(scene_frame: int, frame_start: int) -> int:
    return int(scene_frame) - int(frame_start) + 1


def file_number(first: int, clip_frame: int, frame_offset: int = 0) -> int:
    """The file number (or a movie's 1-based frame) Blender shows on ``clip_frame``."""
    return int(first) + int(clip_frame) - 1 + int(frame_offset)


@dataclass(frozen=True)
class SequenceName:
    """A numbered file name split by Blender's rule: ``head + number (digits wide) + tail``.

    ``head`` keeps the folder; ``tail`` keeps whatever follows the number, extension included.
    """

    head: str
    number: int
    digits: int
    tail: str

    def path(self, number: int) -> str:
        """The file of the same sequence with ``number`` (zero-padded to ``digits``)."""
        return f"{self.head}{int(number):0{self.digits}d}{self.tail}"


_LAST_DIGITS = re.compile(r"(\d+)(?!.*\d)")


def split_sequence_name(path: str) -> SequenceName | None:
    """``/a/plate.1001.exr`` -> SequenceName("/a/plate.", 1001, 4, ".exr"); None when the
    file name (extension stripped) holds no digits."""
    folder, name = os.path.split(os.fspath(path))
    stem, ext = os.path.splitext(name)
    m = _LAST_DIGITS.search(stem)
    if m is None:
        return None
    return SequenceName(
        os.path.join(folder, stem[: m.start()]), int(m.group(1)), len(m.group(1)), stem[m.end() :] + ext
    )


# -- what a job can ask -----------------------------------------------------------------------

# Which way to track from each point's keyframes: both ways, forward, backward, or only in the
# gaps between two keyframes of the same point.
DIRECTIONS = ("both", "forward", "backward", "gaps")


# -- the network's working size --------------------------------------------------------------


def working_size(height: int, width: int, long_side: int | None, multiple: int = 8) -> tuple[int, int]:
    """The network's frame size (height, width): long side ``long_side`` (never upscaled),
    rounded to ``multiple``. A clip already that small (or ``long_side`` None) keeps its size."""
    scale = 1.0 if not long_side else min(1.0, long_side / max(height, width))
    if scale == 1.0:
        return height, width
    h = max(multiple * 4, int(round(height * scale / multiple)) * multiple)
    w = max(multiple * 4, int(round(width * scale / multiple)) * multiple)
    return h, w


def to_working(xy: np.ndarray, size: tuple[int, int], work: tuple[int, int]) -> np.ndarray:
    """Source pixel positions -> working-size positions (pixel centres map to centres, so the
    frame's edges map to the frame's edges, as a resize does). Sizes are (height, width)."""
    sx, sy = work[1] / size[1], work[0] / size[0]
    xy = np.asarray(xy)
    out = np.empty_like(xy, dtype=np.float64)
    out[..., 0] = (xy[..., 0] + 0.5) * sx - 0.5
    out[..., 1] = (xy[..., 1] + 0.5) * sy - 0.5
    return out


def to_source(xy: np.ndarray, size: tuple[int, int], work: tuple[int, int]) -> np.ndarray:
    """Working-size positions -> source pixel positions (the inverse of :func:`to_working`)."""
    sx, sy = work[1] / size[1], work[0] / size[0]
    xy = np.asarray(xy)
    out = np.empty_like(xy, dtype=np.float64)
    out[..., 0] = (xy[..., 0] + 0.5) / sx - 0.5
    out[..., 1] = (xy[..., 1] + 0.5) / sy - 0.5
    return out


def resize_to_working(img: np.ndarray, work: tuple[int, int]) -> np.ndarray:
    """A frame at the working size (height, width): area resampling when shrinking, bilinear
    when growing, untouched when already that size."""
    h, w = work
    if img.shape[:2] == (h, w):
        return img
    import cv2  # the backend's dependency; the extension never resizes

    interp = cv2.INTER_AREA if img.shape[0] > h else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


# -- what the network sees: display-referred 8-bit RGB ---------------------------------------


def display_transform(linear: np.ndarray, exposure: float = 0.0) -> np.ndarray:
    """Linear scene values -> 8-bit sRGB as a viewer shows them (Blender's "Standard" view).

    The network learned from display-referred 8-bit video, so linear (EXR) data is made to
    look like that before it is tracked; ``exposure`` is in stops."""
    x = np.asarray(linear, dtype=np.float32)
    if exposure:
        x = x * np.float32(2.0 ** float(exposure))
    x = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    y = np.where(x < 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4, dtype=np.float32) - 0.055)
    return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)


def to_display(img: np.ndarray, exposure: float = 0.0, *, linear: bool = True) -> np.ndarray:
    """Any decoded frame -> the network's input, 8-bit display-referred RGB.

    uint8 passes through; uint16 is rounded ``v / 257``; float is scene-linear (through
    :func:`display_transform`) unless ``linear`` is False, when it is already display-referred
    0..1 (float sRGB frames sent by a client) and is only quantised."""
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if img.dtype == np.uint16:
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if linear:
        return display_transform(img, exposure)
    x = np.nan_to_num(np.asarray(img, np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
