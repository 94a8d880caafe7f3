"""Draw tracked points on frames so a person can judge a track at a glance.

Coordinates follow the package convention: pixel centres at integer
coordinates, origin top-left, x right, y down. Drawing uses OpenCV's
fixed-point ``shift`` so sub-pixel positions are drawn where they are, not
snapped to the nearest pixel.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Callable, Sequence

import cv2
import numpy as np

from .frames import FrameSource

__all__ = ["track_colors", "draw_tracks", "write_preview", "VIDEO_EXTENSIONS", "IMAGE_EXTENSIONS"]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MAX_PREVIEW_SIDE = 1920

_SHIFT = 4  # OpenCV fixed-point bits: 1/16 pixel
_SCALE = 1 << _SHIFT
_GOLDEN = 0.6180339887498949


def track_colors(n: int) -> np.ndarray:
    """(n, 3) uint8 RGB colours; colour i never depends on n.

    Hues step by the golden ratio so neighbouring track ids get far-apart
    colours however many tracks there are; brightness cycles a little to
    separate tracks whose hues end up close.
    """
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    i = np.arange(n, dtype=np.float64)
    h = (0.1 + i * _GOLDEN) % 1.0
    s = np.where(np.arange(n) % 2 == 0, 0.85, 0.65)
    v = np.array([1.0, 0.85, 0.95])[np.arange(n) % 3]
    h6 = h * 6.0
    k = np.floor(h6).astype(int) % 6
    f = h6 - np.floor(h6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    rgb = np.zeros((n, 3))
    for j, (r, g, b) in enumerate(table):
        m = k == j
        rgb[m, 0], rgb[m, 1], rgb[m, 2] = r[m], g[m], b[m]
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def default_radius(height: int, width: int) -> float:
    """Dot radius in pixels: readable on a 256 px proxy and on a 4K plate."""
    return max(2.0, min(height, width) / 180.0)


def _fixed(x: float, y: float, limit: float) -> tuple[int, int]:
    # Clamp far-off-screen points so the fixed-point ints cannot overflow.
    x = min(max(x, -limit), limit)
    y = min(max(y, -limit), limit)
    return int(round(x * _SCALE)), int(round(y * _SCALE))


def draw_tracks(
    frame: np.ndarray,
    xy_hist: np.ndarray,
    visible_hist: np.ndarray,
    colors: np.ndarray | None = None,
    *,
    radius: float | None = None,
) -> np.ndarray:
    """Return a copy of ``frame`` with each point's recent path and position.

    ``xy_hist`` is (K, N, 2), oldest row first, last row the current frame;
    ``visible_hist`` is (K, N). The tail fades towards the past (segments
    touching an occluded position are fainter still); the current position is
    a filled dot when visible and a ring when occluded. NaN positions are
    skipped.
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
    xy = np.asarray(xy_hist, dtype=np.float64)
    vis = np.asarray(visible_hist, dtype=bool)
    if xy.ndim == 2:
        xy, vis = xy[None], vis.reshape(1, -1)
    if xy.ndim != 3 or xy.shape[2] != 2 or vis.shape != xy.shape[:2]:
        raise ValueError(f"xy_hist must be (K, N, 2) and visible_hist (K, N); got {xy.shape} and {vis.shape}")
    K, N = vis.shape
    H, W = frame.shape[:2]
    if colors is None:
        colors = track_colors(N)
    colors = np.asarray(colors)
    if colors.shape != (N, 3):
        raise ValueError(f"colors must be ({N}, 3), got {colors.shape}")
    col = [tuple(int(c) for c in row) for row in colors]
    r = float(radius) if radius is not None else default_radius(H, W)
    thick = max(1, int(round(r / 3.0)))
    limit = 4.0 * max(H, W) + 16.0
    finite = np.isfinite(xy).all(axis=2)
    out = frame.copy()

    # Tail: one layer per age so each age can be blended with its own weight.
    # Only the bounding box of that age's segments is blended.
    for a in range(K - 1):
        ok = finite[a] & finite[a + 1]
        if not ok.any():
            continue
        idx = np.flatnonzero(ok)
        pts = np.concatenate([xy[a, idx], xy[a + 1, idx]])
        pad = thick + 2
        x0 = int(max(0, np.floor(pts[:, 0].min()) - pad))
        y0 = int(max(0, np.floor(pts[:, 1].min()) - pad))
        x1 = int(min(W, np.ceil(pts[:, 0].max()) + pad + 1))
        y1 = int(min(H, np.ceil(pts[:, 1].max()) + pad + 1))
        if x0 >= x1 or y0 >= y1:
            continue
        weight = 0.25 + 0.75 * (a + 1) / (K - 1)
        for faint in (False, True):
            sel = [j for j in idx if (not (vis[a, j] and vis[a + 1, j])) == faint]
            if not sel:
                continue
            roi = out[y0:y1, x0:x1]
            layer = roi.copy()
            for j in sel:
                p = _fixed(xy[a, j, 0] - x0, xy[a, j, 1] - y0, limit)
                q = _fixed(xy[a + 1, j, 0] - x0, xy[a + 1, j, 1] - y0, limit)
                cv2.line(layer, p, q, col[j], thick, cv2.LINE_AA, _SHIFT)
            w = weight * (0.4 if faint else 1.0)
            cv2.addWeighted(layer, w, roi, 1.0 - w, 0.0, dst=roi)

    # Current positions on top of all tails.
    rr = int(round(r * _SCALE))
    for j in range(N):
        if not finite[-1, j]:
            continue
        c = _fixed(xy[-1, j, 0], xy[-1, j, 1], limit)
        if vis[-1, j]:
            # Dark rim keeps the dot readable on a background of its own colour.
            cv2.circle(out, c, rr + _SCALE, (0, 0, 0), -1, cv2.LINE_AA, _SHIFT)
            cv2.circle(out, c, rr, col[j], -1, cv2.LINE_AA, _SHIFT)
        else:
            cv2.circle(out, c, rr, col[j], thick, cv2.LINE_AA, _SHIFT)
    return out


# ---------------------------------------------------------------------------
# Writing


def _output_kind(out_path: str) -> tuple[str, str]:
    """('video', path) or ('images', printf pattern)."""
    base = os.path.basename(out_path.rstrip("/\\"))
    ext = os.path.splitext(base)[1].lower()
    if os.path.isdir(out_path) or out_path.endswith(("/", os.sep)) or (not ext and "%" not in base and "#" not in base):
        return "images", os.path.join(out_path, "preview.%04d.png")
    if ext in VIDEO_EXTENSIONS:
        return "video", out_path
    if ext in IMAGE_EXTENSIONS:
        m = re.search(r"#+", base)
        if m:
            pattern = base[: m.start()] + f"%0{len(m.group(0))}d" + base[m.end() :]
            return "images", os.path.join(os.path.dirname(out_path), pattern)
        if re.search(r"%0?\d*d", base):
            return "images", out_path
        stem, e = os.path.splitext(base)
        return "images", os.path.join(os.path.dirname(out_path), f"{stem}.%04d{e}")
    raise ValueError(
        f"{out_path}: unsupported preview output; use a movie ({', '.join(VIDEO_EXTENSIONS)}), "
        f"an image name or pattern ({', '.join(IMAGE_EXTENSIONS)}) or a folder"
    )


def check_preview_target(out_path) -> None:
    """Raises ValueError now for a preview destination that :func:`write_preview` would refuse
    after the whole run (the command line checks before it tracks)."""
    _output_kind(os.fspath(out_path))


def write_preview(
    source: FrameSource,
    xy: np.ndarray,
    visible: np.ndarray,
    out_path: str | os.PathLike,
    *,
    frame_indices: Sequence[int] | None = None,
    tail: int = 12,
    fps: float = 24.0,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Render tracks over the source frames into a movie or image sequence.

    ``xy`` (T, N, 2) full-resolution pixel positions and ``visible`` (T, N)
    belong to ``frame_indices`` (default: every frame). ``tail`` is how many
    earlier frames the fading path spans. ``progress(done, total)`` is called
    after each frame.

    Output: ``.mp4 .mov .avi`` (mp4v codec); an image name (``out.png`` ->
    ``out.1001.png`` ...), a printf or ``#`` pattern, or a folder (->
    ``preview.1001.png`` ...). Image files are numbered with the source's
    frame numbers. Frames over 1920 px on the long side are downscaled.
    Nothing appears at the destination until everything is written: a failure
    leaves no partial movie and no partial sequence.
    """
    out_path = os.fspath(out_path)
    xy = np.asarray(xy, dtype=np.float64)
    visible = np.asarray(visible, dtype=bool)
    if frame_indices is None:
        frame_indices = range(len(source))
    frame_indices = [int(i) for i in frame_indices]
    T = len(frame_indices)
    if xy.ndim != 3 or xy.shape[0] != T or xy.shape[2] != 2 or visible.shape != xy.shape[:2]:
        raise ValueError(
            f"xy must be ({T}, N, 2) and visible ({T}, N) for {T} frames; got {xy.shape} and {visible.shape}"
        )
    if T == 0:
        raise ValueError("no frames to write")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    tail = max(0, int(tail))
    kind, target = _output_kind(out_path)

    H, W = source.size
    scale = min(1.0, MAX_PREVIEW_SIDE / max(H, W))
    ow, oh = (max(1, int(round(W * scale))), max(1, int(round(H * scale))))
    sx, sy = ow / W, oh / H
    # Scale about pixel edges, since pixel centres sit at integer coordinates.
    xy_s = np.empty_like(xy)
    xy_s[..., 0] = (xy[..., 0] + 0.5) * sx - 0.5
    xy_s[..., 1] = (xy[..., 1] + 0.5) * sy - 0.5
    colors = track_colors(xy.shape[1])

    def render(t: int) -> np.ndarray:
        frame = source.read(frame_indices[t])
        if scale < 1.0:
            frame = cv2.resize(frame, (ow, oh), interpolation=cv2.INTER_AREA)
        k0 = max(0, t - tail)
        return draw_tracks(frame, xy_s[k0 : t + 1], visible[k0 : t + 1], colors)

    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        if kind == "images":
            os.makedirs(folder, exist_ok=True)
        else:
            raise FileNotFoundError(f"no such folder for the preview: {folder}")

    if kind == "video":
        _write_video(render, T, target, fps, (ow, oh), progress)
    else:
        numbers = [source.frame_numbers[i] for i in frame_indices]
        _write_images(render, T, target, numbers, progress)


def _write_video(render, T, target, fps, size, progress) -> None:
    folder, base = os.path.split(os.path.abspath(target))
    stem, ext = os.path.splitext(base)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".part{ext}", dir=folder)
    os.close(fd)
    # Most codecs want even dimensions; pad right/bottom so coordinates keep.
    w, h = size
    ew, eh = w + (w % 2), h + (h % 2)
    writer = None
    try:
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (ew, eh))
        if not writer.isOpened():
            raise OSError(f"{target}: cannot open a video writer (mp4v) for this file")
        for t in range(T):
            img = render(t)
            if (ew, eh) != (w, h):
                img = cv2.copyMakeBorder(img, 0, eh - h, 0, ew - w, cv2.BORDER_CONSTANT, value=0)
            writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            if progress is not None:
                progress(t + 1, T)
        writer.release()
        writer = None
        if os.path.getsize(tmp) == 0:
            raise OSError(f"{target}: the video writer produced an empty file")
        os.replace(tmp, target)
    except BaseException:
        if writer is not None:
            writer.release()
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_images(render, T, pattern, numbers, progress) -> None:
    folder = os.path.dirname(os.path.abspath(pattern))
    ext = os.path.splitext(pattern)[1].lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if ext in (".jpg", ".jpeg") else []
    names = [os.path.basename(pattern % n) for n in numbers]
    # Write into a hidden scratch folder next to the destination, then move
    # every file in at the end: a failure leaves nothing behind.
    scratch = tempfile.mkdtemp(prefix=".preview.part.", dir=folder)
    try:
        for t in range(T):
            ok, buf = cv2.imencode(ext, cv2.cvtColor(render(t), cv2.COLOR_RGB2BGR), params)
            if not ok:
                raise OSError(f"cannot encode preview frame {numbers[t]} as {ext}")
            with open(os.path.join(scratch, names[t]), "wb") as f:
                f.write(buf.tobytes())
            if progress is not None:
                progress(t + 1, T)
        for name in names:
            os.replace(os.path.join(scratch, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
