"""Harder clip families with exact ground truth, for ``pipstrack eval --families``.

One homography and one occluder (:func:`pipstrack.datasets.sample.homography_clip`) is the
easiest shot there is. These families are what a matchmover meets next, each still with exact
trajectories and visibility, because every frame is rendered from a known map of the photograph:

- ``deform``: the photograph under a smooth non-rigid deformation (cloth, skin, water) on top of
  the camera move, a bar crossing it;
- ``layers``: an independent foreground (another photograph, its own motion) over the background:
  points on two surfaces that do not move together, and background points hidden by the
  foreground for part of the clip;
- ``long``: a 240-frame shot with queries on the first, a third-way and a two-thirds-way frame
  (tracked both ways), and three occluders at different times and directions;
- ``hard``: hand-held shake of up to ~25 px per frame with motion blur integrated over the shutter
  (the truth is the position at the middle of each frame's exposure), exposure and white-balance
  flicker and sensor noise.

Every function returns ``{"rgbs" (T,H,W,3) uint8, "trajs" (T,N,2) float32, "visible" (T,N) bool,
"query_frames" (N,) int}``. Pixel centres at integer coordinates (docs/formats.md).
"""

from __future__ import annotations

import cv2
import numpy as np

from .sample import camera_path, fit_photo
from .synth import _apply  # a homography applied to points (..., 2)

FAMILIES = ("deform", "layers", "long", "hard")
LONG_FRAMES = 240


# -- shared pieces ------------------------------------------------------------------------------------


def _near_frame_scale(photo: np.ndarray, size: tuple[int, int], margin: float) -> np.ndarray:
    """The photograph area-resampled to about the scale it is seen at, so warping it does not
    alias (fine texture would shimmer from frame to frame and the truth would not show)."""
    H, W = size
    ph, pw = photo.shape[:2]
    f = 1.2 * margin * max(W / pw, H / ph)
    if f >= 1.0:
        return photo
    return cv2.resize(photo, (max(8, round(pw * f)), max(8, round(ph * f))), interpolation=cv2.INTER_AREA)


def _grid(size: tuple[int, int]) -> np.ndarray:
    H, W = size
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    return np.stack([xs.ravel(), ys.ravel()], 1)


def _features(rgb: np.ndarray, count: int, mask: np.ndarray | None = None, border: int = 16) -> np.ndarray:
    """(n,2) good features to track on one frame, away from the border (and inside ``mask``)."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    H, W = gray.shape
    allowed = np.zeros((H, W), np.uint8)
    allowed[border:-border, border:-border] = 255
    if mask is not None:
        allowed[~mask] = 0
    if count <= 0 or not allowed.any():
        return np.zeros((0, 2))
    corners = cv2.goodFeaturesToTrack(gray, count, 0.01, min(H, W) / 10, mask=allowed)
    return np.zeros((0, 2)) if corners is None else np.round(corners.reshape(-1, 2).astype(np.float64), 2)


def _in_frame(xy: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    H, W = size
    return (xy[..., 0] >= 0) & (xy[..., 0] <= W - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= H - 1)


def _covered(mask: np.ndarray, xy: np.ndarray) -> np.ndarray:
    H, W = mask.shape
    xi = np.clip(np.round(xy[:, 0]).astype(int), 0, W - 1)
    yi = np.clip(np.round(xy[:, 1]).astype(int), 0, H - 1)
    return mask[yi, xi]


class _Bar:
    """A textured bar sweeping across the frame from frame ``t0`` to ``t1`` (an occluder)."""

    def __init__(self, frames, size, t0, t1, vertical: bool, reverse: bool, width: float = 0.16):
        H, W = size
        self.vertical = vertical
        across = W if vertical else H
        self.bw = bw = max(4, int(width * across))
        ramp = np.linspace(40, 90, bw, dtype=np.float32)
        ramp[::12] *= 0.6
        self.ramp = ramp.astype(np.uint8)
        start, end = (across, -bw) if reverse else (-bw, across)
        self.span = {}  # frame -> (lo, hi, position of the bar's first row or column)
        for k in range(max(t0, 0), min(t1, frames - 1) + 1):
            p = int(round(start + (end - start) * (k - t0) / max(t1 - t0, 1)))
            lo, hi = max(p, 0), min(p + bw, across)
            if hi > lo:
                self.span[k] = (lo, hi, p)
        self.size = size

    def mask(self, k: int) -> np.ndarray:
        m = np.zeros(self.size, bool)
        if k in self.span:
            lo, hi, _ = self.span[k]
            if self.vertical:
                m[:, lo:hi] = True
            else:
                m[lo:hi, :] = True
        return m

    def paint(self, img: np.ndarray, k: int) -> None:
        if k not in self.span:
            return
        lo, hi, p = self.span[k]
        ramp = self.ramp[lo - p : hi - p]
        if self.vertical:
            img[:, lo:hi] = ramp[None, :, None]
        else:
            img[lo:hi, :] = ramp[:, None, None]


def _pack(rgbs, trajs, visible, query_frames) -> dict:
    return {
        "rgbs": np.ascontiguousarray(np.stack(rgbs)),
        "trajs": np.asarray(trajs, np.float32),
        "visible": np.asarray(visible, bool),
        "query_frames": np.asarray(query_frames, int),
    }


# -- deform ---------------------------------------------------------------------------------------------


class _Deformation:
    """Smooth displacement of photo coordinates, D_t(p) = sum_k a_k(t) sin(w_k . p + phase_k).

    Kept a contraction (|dD/dp| <= 0.6), so p + D_t(p) = r is solved by fixed-point iteration.
    """

    def __init__(self, rng: np.random.Generator, frames: int, scale: float):
        k = 4
        wavelength = rng.uniform(70, 160, k) / scale  # in photo pixels, at the frame's scale
        angle = rng.uniform(0, np.pi, k)
        self.w = np.stack([np.cos(angle), np.sin(angle)], 1) * (2 * np.pi / wavelength)[:, None]
        self.phase = rng.uniform(0, 2 * np.pi, k)
        direction = rng.uniform(0, 2 * np.pi, k)
        self.dir = np.stack([np.cos(direction), np.sin(direction)], 1)
        amp = 0.6 / k / np.linalg.norm(self.w, axis=1)  # keeps the sum a contraction
        u = np.arange(frames) / max(frames - 1, 1)
        cycles = rng.uniform(0.5, 2.0, k)
        start = rng.uniform(0, 2 * np.pi, k)
        self.amp = amp[None, :] * np.sin(2 * np.pi * cycles[None, :] * u[:, None] + start[None, :])  # (T,k)

    def displace(self, t: int, p: np.ndarray) -> np.ndarray:
        s = np.sin(p @ self.w.T + self.phase)  # (n,k)
        return (s * self.amp[t]) @ self.dir

    def invert(self, t: int, r: np.ndarray, iterations: int = 20) -> np.ndarray:
        p = r.copy()
        for _ in range(iterations):
            p = r - self.displace(t, p)
        return p


def deform_clip(photo: np.ndarray, frames: int, size: tuple[int, int], seed: int = 0, points: int = 48) -> dict:
    """``photo`` under the camera move of the sample clip plus a smooth non-rigid deformation."""
    rng = np.random.default_rng(seed)
    H, W = size
    photo = _near_frame_scale(photo, size, 1.25)
    fit = fit_photo(photo, size)
    cam = camera_path(np.arange(frames, dtype=np.float64), rng, size) @ fit
    warp = _Deformation(rng, frames, fit[0, 0])
    bar = _Bar(frames, size, int(frames * 0.15), frames - 1, vertical=True, reverse=bool(rng.random() < 0.5))
    masks = [bar.mask(t) for t in range(frames)]
    grid = _grid(size)
    rgbs = []
    for t in range(frames):
        src = warp.invert(t, _apply(np.linalg.inv(cam[t]), grid)).astype(np.float32)
        img = cv2.remap(
            photo, src[:, 0].reshape(H, W), src[:, 1].reshape(H, W), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        bar.paint(img, t)
        rgbs.append(img)
    xy0 = _features(rgbs[0], points, ~masks[0])
    p = warp.invert(0, _apply(np.linalg.inv(cam[0]), xy0))
    trajs = np.stack([_apply(cam[t], p + warp.displace(t, p)) for t in range(frames)])
    trajs[0] = xy0
    visible = np.stack([_in_frame(trajs[t], size) & ~_covered(masks[t], trajs[t]) for t in range(frames)])
    return _pack(rgbs, trajs, visible, np.zeros(len(xy0), int))


# -- layers ---------------------------------------------------------------------------------------------


def layers_clip(
    background: np.ndarray, foreground: np.ndarray, frames: int, size: tuple[int, int], seed: int = 0, points: int = 48
) -> dict:
    """A foreground card (a rounded crop of another photograph, its own motion) over a
    camera-moved background: two surfaces, and background points hidden by the card."""
    rng = np.random.default_rng(seed)
    H, W = size
    background = _near_frame_scale(background, size, 1.25)
    cam = camera_path(np.arange(frames, dtype=np.float64), rng, size) @ fit_photo(background, size)
    # The card: ~45 % of the frame's height, entering from one side, rotating and zooming on its own.
    ch = int(0.45 * H)
    cw = int(ch * rng.uniform(1.0, 1.5))
    fh, fw = foreground.shape[:2]
    s = min(fh / ch, fw / cw) * rng.uniform(0.5, 0.9)
    y0 = int(rng.integers(0, max(fh - int(ch * s), 0) + 1))
    x0 = int(rng.integers(0, max(fw - int(cw * s), 0) + 1))
    card = cv2.resize(foreground[y0 : y0 + int(ch * s), x0 : x0 + int(cw * s)], (cw, ch), interpolation=cv2.INTER_AREA)
    alpha = np.zeros((ch, cw), np.uint8)
    cv2.rectangle(alpha, (3, 3), (cw - 4, ch - 4), 255, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.7)
    u = np.arange(frames) / max(frames - 1, 1)
    side = 1 if rng.random() < 0.5 else -1
    cx = W / 2 + side * (0.55 - 0.9 * u) * W * 0.6
    cy = H * rng.uniform(0.35, 0.65) + 0.15 * H * np.sin(2 * np.pi * rng.uniform(0.5, 1.0) * u + rng.uniform(0, 6))
    rot = rng.uniform(-0.4, 0.4) * u
    zoom = np.exp(rng.uniform(-0.25, 0.25) * u)
    card_m = []
    for t in range(frames):
        c, sn = np.cos(rot[t]) * zoom[t], np.sin(rot[t]) * zoom[t]
        card_m.append(
            np.array([[c, -sn, cx[t]], [sn, c, cy[t]], [0, 0, 1.0]])
            @ np.array([[1, 0, -(cw - 1) / 2], [0, 1, -(ch - 1) / 2], [0, 0, 1.0]])
        )
    rgbs, covers = [], []
    for t in range(frames):
        img = cv2.warpPerspective(background, cam[t], (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        fg = cv2.warpPerspective(card, card_m[t], (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        a = cv2.warpPerspective(alpha, card_m[t], (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        a = a.astype(np.float32)[..., None] / 255.0
        rgbs.append(np.clip(img * (1 - a) + fg * a + 0.5, 0, 255).astype(np.uint8))
        covers.append(a[..., 0] >= 0.5)
    on_card = covers[0] & (cv2.erode(covers[0].astype(np.uint8), np.ones((9, 9), np.uint8)) > 0)
    off_card = cv2.dilate(covers[0].astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
    fg_xy = _features(rgbs[0], points // 2, on_card, border=4)
    bg_xy = _features(rgbs[0], points - len(fg_xy), off_card)
    to_bg = np.linalg.inv(cam[0])
    to_card = np.linalg.inv(card_m[0])
    trajs, visible = [], []
    for t in range(frames):
        bg = _apply(cam[t] @ to_bg, bg_xy)
        fg = _apply(card_m[t] @ to_card, fg_xy)
        trajs.append(np.concatenate([fg, bg]))
        visible.append(np.concatenate([_in_frame(fg, size), _in_frame(bg, size) & ~_covered(covers[t], bg)]))
    trajs = np.stack(trajs)
    trajs[0] = np.concatenate([fg_xy, bg_xy])
    return _pack(rgbs, trajs, np.stack(visible), np.zeros(len(trajs[0]), int))


# -- long -------------------------------------------------------------------------------------------------


def long_clip(
    photo: np.ndarray, frames: int = LONG_FRAMES, size: tuple[int, int] = (256, 320), seed: int = 0, points: int = 48
) -> dict:
    """A long hand-held shot (the sample's camera move, repeated every 48 frames' worth of shake)
    with three occluders at different times and queries on three different frames."""
    rng = np.random.default_rng(seed)
    H, W = size
    photo = _near_frame_scale(photo, size, 1.4)
    # camera_path shakes a fixed number of cycles per clip: build it over 48-frame stretches'
    # worth of time so a long shot shakes like a short one, and drifts further.
    t = np.arange(frames, dtype=np.float64)
    cam = camera_path(t, rng, size, strength=1.0) @ fit_photo(photo, size, margin=1.4)
    fine = camera_path(t * (frames / 48.0), rng, size, strength=0.3)
    cam = np.stack([fine[k] @ np.linalg.inv(fine[0]) @ cam[k] for k in range(frames)])
    occluders = [
        _Bar(frames, size, int(0.05 * frames), int(0.30 * frames), vertical=True, reverse=False),
        _Bar(frames, size, int(0.40 * frames), int(0.62 * frames), vertical=False, reverse=True),
        _Bar(frames, size, int(0.70 * frames), int(0.95 * frames), vertical=True, reverse=True, width=0.06),
    ]
    rgbs, covers = [], []
    for k in range(frames):
        img = cv2.warpPerspective(photo, cam[k], (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        cover = np.zeros((H, W), bool)
        for bar in occluders:
            bar.paint(img, k)
            cover |= bar.mask(k)
        rgbs.append(img)
        covers.append(cover)
    query_at = [0, frames // 3, (2 * frames) // 3]
    trajs, visible, qf = [], [], []
    share = [points - 2 * (points // 3), points // 3, points // 3]
    for q, n in zip(query_at, share):
        xy = _features(rgbs[q], n, ~covers[q])
        back = np.linalg.inv(cam[q])
        paths = np.stack([_apply(cam[k] @ back, xy) for k in range(frames)])
        paths[q] = xy
        trajs.append(paths)
        visible.append(np.stack([_in_frame(paths[k], size) & ~_covered(covers[k], paths[k]) for k in range(frames)]))
        qf += [q] * len(xy)
    return _pack(rgbs, np.concatenate(trajs, 1), np.concatenate(visible, 1), qf)


# -- hard -------------------------------------------------------------------------------------------------


def _shake_path(rng: np.random.Generator, frames: int, size: tuple[int, int], peak: float = 30.0):
    """A continuous hand-held camera, time in frames -> (3,3) homography (photo-centred -> frame):
    a drift plus jitters of 2-6 frame periods whose speed peaks near ``peak`` px per frame."""
    H, W = size
    periods = rng.uniform(2.0, 6.0, (2, 3))
    phases = rng.uniform(0, 2 * np.pi, (2, 3))
    weights = rng.dirichlet(np.ones(3), 2)
    # Peak speed of a sin of amplitude A and period P is 2 pi A / P: share ``peak`` between them.
    amps = weights * peak * periods / (2 * np.pi) / np.sqrt(2)
    drift = rng.normal(0, 0.05, 2) * np.array([W, H])
    rot_amp, zoom_amp = rng.uniform(0.005, 0.02), rng.uniform(0.005, 0.03)
    cx, cy = (W - 1) / 2, (H - 1) / 2

    def at(t: float) -> np.ndarray:
        u = t / max(frames - 1, 1)
        off = drift * (u - 0.5) + (amps * np.sin(2 * np.pi * t / periods + phases)).sum(1)
        rot = rot_amp * np.sin(2 * np.pi * t / periods[0, 0] + phases[1, 0])
        zoom = np.exp(zoom_amp * np.sin(2 * np.pi * t / periods[1, 1] + phases[0, 1]))
        c, s = np.cos(rot) * zoom, np.sin(rot) * zoom
        return np.array([[c, -s, cx + off[0]], [s, c, cy + off[1]], [0, 0, 1.0]])

    return at


def hard_clip(
    photo: np.ndarray,
    frames: int,
    size: tuple[int, int],
    seed: int = 0,
    points: int = 48,
    peak: float = 30.0,
    shutter: float = 0.5,
    subframes: int = 9,
    degrade: bool = True,
) -> dict:
    """``photo`` under fast hand-held shake, each frame the mean of ``subframes`` renders over the
    open shutter (``shutter`` of the frame interval), so motion blur follows the true motion; the
    truth is the position at the middle of the exposure. Then exposure and white-balance flicker,
    sensor noise and rounding to 8 bits (``degrade=False``: no flicker and no noise)."""
    rng = np.random.default_rng(seed)
    H, W = size
    photo = _near_frame_scale(photo, size, 1.5)
    fit = fit_photo(photo, size, margin=1.5)
    cam = _shake_path(rng, frames, size, peak)
    offsets = (np.arange(subframes) / max(subframes - 1, 1) - 0.5) * shutter
    exposure = np.exp(rng.normal(0, 0.08, (frames, 1)) + rng.normal(0, 0.03, (frames, 3))).astype(np.float32)
    sigma = rng.uniform(3.0, 7.0)
    noise = np.random.default_rng(rng.integers(2**63))
    photo_f = photo.astype(np.float32)
    rgbs = []
    for t in range(frames):
        acc = np.zeros((H, W, 3), np.float32)
        for o in offsets:
            acc += cv2.warpPerspective(
                photo_f, cam(t + o) @ fit, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
            )
        acc /= subframes
        if degrade:
            acc *= exposure[t]
            acc += noise.normal(0, sigma, acc.shape).astype(np.float32)
        rgbs.append(np.clip(acc + 0.5, 0, 255).astype(np.uint8))
    # Query where the photograph has texture (found on a sharp render of frame 0's mid-exposure).
    sharp = cv2.warpPerspective(photo, cam(0) @ fit, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    xy0 = _features(sharp, points)
    back = np.linalg.inv(cam(0) @ fit)
    trajs = np.stack([_apply(cam(t) @ fit @ back, xy0) for t in range(frames)])
    trajs[0] = xy0
    visible = _in_frame(trajs, size)
    return _pack(rgbs, trajs, visible, np.zeros(len(xy0), int))


def family_clip(family: str, photos: list[np.ndarray], k: int, frames: int, size, seed: int, points: int) -> dict:
    """Clip ``k`` of ``family``: photographs cycled, each clip its own seed."""
    photo = photos[k % len(photos)]
    if family == "deform":
        return deform_clip(photo, frames, size, seed, points)
    if family == "layers":
        return layers_clip(photo, photos[(k + 1) % len(photos)], frames, size, seed, points)
    if family == "long":
        return long_clip(photo, max(frames, LONG_FRAMES), size, seed, points)
    if family == "hard":
        return hard_clip(photo, frames, size, seed, points)
    raise ValueError(f"unknown clip family {family!r}; known: {', '.join(FAMILIES)}")
