"""Lazy frame sources: movies, image sequences and in-memory arrays.

Every source hands out frames as ``numpy.uint8`` arrays of shape ``(H, W, 3)``
in RGB order, one frame per :meth:`FrameSource.read` call, so a long 4K clip
never has to fit in memory.

Supported inputs (see :func:`open_frames`):

* Movies: ``.mp4 .mov .avi .mkv`` (decoded with OpenCV/FFmpeg). Frame numbers
  are ``0 .. T-1``. The frame count is established by decoding the whole clip
  once when it is opened (container headers are often wrong), so opening a long
  movie takes roughly one decode pass.
* Image sequences: ``.png .jpg .jpeg .tif .tiff .exr .jp2 .dpx .cin .tga .bmp .webp .hdr`` given
  as a folder, a
  printf pattern (``shot.%04d.png``), a hash pattern (``shot.####.png``, the
  number of ``#`` is the zero padding) or one file of the sequence
  (``shot.1001.png``). Frame numbers are the numbers in the file names. A gap in
  the numbering is an error. 16-bit PNG/TIFF become 8-bit by rounding
  ``v / 257``; grey becomes RGB; alpha is dropped.
* OpenEXR (and 32-bit float TIFF) hold linear scene values. They are shown to
  the tracker through a display transform (:func:`pipstrack.conventions.display_transform`):

  1. multiply by ``2 ** exposure`` (exposure in stops, default 0),
  2. clamp to ``[0, 1]`` (NaN counts as 0),
  3. apply the sRGB OETF: ``12.92 * x`` for ``x < 0.0031308``, otherwise
     ``1.055 * x ** (1 / 2.4) - 0.055``,
  4. scale by 255 and round to the nearest integer.

  So linear 0.18 (mid grey) becomes 118, and everything at or above 1.0
  becomes 255 unless a negative exposure brings highlights back into range.
  EXR files need channels ``R, G, B`` (half or float) or a single ``Y``
  channel; the first part is read and the data window is placed inside the
  display window (outside it is black). :meth:`ImageSequenceFrames.read_linear`
  returns the untransformed float32 values.

All frames of a clip must have the same size; a frame that differs raises
:class:`FrameReadError`, as does a file that cannot be decoded.
"""

from __future__ import annotations

import bisect
import collections
import os
import re
from typing import Iterator

import cv2
import numpy as np

from ..conventions import split_sequence_name, to_display
from ..wire.protocol import IMAGE_SUFFIXES
from . import film

__all__ = [
    "FrameReadError",
    "FrameSource",
    "ArrayFrames",
    "VideoFrames",
    "ImageSequenceFrames",
    "open_frames",
    "IMAGE_EXTENSIONS",
    "MOVIE_EXTENSIONS",
]

IMAGE_EXTENSIONS = IMAGE_SUFFIXES  # the list the add-on checks too (wire.protocol)
MOVIE_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv")


class FrameReadError(RuntimeError):
    """A frame (or a whole clip) could not be decoded."""


# ---------------------------------------------------------------------------
# Display transform


# ---------------------------------------------------------------------------
# Base class


class FrameSource:
    """A clip whose frames are decoded on demand.

    Subclasses set ``size``, ``frame_numbers`` and ``name`` and implement
    ``_read``; the base class does index checking so every source fails the
    same way.
    """

    size: tuple[int, int]
    frame_numbers: list[int]
    name: str

    def __len__(self) -> int:
        return len(self.frame_numbers)

    def read(self, index: int) -> np.ndarray:
        """Return frame ``index`` (0-based; negative indices are rejected)."""
        i = self._check_index(index)
        return self._read(i)

    def _read(self, index: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release file handles; reading after close is undefined."""

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.read(i)

    def __repr__(self) -> str:
        h, w = self.size
        return f"{type(self).__name__}({self.name!r}, {len(self)} frames, {w}x{h})"

    # helpers -------------------------------------------------------------

    def _check_index(self, index: int) -> int:
        try:
            i = int(index)
        except (TypeError, ValueError):
            raise TypeError(f"frame index must be an integer, got {index!r}") from None
        if i != index or i < 0 or i >= len(self):
            raise IndexError(f"frame index {index} out of range 0..{len(self) - 1} for {self.name}")
        return i

    def _describe(self, index: int) -> str:
        return f"frame {index} ({self.name})"

    def _check_size(self, frame: np.ndarray, what: str) -> None:
        if frame.shape[:2] != tuple(self.size):
            h, w = frame.shape[:2]
            eh, ew = self.size
            raise FrameReadError(
                f"{what}: size {w}x{h} differs from the clip's {ew}x{eh}; all frames of a clip must have the same size"
            )


# ---------------------------------------------------------------------------
# In-memory arrays


class ArrayFrames(FrameSource):
    """Frames already in memory (tests, synthetic clips, other front ends)."""

    def __init__(self, frames: np.ndarray, name: str = "<array>"):
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must have shape (T, H, W, 3), got {frames.shape}")
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
        if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
            raise ValueError(f"frames must be non-empty, got shape {frames.shape}")
        self._frames = frames
        self.size = (int(frames.shape[1]), int(frames.shape[2]))
        self.frame_numbers = list(range(frames.shape[0]))
        self.name = name

    def _read(self, index: int) -> np.ndarray:
        # A copy, so callers may draw on the frame without touching the clip.
        return np.array(self._frames[index], copy=True)


# ---------------------------------------------------------------------------
# Movies


class VideoFrames(FrameSource):
    """A movie file decoded with OpenCV, with exact random access.

    Opening decodes the whole clip once: that is the only reliable frame count
    (``CAP_PROP_FRAME_COUNT`` comes from the container and is often wrong), and
    it records each frame's timestamp so a seek can be checked afterwards.

    Reads going forward decode sequentially. A backward (or long forward) jump
    seeks, then identifies the frame the decoder actually landed on by its
    timestamp and decodes forward to the target, so the result is always the
    same pixels a sequential decode gives. After a backward seek the frames
    just before the target are decoded into the LRU cache, which keeps a
    backward sweep at about one decode per frame instead of one GOP per frame.
    """

    #: forward gaps up to this many frames are decoded through, not seeked
    FORWARD_DECODE_LIMIT = 48

    def __init__(self, path: str | os.PathLike, *, cache_size: int = 16):
        self.name = os.fspath(path)
        self._cache_size = max(1, int(cache_size))
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._cap = None
        self._next = 0  # index of the frame the next grab() yields
        self._open_capture()
        first = None
        stamps: list[float] = []
        try:
            while self._cap.grab():
                if first is None:
                    ok, first = self._cap.retrieve()
                    if not ok or first is None:
                        raise FrameReadError(f"{self._describe(0)}: cannot decode frame")
                stamps.append(float(self._cap.get(cv2.CAP_PROP_POS_MSEC)))
        except FrameReadError:
            self.close()
            raise
        if first is None:
            self.close()
            raise FrameReadError(f"{self.name}: no decodable video frames")
        self.size = (int(first.shape[0]), int(first.shape[1]))
        self.frame_numbers = list(range(len(stamps)))
        self._stamps = stamps
        diffs = np.diff(stamps) if len(stamps) > 1 else np.array([1.0])
        # Timestamps identify frames only when they strictly increase.
        self._stamps_usable = bool(np.all(diffs > 0))
        self._stamp_tol = float(diffs.min()) / 2.0 if self._stamps_usable else 0.0
        self._next = len(stamps)  # the capture sits at the end after counting
        self._remember(0, self._to_rgb(first, 0))

    def _open_capture(self) -> None:
        if self._cap is not None:
            self._cap.release()
        cap = cv2.VideoCapture(self.name)
        if not cap.isOpened():
            cap.release()
            raise FrameReadError(f"{self.name}: cannot open video (unsupported or corrupt file)")
        self._cap = cap
        self._next = 0

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._cache.clear()

    def _to_rgb(self, bgr: np.ndarray, index: int) -> np.ndarray:
        if bgr.ndim == 2:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        elif bgr.shape[2] == 4:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB)
        else:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if rgb.dtype != np.uint8:
            raise FrameReadError(f"{self._describe(index)}: unsupported pixel type {rgb.dtype}")
        if hasattr(self, "size"):
            self._check_size(rgb, self._describe(index))
        return rgb

    def _remember(self, index: int, frame: np.ndarray) -> None:
        frame.setflags(write=False)
        self._cache[index] = frame
        self._cache.move_to_end(index)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _read(self, index: int) -> np.ndarray:
        if self._cap is None:
            raise FrameReadError(f"{self.name}: source is closed")
        frame = self._cache.get(index)
        if frame is None:
            if not (self._next <= index <= self._next + self.FORWARD_DECODE_LIMIT):
                # Land a little early so the frames before `index` end up in the
                # cache: the next reads of a backward sweep are then free.
                start = max(0, index - self._cache_size + 1) if index < self._next else index
                self._position_at_or_before(start, index)
            keep_from = index - self._cache_size + 1
            while self._next <= index:
                i = self._next
                if i >= keep_from:
                    if not self._cap.grab():
                        raise FrameReadError(f"{self._describe(i)}: decoder stopped early")
                    ok, bgr = self._cap.retrieve()
                    if not ok or bgr is None:
                        raise FrameReadError(f"{self._describe(i)}: cannot decode frame")
                    self._remember(i, self._to_rgb(bgr, i))
                elif not self._cap.grab():
                    raise FrameReadError(f"{self._describe(i)}: decoder stopped early")
                self._next += 1
            frame = self._cache[index]
        else:
            self._cache.move_to_end(index)
        return frame.copy()

    def _position_at_or_before(self, start: int, index: int) -> None:
        """Leave the decoder so that the next grab() yields a frame <= ``start``.

        Seeks are inexact with some codecs and containers, so the frame the
        decoder lands on is identified by its timestamp; when that is not
        possible the file is reopened and decoded from the start.
        """
        if start == 0 or not self._stamps_usable:
            self._open_capture()
            return
        target = start
        for _ in range(4):
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, float(target))
            if not self._cap.grab():
                break
            landed = self._identify(float(self._cap.get(cv2.CAP_PROP_POS_MSEC)))
            if landed is not None and landed <= start:
                # The grabbed frame is gone; keep it if it is wanted.
                if landed >= index - self._cache_size + 1:
                    ok, bgr = self._cap.retrieve()
                    if not ok or bgr is None:
                        raise FrameReadError(f"{self._describe(landed)}: cannot decode frame")
                    self._remember(landed, self._to_rgb(bgr, landed))
                self._next = landed + 1
                return
            if target == 0:
                break
            target = max(0, target - max(16, 2 * (start - target + 8)))
        self._open_capture()

    def _identify(self, msec: float) -> int | None:
        i = bisect.bisect_left(self._stamps, msec - self._stamp_tol)
        if i < len(self._stamps) and abs(self._stamps[i] - msec) <= self._stamp_tol:
            return i
        return None


# ---------------------------------------------------------------------------
# Image sequences

_PRINTF = re.compile(r"%(0?)(\d*)d")
_HASHES = re.compile(r"#+")


def _format_numbers(numbers: list[int], limit: int = 12) -> str:
    """Compress numbers into ranges so a long gap list stays readable."""
    ranges: list[str] = []
    start = prev = None
    for n in sorted(numbers):
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            ranges.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = n
    if start is not None:
        ranges.append(f"{start}" if start == prev else f"{start}-{prev}")
    if len(ranges) > limit:
        ranges = ranges[:limit] + [f"... ({len(ranges) - limit} more)"]
    return ", ".join(ranges)


def decode_image(path: str) -> np.ndarray:
    """One image file as RGB: uint8 or uint16 as stored, float32 scene-linear for EXR and float
    TIFF. Raises FrameReadError saying what is wrong with it."""
    if path.lower().endswith(".exr"):
        return _read_exr(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # works with any path encoding
    except OSError as exc:
        raise FrameReadError(f"cannot read file: {exc}") from exc
    return decode_image_bytes(data, os.path.splitext(path)[1])


def decode_image_bytes(data, suffix: str) -> np.ndarray:
    """An image file's bytes (sent by a client that has the file and the server does not), decoded
    exactly as :func:`decode_image` decodes the file."""
    if suffix.lower() == ".exr":
        import tempfile

        # The EXR binding reads files only: a private temporary file, removed at once.
        fd, tmp = tempfile.mkstemp(suffix=".exr", prefix="pipstrack-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return _read_exr(tmp)
        finally:
            os.unlink(tmp)
    if film.is_film(suffix):
        return _decode_film(data)
    img = _raster_to_rgb(_decode_raster(np.frombuffer(data, np.uint8), suffix))
    if img.dtype in (np.uint8, np.uint16):
        return img
    if img.dtype.kind == "f":
        return img.astype(np.float32)
    raise FrameReadError(f"unsupported pixel type {img.dtype}")


def _decode_film(data) -> np.ndarray:
    try:
        return film.decode(data)
    except film.FilmReadError as exc:
        raise FrameReadError(str(exc)) from None


def _is_supported_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _read_exr(path: str) -> np.ndarray:
    """Read the first part of an EXR file as float32 (H, W, 3) linear RGB."""
    import OpenEXR  # local import: only EXR users pay for it

    try:
        f = OpenEXR.File(path, separate_channels=True)
        part = f.parts[0]
        channels = part.channels
        header = part.header
    except OSError as exc:
        raise FrameReadError(f"cannot read EXR: {exc}") from exc
    except Exception as exc:  # the binding's errors for a cut-off file say little ("list index out of range")
        raise FrameReadError(
            f"cannot read the EXR's pixel data: truncated or corrupt file ({type(exc).__name__}: {exc})"
        ) from exc
    names = list(channels.keys())
    layer = _exr_layer(names)
    if layer is not None:
        rgb = np.stack([np.asarray(channels[layer + c].pixels, dtype=np.float32) for c in "RGB"], axis=-1)
    elif "Y" in channels:
        y = np.asarray(channels["Y"].pixels, dtype=np.float32)
        rgb = np.repeat(y[..., None], 3, axis=-1)
    else:
        raise FrameReadError(f"EXR has no R,G,B or Y channels (found: {', '.join(sorted(names)[:12])})")
    data = header.get("dataWindow")
    disp = header.get("displayWindow")
    if data is not None and disp is not None:
        (dx0, dy0), (dx1, dy1) = (np.asarray(v).tolist() for v in data)
        (wx0, wy0), (wx1, wy1) = (np.asarray(v).tolist() for v in disp)
        if (dx0, dy0, dx1, dy1) != (wx0, wy0, wx1, wy1):
            out = np.zeros((wy1 - wy0 + 1, wx1 - wx0 + 1, 3), np.float32)
            # Intersect the data window with the display window.
            x0, y0 = max(dx0, wx0), max(dy0, wy0)
            x1, y1 = min(dx1, wx1), min(dy1, wy1)
            if x0 <= x1 and y0 <= y1:
                out[y0 - wy0 : y1 - wy0 + 1, x0 - wx0 : x1 - wx0 + 1] = rgb[
                    y0 - dy0 : y1 - dy0 + 1, x0 - dx0 : x1 - dx0 + 1
                ]
            rgb = out
    return np.ascontiguousarray(rgb)


def _exr_layer(names) -> str | None:
    """The prefix of the R, G, B channels to read: "" for a plain EXR; for a multilayer one (a
    Blender render: "ViewLayer.Combined.R", ...) the combined pass of the first view layer, else
    the first layer that has all three."""
    if all(c in names for c in ("R", "G", "B")):
        return ""
    layers = sorted({n[:-1] for n in names if n.endswith(".R") and n[:-1] + "G" in names and n[:-1] + "B" in names})
    if not layers:
        return None
    combined = [p for p in layers if p.rstrip(".").rsplit(".", 1)[-1].lower() in ("combined", "rgba", "beauty")]
    return (combined or layers)[0]


def _decode_raster(data: np.ndarray, suffix: str) -> np.ndarray:
    """OpenCV decode of a file's bytes (Pillow for Targa, which OpenCV does not read), refusing
    a cut-off JPEG or PNG (OpenCV decodes what is there and fills the rest with grey: tracks
    would be silently wrong from that frame on). Channels come out as OpenCV orders them (BGR)."""
    _check_complete(data, suffix)
    if suffix.lower() in PILLOW_SUFFIXES:
        return _decode_pillow(data)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise FrameReadError("cannot decode image")
    return img


PILLOW_SUFFIXES = (".tga",)


def _decode_pillow(data: np.ndarray) -> np.ndarray:
    """Targa (uncompressed or RLE, grey, RGB or RGBA) through Pillow, as OpenCV would give it."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:
            im.load()  # a cut-off file raises here ("image file is truncated")
            if im.mode not in ("L", "RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            img = np.asarray(im)
    except (OSError, ValueError, SyntaxError) as exc:  # what Pillow raises for bad files
        raise FrameReadError(f"cannot decode image: {exc}") from None
    if img.ndim == 3:  # RGB(A) -> BGR(A), as _raster_to_rgb expects
        img = np.ascontiguousarray(img[..., [2, 1, 0, 3][: img.shape[2]]])
    return img


def _check_complete(data: np.ndarray, suffix: str) -> None:
    tail = data[-64:].tobytes()
    suffix = suffix.lower()
    if suffix in (".jpg", ".jpeg") and data.size and b"\xff\xd9" not in tail:
        raise FrameReadError("truncated JPEG: the file ends before its end-of-image marker")
    if suffix == ".png" and data.size and b"IEND" not in tail:
        raise FrameReadError("truncated PNG: the file ends before its IEND chunk")


def _raster_to_rgb(img: np.ndarray) -> np.ndarray:
    """Channels to RGB (grey expanded, alpha dropped); dtype unchanged."""
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
    if img.shape[2] == 2:  # grey + alpha
        return np.repeat(img[..., :1], 3, axis=2)
    if img.shape[2] == 3:
        return img[..., ::-1].copy()
    if img.shape[2] == 4:
        return img[..., 2::-1].copy()
    raise FrameReadError(f"unsupported channel count {img.shape[2]}")


class ImageSequenceFrames(FrameSource):
    """A numbered image sequence, one file decoded per read.

    ``spec`` is a folder, a printf pattern (``shot.%04d.png``) or a hash
    pattern (``shot.####.png``). ``exposure`` (stops) applies to float images
    (EXR, float TIFF) through :func:`pipstrack.conventions.display_transform`; it may be changed on
    the instance between reads.
    """

    def __init__(self, spec: str | os.PathLike, *, exposure: float = 0.0, _files: list[tuple[int, str]] | None = None):
        self.name = os.fspath(spec)
        self.exposure = float(exposure)
        files = _files if _files is not None else self._find_files(self.name)
        files = sorted(files)
        numbers = [n for n, _ in files]
        dupes = sorted(n for n, c in collections.Counter(numbers).items() if c > 1)
        if dupes:
            raise ValueError(f"{self.name}: more than one file for frame number(s) {_format_numbers(dupes)}")
        missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
        if missing:
            raise ValueError(
                f"{self.name}: sequence {numbers[0]}-{numbers[-1]} has gaps; "
                f"missing frame(s) {_format_numbers(missing)}"
            )
        self.frame_numbers = numbers
        self.paths = [p for _, p in files]
        # Decode the first frame now: it gives the clip size and whether the
        # data is linear float, and a broken sequence fails at open.
        raw = self._load(0)
        self.is_linear = raw.dtype.kind == "f"
        self.size = (int(raw.shape[0]), int(raw.shape[1]))

    # discovery -----------------------------------------------------------

    @staticmethod
    def _find_files(spec: str) -> list[tuple[int, str]]:
        if os.path.isdir(spec):
            return ImageSequenceFrames._scan_folder(spec)
        folder, base = os.path.split(spec)
        folder_for_listing = folder or "."
        m = _PRINTF.search(base)
        h = _HASHES.search(base)
        if m is not None:
            width = int(m.group(2) or 0) if m.group(1) else 0
            prefix, suffix = base[: m.start()], base[m.end() :]
            fixed = bool(m.group(1))
        elif h is not None:
            width = len(h.group(0))
            prefix, suffix = base[: h.start()], base[h.end() :]
            fixed = True
        else:
            raise ValueError(f"{spec}: not a folder or a sequence pattern (%04d or ####)")
        if "%" in prefix + suffix or "#" in prefix + suffix:
            raise ValueError(f"{spec}: only one frame-number placeholder is allowed")
        if not _is_supported_image(suffix):
            raise ValueError(f"{spec}: unsupported image extension; supported: {', '.join(IMAGE_EXTENSIONS)}")
        if not os.path.isdir(folder_for_listing):
            raise FileNotFoundError(f"no such file or folder: {folder_for_listing}")
        rx = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix) + r"\Z")
        found = []
        for entry in os.listdir(folder_for_listing):
            mm = rx.match(entry)
            if not mm:
                continue
            digits = mm.group(1)
            n = int(digits)
            # A padded pattern names exactly one spelling per number.
            if fixed and digits != f"{n:0{width}d}":
                continue
            found.append((n, os.path.join(folder, entry)))
        if not found:
            raise FileNotFoundError(f"no such file or folder: no frames match {spec}")
        return found

    @staticmethod
    def _scan_folder(folder: str) -> list[tuple[int, str]]:
        names = sorted(
            e
            for e in os.listdir(folder)
            if not e.startswith(".") and _is_supported_image(e) and os.path.isfile(os.path.join(folder, e))
        )
        if not names:
            raise ValueError(f"{folder}: no image files; supported extensions: {', '.join(IMAGE_EXTENSIONS)}")
        groups: dict[tuple[str, str, str], list[tuple[int, str]]] = {}
        unnumbered = []
        for e in names:
            parsed = split_sequence_name(e)
            if parsed is None:
                unnumbered.append(e)
                continue
            groups.setdefault((parsed.head, parsed.tail), []).append((parsed.number, os.path.join(folder, e)))
        if unnumbered and not groups and len(unnumbered) == 1:
            return [(0, os.path.join(folder, unnumbered[0]))]
        if unnumbered:
            raise ValueError(
                f"{folder}: file(s) without a frame number: {', '.join(unnumbered[:5])}"
                + (" ..." if len(unnumbered) > 5 else "")
            )
        if len(groups) > 1:
            desc = ", ".join(f"{head}#{tail}" for head, tail in sorted(groups))
            raise ValueError(
                f"{folder}: holds more than one image sequence ({desc}); give a pattern such as shot.####.exr instead"
            )
        return next(iter(groups.values()))

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, exposure: float = 0.0) -> "ImageSequenceFrames":
        """Open the sequence that one of its files belongs to.

        A file without a number in its name, or with no numbered siblings,
        is a one-frame clip.
        """
        path = os.fspath(path)
        folder, base = os.path.split(path)
        parsed = split_sequence_name(base)
        if parsed is None:
            return cls(path, exposure=exposure, _files=[(0, path)])
        rx = re.compile(re.escape(parsed.head) + r"(\d+)" + re.escape(parsed.tail) + r"\Z")
        found = []
        for entry in os.listdir(folder or "."):
            mm = rx.match(entry)
            if mm:
                found.append((int(mm.group(1)), os.path.join(folder, entry)))
        pattern = os.path.join(folder, f"{parsed.head}{'#' * parsed.digits}{parsed.tail}")
        return cls(pattern, exposure=exposure, _files=found)

    # reading -------------------------------------------------------------

    def _load(self, index: int) -> np.ndarray:
        """Decode file ``index`` as RGB: uint8/uint16 or float32 linear."""
        path = self.paths[index]
        what = f"frame {self.frame_numbers[index]} ({path})"
        try:
            img = decode_image(path)
        except FrameReadError as exc:
            raise FrameReadError(f"{what}: {exc}") from exc
        if hasattr(self, "size"):
            self._check_size(img, what)
            if (img.dtype.kind == "f") != self.is_linear:
                raise FrameReadError(f"{what}: pixel type {img.dtype} differs from the first frame's")
        return img

    def _read(self, index: int) -> np.ndarray:
        return to_display(self._load(index), self.exposure)

    def read_linear(self, index: int) -> np.ndarray:
        """Float32 (H, W, 3) scene-linear values of an EXR / float TIFF frame.

        Only float files carry linear data; for 8/16-bit files this raises
        ValueError rather than guess how they were encoded.
        """
        i = self._check_index(index)
        if not self.is_linear:
            raise ValueError(f"{self.name}: not a floating-point (linear) sequence")
        return self._load(i)


# ---------------------------------------------------------------------------
# Entry point


def open_frames(path_or_pattern: str | os.PathLike, *, exposure: float = 0.0) -> FrameSource:
    """Open a movie, image sequence (folder, pattern or one member) or image.

    ``exposure`` (stops) only affects linear float images (EXR, float TIFF).
    """
    spec = os.fspath(path_or_pattern)
    if os.path.isdir(spec):
        return ImageSequenceFrames(spec, exposure=exposure)
    base = os.path.basename(spec)
    if not os.path.exists(spec) and ("%" in base or "#" in base):
        return ImageSequenceFrames(spec, exposure=exposure)
    if not os.path.exists(spec):
        raise FileNotFoundError(f"cannot open frames: no such file or folder: {spec}")
    ext = os.path.splitext(base)[1].lower()
    if ext in MOVIE_EXTENSIONS:
        return VideoFrames(spec)
    if ext in IMAGE_EXTENSIONS:
        return ImageSequenceFrames.from_file(spec, exposure=exposure)
    raise ValueError(
        f"{spec}: unsupported file type {ext or '(no extension)'}; supported: "
        f"movies {', '.join(MOVIE_EXTENSIONS)}; images {', '.join(IMAGE_EXTENSIONS)}"
    )
