"""Procedural training clips with exact point-track ground truth.

Each clip is a stack of textured layers (a camera-moved background plus a few
foreground sprites) rendered with ``cv2.warpPerspective``.  Because every
layer is a known homography of a known texture, the true position of any
texture point in any frame is just that homography applied to it, and its
visibility follows from the warped masks of the layers above it.  The data is
deliberately "crazy" (random shapes, textures, motions, occlusions) in the
spirit of FlyingThings++ used to train PIPs: diversity matters more than
realism for learning to track.

Conventions: pixel centres at integer coordinates, origin top-left, x right,
y down.  ``warpPerspective(src, M)`` puts texture point ``p`` at frame point
``M @ p`` in exactly this convention, so trajectories match the pixels.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator

import cv2
import numpy as np

__all__ = [
    "SynthConfig",
    "make_clip",
    "clip_stream",
    "write_test_set",
    "load_test_set",
    "load_test_config",
    "clips_per_second",
    "photo_names",
    "EVAL_PHOTOS",
]

# The photographs ``pipstrack eval`` builds its clips from (and the sample clip's): a training run
# that should be judged on them as unseen content passes them in ``SynthConfig.exclude_photos``.
EVAL_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "coins", "page")


@dataclass(frozen=True)
class SynthConfig:
    frames: int = 8
    height: int = 128
    width: int = 160
    points: int = 64  # points sampled per clip
    min_sprites: int = 2
    max_sprites: int = 6
    # Foreground sprites.  Sizes are fractions of min(H, W); shifts of W.
    sprite_size: tuple[float, float] = (0.2, 0.85)
    sprite_shift: float = 0.9  # max total displacement over the clip
    sprite_rot: float = 0.8  # max total rotation over the clip (rad)
    sprite_zoom: float = 0.4  # max |log scale change| over the clip
    sprite_persp: float = 0.15  # max foreshortening (fraction of half-size)
    cross_prob: float = 0.7  # chance a sprite is aimed across a lower sprite
    # Camera (background) motion.
    bg_shift: float = 0.35
    bg_rot: float = 0.25
    bg_zoom: float = 0.3
    bg_persp: float = 0.12
    # Textures.
    photo_prob: float = 0.35  # fraction of textures cut from skimage photos
    # Appearance changes (all off in ``clean()``).
    brightness: float = 0.15  # per-frame global brightness/contrast drift
    layer_gain: float = 0.12  # per-layer, per-channel lighting drift
    blur_prob: float = 0.3  # chance a clip has motion blur
    noise_prob: float = 0.5  # chance a clip has Gaussian noise
    noise_sigma: float = 6.0  # max noise std (0..255 scale)
    jpeg_prob: float = 0.3  # chance a clip is JPEG-compressed per frame
    jpeg_quality: tuple[int, int] = (40, 95)
    # Slow clips: real shots are often near-static or slow; without them a model learns that
    # everything moves fast and invents motion. A slow clip plays a random stretch of its
    # motion at a speed drawn log-uniformly from ``slow_speed`` (all motions scale together).
    slow_prob: float = 0.0
    slow_speed: tuple[float, float] = (0.01, 0.5)
    # Camera shake: a per-frame random jolt (std drawn from ``shake_px``) moving every layer
    # together, as a hand-held or vibrating camera does; smooth paths alone never teach it.
    shake_prob: float = 0.0
    shake_px: tuple[float, float] = (0.3, 3.0)
    # Fast clips: paths 1.5-2.5x longer over the same frames (the camera up to ~30 px per
    # frame at 160 px wide), where blur is longest and a classical tracker loses the point at once.
    fast_prob: float = 0.0
    fast_speed: tuple[float, float] = (1.5, 2.5)
    # Exposure and white-balance flicker: a per-frame gain of the whole frame and of each channel
    # (std drawn up to ``flicker``), as fluorescent light, auto-exposure or a cheap camera give.
    flicker_prob: float = 0.0
    flicker: float = 0.08
    # Poles: a sprite drawn as a thin bar (4-14 % of its side wide, its full length), the occluder
    # that hides a point for a few frames and drags a tracker along its edge.
    pole_prob: float = 0.0
    # Lingering occluders: a large shape that slides in over the frame early and stays (or leaves
    # again near the end), so that points seen on the query frame are hidden for most of the clip,
    # as a passer-by or a parked car hides a marker; crossing sprites hide a point for a few frames.
    linger_prob: float = 0.0
    linger_size: tuple[float, float] = (0.5, 0.9)
    # Photographs never used as textures (the evaluation's, so that its photo clips are unseen).
    exclude_photos: tuple[str, ...] = ()
    # Point sampling.
    edge_margin: int = 2  # px kept clear of any layer boundary at frame 0
    sprite_share: float = 0.5  # share of points on sprites when any is visible

    def clean(self) -> "SynthConfig":
        """Same geometry with every photometric augmentation off (for exact checks)."""
        return dataclasses.replace(
            self, brightness=0.0, layer_gain=0.0, blur_prob=0.0, noise_prob=0.0, jpeg_prob=0.0, flicker_prob=0.0
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SynthConfig":
        d = json.loads(text)
        names = {f.name: f for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)


# --------------------------------------------------------------------------
# Photo textures (bundled with the scikit-image wheel, no network needed)
# --------------------------------------------------------------------------

# Only images that ship inside the wheel; the others need pooch + network.
_PHOTO_NAMES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "immunohistochemistry",
    "retina",
    "coins",
    "moon",
    "page",
    "text",
    "brick",
    "grass",
    "gravel",
    "clock",
    "stereo_motorcycle",
    "colorwheel",
    "hubble_deep_field",
)
_PHOTOS: dict[str, np.ndarray] = {}
_PHOTOS_LOADED = False


def _load_photos() -> dict[str, np.ndarray]:
    """Load once per process; a missing skimage just means procedural-only."""
    global _PHOTOS_LOADED
    if _PHOTOS_LOADED:
        return _PHOTOS
    _PHOTOS_LOADED = True
    try:
        import skimage.data as skd
    except Exception:
        return _PHOTOS
    for name in _PHOTO_NAMES:
        try:
            img = getattr(skd, name)()
        except Exception:
            continue
        if isinstance(img, tuple):  # stereo pairs: keep the left view
            img = img[0]
        img = np.asarray(img)
        if img.dtype != np.uint8:
            continue
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = np.ascontiguousarray(img[:, :, :3])
        side = max(img.shape[:2])
        if side > 640:  # big photos only cost resize time
            f = 640.0 / side
            img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        _PHOTOS[name] = img
    return _PHOTOS


def photo_names() -> list[str]:
    """Which skimage photos are actually usable here (for reports and tests)."""
    return sorted(_load_photos())


# --------------------------------------------------------------------------
# Procedural textures (float32 HxWx3 in [0, 1])
# --------------------------------------------------------------------------


def _colour(rng) -> np.ndarray:
    return rng.random(3, dtype=np.float32)


def _noise(rng, h, w, cell, octaves, persistence=0.55, channels=3) -> np.ndarray:
    """Multi-octave value noise, normalised to [0, 1] per channel."""
    out = np.zeros((h, w, channels), np.float32)
    amp = 1.0
    for _ in range(octaves):
        gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
        grid = rng.random((gh, gw, channels), dtype=np.float32)
        up = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        out += amp * up.reshape(h, w, channels)
        amp *= persistence
        cell *= 0.5
        if cell < 1.5:
            break
    lo = out.min(axis=(0, 1), keepdims=True)
    hi = out.max(axis=(0, 1), keepdims=True)
    return (out - lo) / np.maximum(hi - lo, 1e-6)


def _palette(rng, t: np.ndarray) -> np.ndarray:
    """Map a scalar field in [0, 1] through a random 2-4 colour ramp."""
    k = int(rng.integers(2, 5))
    cols = rng.random((k, 3), dtype=np.float32)
    x = t * (k - 1)
    i = np.clip(x.astype(np.int32), 0, k - 2)
    f = (x - i)[..., None]
    return cols[i] * (1 - f) + cols[i + 1] * f


def _tex_noise(rng, h, w):
    cell = float(rng.uniform(4, 40))
    if rng.random() < 0.5:
        return _noise(rng, h, w, cell, 6)
    return _palette(rng, _noise(rng, h, w, cell, 6, channels=1)[..., 0])


def _rot_coords(rng, h, w):
    th = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return x * np.float32(np.cos(th)) + y * np.float32(np.sin(th)), -x * np.float32(np.sin(th)) + y * np.float32(
        np.cos(th)
    )


def _tex_stripes(rng, h, w):
    u, _ = _rot_coords(rng, h, w)
    period = float(rng.uniform(4, 24))
    u = u + _noise(rng, h, w, float(rng.uniform(10, 60)), 2, channels=1)[..., 0] * float(rng.uniform(0, 2 * period))
    phase = (u / period) % 1.0
    if rng.random() < 0.5:
        s = (phase < rng.uniform(0.3, 0.7)).astype(np.float32)
    else:
        s = 0.5 + 0.5 * np.sin(2 * np.pi * phase)
    c1, c2 = _colour(rng), _colour(rng)
    img = c1 * s[..., None] + c2 * (1 - s[..., None])
    return img + 0.25 * (_noise(rng, h, w, 3.0, 2) - 0.5)


def _tex_checker(rng, h, w):
    u, v = _rot_coords(rng, h, w)
    p = float(rng.uniform(4, 20))
    s = ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)[..., None]
    img = _colour(rng) * s + _colour(rng) * (1 - s)
    return img + 0.3 * (_noise(rng, h, w, float(rng.uniform(3, 12)), 3) - 0.5)


def _tex_gradient(rng, h, w):
    u, _ = _rot_coords(rng, h, w)
    if rng.random() < 0.4:  # radial
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        u = np.hypot(x - rng.uniform(0, w), y - rng.uniform(0, h))
    t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    img = _colour(rng) * t[..., None] + _colour(rng) * (1 - t[..., None])
    # Smooth ramps alone are untrackable: add fine detail on top.
    return img + float(rng.uniform(0.2, 0.5)) * (_noise(rng, h, w, float(rng.uniform(2, 8)), 3) - 0.5)


def _tex_strokes(rng, h, w):
    base = _tex_noise(rng, h, w) if rng.random() < 0.5 else np.broadcast_to(_colour(rng), (h, w, 3))
    img = np.ascontiguousarray(base * 255).astype(np.uint8)
    n = int(rng.integers(20, 80) * max(1.0, h * w / 160.0**2))
    pts = rng.integers(0, [w, h], size=(n, 2))
    ends = pts + rng.normal(0, rng.uniform(5, 30), size=(n, 2)).astype(np.int64)
    cols = rng.integers(0, 256, size=(n, 3))
    kind = rng.random(n)
    thick = rng.integers(1, 5, size=n)
    rad = rng.integers(1, 8, size=n)
    for i in range(n):
        c = tuple(int(v) for v in cols[i])
        p = (int(pts[i, 0]), int(pts[i, 1]))
        if kind[i] < 0.55:
            cv2.line(img, p, (int(ends[i, 0]), int(ends[i, 1])), c, int(thick[i]), cv2.LINE_AA)
        else:
            cv2.circle(img, p, int(rad[i]), c, -1 if kind[i] < 0.85 else 1, cv2.LINE_AA)
    return img.astype(np.float32) / 255.0


_PROCEDURAL = (_tex_noise, _tex_noise, _tex_stripes, _tex_checker, _tex_gradient, _tex_strokes, _tex_strokes)


def _tex_photo(rng, h, w, photos):
    name = sorted(photos)[int(rng.integers(len(photos)))]
    img = photos[name]
    ph, pw = img.shape[:2]
    # Crop with the target aspect at a random scale, then resample to size.
    s = float(rng.uniform(0.5, 1.6))
    ch, cw = h * s, w * s
    f = min(1.0, ph / ch, pw / cw)
    ch, cw = max(8, int(ch * f)), max(8, int(cw * f))
    y0 = int(rng.integers(0, ph - ch + 1))
    x0 = int(rng.integers(0, pw - cw + 1))
    crop = img[y0 : y0 + ch, x0 : x0 + cw]
    interp = cv2.INTER_AREA if cw > w else cv2.INTER_LINEAR
    out = cv2.resize(crop, (w, h), interpolation=interp).astype(np.float32) / 255.0
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1]
    return out


def _texture(rng, h, w, cfg: SynthConfig) -> np.ndarray:
    """One jittered texture as uint8 HxWx3 (RGB)."""
    photos = _load_photos() if cfg.photo_prob > 0 else {}
    if cfg.exclude_photos:
        photos = {k: v for k, v in photos.items() if k not in cfg.exclude_photos}
    if photos and rng.random() < cfg.photo_prob:
        img = _tex_photo(rng, h, w, photos)
    else:
        img = _PROCEDURAL[int(rng.integers(len(_PROCEDURAL)))](rng, h, w)
        if rng.random() < 0.25:  # blend two patterns for extra variety
            other = _PROCEDURAL[int(rng.integers(len(_PROCEDURAL)))](rng, h, w)
            a = float(rng.uniform(0.3, 0.7))
            img = a * img + (1 - a) * other
    # Colour jitter: channel gains/offsets, occasional shuffle or inversion.
    gain = rng.uniform(0.6, 1.4, 3).astype(np.float32)
    off = rng.uniform(-0.15, 0.15, 3).astype(np.float32)
    img = img * gain + off
    if rng.random() < 0.2:
        img = img[..., rng.permutation(3)]
    if rng.random() < 0.1:
        img = 1.0 - img
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------
# Sprite masks (uint8, anti-aliased, zero within a margin of the border)
# --------------------------------------------------------------------------


def _mask(rng, side: int) -> np.ndarray:
    m = np.zeros((side, side), np.uint8)
    c = (side - 1) / 2.0
    r = side / 2.0 - 3  # keep clear of the border so warps never clip the shape
    shapes = 1 if rng.random() < 0.75 else 2
    for _ in range(shapes):
        kind = rng.random()
        cx, cy = c + rng.uniform(-0.15, 0.15, 2) * r * (shapes - 1)
        rr = r * (1.0 if shapes == 1 else 0.8)
        if kind < 0.3:  # ellipse
            ax = (max(2, int(rr * rng.uniform(0.5, 1.0))), max(2, int(rr * rng.uniform(0.3, 1.0))))
            cv2.ellipse(
                m,
                (int(cx * 16), int(cy * 16)),
                (ax[0] * 16, ax[1] * 16),
                float(rng.uniform(0, 180)),
                0,
                360,
                255,
                -1,
                cv2.LINE_AA,
                4,
            )
        elif kind < 0.65:  # star-shaped polygon
            n = int(rng.integers(3, 11))
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = rr * rng.uniform(0.45, 1.0, n)
            pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
            cv2.fillPoly(m, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
        elif kind < 0.8:  # rectangle-ish quad
            hw, hh = rr * rng.uniform(0.4, 0.95), rr * rng.uniform(0.3, 0.95)
            a = rng.uniform(0, np.pi)
            ca, sa = np.cos(a), np.sin(a)
            q = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]]) @ np.array([[ca, sa], [-sa, ca]])
            q = q * min(1.0, rr / max(1e-6, np.abs(q).max())) + [cx, cy]
            cv2.fillPoly(m, [np.round(q * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
        else:  # blob: thresholded noise under a radial falloff
            f = _noise(rng, side, side, side / rng.uniform(2, 5), 3, channels=1)[..., 0]
            y, x = np.mgrid[0:side, 0:side].astype(np.float32)
            d = np.hypot(x - cx, y - cy) / rr
            f = f - d * d * 0.8
            blob = np.clip((f - 0.2) * 255 * 6, 0, 255)  # ~1-2 px soft edge
            blob[d >= 1] = 0
            m = np.maximum(m, blob.astype(np.uint8))
    return m


def _pole_mask(rng, side: int) -> np.ndarray:
    """A thin bar across the whole sprite (any angle), anti-aliased, clear of the border."""
    m = np.zeros((side, side), np.uint8)
    c = (side - 1) / 2.0
    half_len = side / 2.0 - 3
    half_w = max(1.0, side * rng.uniform(0.02, 0.07))
    a = rng.uniform(0, np.pi)
    d, n = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
    corners = ((-1, -1), (1, -1), (1, 1), (-1, 1))
    q = np.array([c, c]) + np.array([s * half_len * d + t * half_w * n for s, t in corners])
    cv2.fillPoly(m, [np.round(q * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
    return m


# --------------------------------------------------------------------------
# Motion
# --------------------------------------------------------------------------


def _ease(rng, u: np.ndarray) -> np.ndarray:
    """Random monotone time warp (acceleration/deceleration), 0->0, 1->1."""
    a = float(rng.uniform(-0.8, 0.8))
    return u + a * u * (1 - u)


def _homographies(pos, theta, scale, aspect, shear, persp, centre) -> np.ndarray:
    """M[t] = T(pos) R(theta) A(scale, aspect, shear) P(persp) T(-centre)."""
    T = len(pos)
    c, s = np.cos(theta), np.sin(theta)
    M = np.zeros((T, 3, 3))
    # Linear part R @ [[s*a, s*sh], [0, s/a]]
    a11, a12, a22 = scale * aspect, scale * shear, scale / aspect
    M[:, 0, 0] = c * a11
    M[:, 0, 1] = c * a12 - s * a22
    M[:, 1, 0] = s * a11
    M[:, 1, 1] = s * a12 + c * a22
    M[:, 0, 2] = pos[:, 0]
    M[:, 1, 2] = pos[:, 1]
    M[:, 2, 2] = 1.0
    P = np.tile(np.eye(3), (T, 1, 1))
    P[:, 2, 0] = persp[:, 0]
    P[:, 2, 1] = persp[:, 1]
    Tc = np.eye(3)
    Tc[:2, 2] = -np.asarray(centre, float)
    return M @ P @ Tc


def _apply(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply homography M (3x3) to pts (..., 2)."""
    q = pts @ M[:2, :2].T + M[:2, 2]
    w = pts @ M[2, :2] + M[2, 2]
    return q / w[..., None]


def _path(rng, u, mid, disp, bend):
    """Smooth 2-D path through `mid` at u=0.5 with total displacement `disp`."""
    e = _ease(rng, u)
    perp = np.array([-disp[1], disp[0]])
    return mid + np.outer(e - 0.5, disp) + np.outer(4 * u * (1 - u) - 2.0 / 3.0, perp * bend)


def _rand_dir(rng):
    a = rng.uniform(0, 2 * np.pi)
    return np.array([np.cos(a), np.sin(a)])


@dataclass
class _Layer:
    rgb: np.ndarray  # texture, uint8 h x w x 3
    alpha: np.ndarray  # mask, uint8 h x w (255 = opaque)
    H: np.ndarray  # (T, 3, 3) texture -> frame
    rgba: np.ndarray | None = None
    gain: np.ndarray | None = None  # (T, 3) lighting drift
    blur: float = 0.0  # shutter fraction for motion blur (0 = none)
    centre: np.ndarray | None = None  # (T, 2) frame position of the centre


def _background(rng, cfg: SynthConfig, u: np.ndarray, jitter=0.0, fast=1.0) -> _Layer:
    H, W = cfg.height, cfg.width
    s0 = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    scale = s0 * np.exp(rng.uniform(-1, 1) * cfg.bg_zoom * _ease(rng, u))
    theta = rng.uniform(-np.pi, np.pi) + rng.uniform(-1, 1) * cfg.bg_rot * _ease(rng, u)
    disp = _rand_dir(rng) * rng.uniform(0, cfg.bg_shift) * W * fast
    mid = np.array([(W - 1) / 2, (H - 1) / 2]) + rng.uniform(-0.1, 0.1, 2) * [W, H]
    pos = _path(rng, u, mid, disp, rng.uniform(-0.3, 0.3)) + jitter
    L = max(W, H) / 2 / s0  # half extent of the visible texture
    p0 = rng.uniform(-1, 1, 2) * cfg.bg_persp
    p1 = rng.uniform(-1, 1, 2) * cfg.bg_persp
    persp = (p0 + np.outer(u, p1 - p0)) / L
    aspect = float(np.exp(rng.uniform(-0.1, 0.1)))
    shear = float(rng.uniform(-0.1, 0.1))
    M0 = _homographies(pos, theta, scale, aspect, shear, persp, (0.0, 0.0))
    # Size the texture to cover every frame's preimage, so nothing is invented.
    corners = np.array([[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, H - 0.5], [-0.5, H - 0.5]])
    pre = np.concatenate([_apply(np.linalg.inv(m), corners) for m in M0])
    lo, hi = pre.min(0) - 3, pre.max(0) + 3
    cap = 4 * max(W, H)
    size = np.minimum(np.ceil(hi - lo).astype(int) + 1, cap)
    lo = (lo + hi) / 2 - (size - 1) / 2  # recentre if capped
    tw, th = int(size[0]), int(size[1])
    Toff = np.eye(3)
    Toff[:2, 2] = lo
    rgb = _texture(rng, th, tw, cfg)
    return _Layer(rgb=rgb, alpha=np.full((th, tw), 255, np.uint8), H=M0 @ Toff, centre=pos)


def _sprites(rng, cfg: SynthConfig, u: np.ndarray, jitter=0.0, fast=1.0) -> list[_Layer]:
    H, W = cfg.height, cfg.width
    n = int(rng.integers(cfg.min_sprites, cfg.max_sprites + 1))
    out: list[_Layer] = []
    mids: list[np.ndarray] = []
    for _ in range(n):
        size = rng.uniform(*cfg.sprite_size) * min(H, W)
        r = rng.uniform(1.0, 1.6)  # texture oversampling
        side = int(np.clip(round(size * r), 12, 256))
        s0 = size / side
        if mids and rng.random() < cfg.cross_prob:
            # Aim at a lower sprite: it is then crossed mid-clip (occlusions).
            mid = mids[int(rng.integers(len(mids)))] + rng.normal(0, 0.15, 2) * size
        else:
            mid = rng.uniform([-0.05 * W, -0.05 * H], [1.05 * W, 1.05 * H])
        mids.append(mid)
        disp = _rand_dir(rng) * cfg.sprite_shift * W * rng.random() ** 0.7 * fast
        pos = _path(rng, u, mid, disp, rng.uniform(-0.4, 0.4)) + jitter
        theta = rng.uniform(-np.pi, np.pi) + rng.uniform(-1, 1) * cfg.sprite_rot * _ease(rng, u)
        scale = s0 * np.exp(rng.uniform(-1, 1) * cfg.sprite_zoom * _ease(rng, u))
        p0 = rng.uniform(-1, 1, 2) * cfg.sprite_persp
        p1 = rng.uniform(-1, 1, 2) * cfg.sprite_persp
        persp = (p0 + np.outer(u, p1 - p0)) / (side / 2)
        aspect = float(np.exp(rng.uniform(-0.35, 0.35)))
        shear = float(rng.uniform(-0.25, 0.25))
        c = (side - 1) / 2.0
        Hs = _homographies(pos, theta, scale, aspect, shear, persp, (c, c))
        rgb = _texture(rng, side, side, cfg)
        pole = cfg.pole_prob > 0 and rng.random() < cfg.pole_prob  # draws nothing when off
        alpha = _pole_mask(rng, side) if pole else _mask(rng, side)
        out.append(_Layer(rgb=rgb, alpha=alpha, H=Hs, centre=pos))
    if cfg.linger_prob > 0:
        # Drawn from a generator jumped far ahead, so the rest of the clip (sprites, looks, points)
        # is the one the seed gives without it, and nothing is drawn when it is off.
        own = np.random.Generator(rng.bit_generator.jumped())
        if own.random() < cfg.linger_prob:
            out.append(_lingering(own, cfg, len(u), jitter))
    return out


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _lingering(rng, cfg: SynthConfig, T: int, jitter) -> _Layer:
    """The top layer: slides in from outside the frame over the first 5-25 % of the clip and rests over
    the frame's middle; in a third of the clips it slides out again over the last 10-25 %. It follows
    frame time, not the clip's motion timeline, so a slow clip still has a long occlusion."""
    H, W = cfg.height, cfg.width
    size = rng.uniform(*cfg.linger_size) * min(H, W)
    side = int(np.clip(round(size * 1.2), 12, 256))
    s = np.linspace(0.0, 1.0, T) if T > 1 else np.zeros(1)
    rest = rng.uniform([0.2 * W, 0.2 * H], [0.8 * W, 0.8 * H])
    d = _rand_dir(rng)  # it starts just outside the frame in this direction
    with np.errstate(divide="ignore"):
        exits = np.where(d > 0, (np.array([W, H]) - rest) / d, np.where(d < 0, -rest / d, np.inf))
    away = d * (exits.min() + 0.75 * size)
    pos = rest + np.outer(1.0 - _smoothstep(s / rng.uniform(0.05, 0.25)), away)
    if rng.random() < 1 / 3:
        leave = rng.uniform(0.1, 0.25)
        pos = pos + np.outer(_smoothstep((s - (1.0 - leave)) / leave), _rand_dir(rng) * 1.5 * size)
    pos = pos + jitter
    c = (side - 1) / 2.0
    theta = np.full(T, rng.uniform(-np.pi, np.pi))
    Hs = _homographies(pos, theta, size / side, 1.0, 0.0, np.zeros((T, 2)), (c, c))
    return _Layer(rgb=_texture(rng, side, side, cfg), alpha=_mask(rng, side), H=Hs, centre=pos)


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def _blur_kernel(v: np.ndarray) -> np.ndarray | None:
    """Normalised line kernel along motion vector v (pixels), or None if tiny."""
    L = float(np.hypot(*v))
    if L < 1.5:
        return None
    k = int(np.ceil(L)) | 1
    img = np.zeros((k + 2, k + 2), np.float32)
    c = (k + 1) / 2.0
    a = (c - v[0] / 2, c - v[1] / 2)
    b = (c + v[0] / 2, c + v[1] / 2)
    cv2.line(
        img,
        (int(round(a[0] * 16)), int(round(a[1] * 16))),
        (int(round(b[0] * 16)), int(round(b[1] * 16))),
        1.0,
        1,
        cv2.LINE_AA,
        4,
    )
    s = img.sum()
    return img / s if s > 0 else None


def _gauss_like(rng, shape, sigma: float) -> np.ndarray:
    """Near-Gaussian noise (sum of 4 uniform bytes), ~8x cheaper than standard_normal."""
    n = int(np.prod(shape))
    b = np.frombuffer(rng.bytes(4 * n), np.uint8).reshape(4, n)
    acc = b[0].astype(np.float32)
    acc += b[1]
    acc += b[2]
    acc += b[3]
    # Irwin-Hall of four uniforms on 0..255: mean 510, std sqrt(4 * (256**2 - 1) / 12).
    acc -= 510.0
    acc *= np.float32(sigma / 147.8)
    return acc.reshape(shape)


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear sample of a 2-D array at (x, y); zero outside."""
    h, w = img.shape
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    out = np.zeros(x.shape, np.float64)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            v = np.zeros(x.shape, np.float64)
            v[ok] = img[yi[ok], xi[ok]]
            out += wx * wy * v
    return out


def _sprite_split(counts: np.ndarray) -> np.ndarray:
    """Sprites share by sqrt(area): big ones get more, slivers don't hog points."""
    r = np.sqrt(counts)
    return r / r.sum()


def _sample_points(rng, cfg, id_map, n_layers):
    """Pick N query pixels at frame 0, away from any layer boundary."""
    m = cfg.edge_margin
    k = np.ones((2 * m + 1, 2 * m + 1), np.uint8)
    ok = cv2.erode(id_map, k) == cv2.dilate(id_map, k)
    ok &= id_map != 255
    if m > 0:
        ok[:m] = ok[-m:] = False
        ok[:, :m] = ok[:, -m:] = False
    ys, xs = np.nonzero(ok)
    if len(xs) == 0:  # pathological; fall back to any covered pixel
        ys, xs = np.nonzero(id_map != 255)
    lid = id_map[ys, xs].astype(np.int64)
    counts = np.bincount(lid, minlength=n_layers).astype(float)
    vis_sprites = np.nonzero(counts[1:] > 0)[0] + 1
    share = np.zeros(n_layers)
    if len(vis_sprites) and counts[0] > 0:
        share[0] = 1 - cfg.sprite_share
        share[vis_sprites] = cfg.sprite_share * _sprite_split(counts[vis_sprites])
    elif len(vis_sprites):
        share[vis_sprites] = _sprite_split(counts[vis_sprites])
    else:
        share[0] = 1.0
    w = share[lid] / np.maximum(counts[lid], 1)
    N = cfg.points
    if len(xs) >= N:
        # Gumbel top-k: weighted sampling without replacement in O(n).
        key = np.log(np.maximum(w, 1e-300)) + rng.gumbel(size=len(w))
        idx = np.argpartition(-key, N - 1)[:N]
        idx = idx[np.argsort(-key[idx], kind="stable")]
    else:
        idx = rng.choice(len(xs), size=N, replace=True, p=w / w.sum())
    jit = rng.uniform(-0.5, 0.5, size=(N, 2))
    pts = np.stack([xs[idx], ys[idx]], 1).astype(np.float64) + jit
    return pts, lid[idx]


@dataclass
class _Looks:
    """A clip's photometric choices (drawn whether or not they are used, so a clip's geometry
    does not depend on which augmentations are on)."""

    blur: bool
    noise: bool
    jpeg: bool
    sigma: float
    quality: int
    noise_rng: np.random.Generator
    contrast: np.ndarray  # (T,)
    offset: np.ndarray  # (T,)
    flicker: np.ndarray | None = None  # (T, 3) per-frame channel gains, or None


def _timeline(rng, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray | float, float]:
    """Each frame's place on the motion paths (0..1), slowed for a slow clip, the camera shake
    per frame (0.0 when the clip does not shake), and how much longer a fast clip's paths are."""
    T = cfg.frames
    u = np.linspace(0.0, 1.0, T) if T > 1 else np.zeros(1)
    fast = 1.0
    if cfg.slow_prob > 0 and rng.random() < cfg.slow_prob:  # draws nothing when off: old seeds keep their clips
        speed = float(np.exp(rng.uniform(*np.log(cfg.slow_speed))))
        centre = float(rng.uniform(0, 1))
        u = centre + speed * (u - centre)
    elif cfg.fast_prob > 0 and rng.random() < cfg.fast_prob:  # draws nothing when off
        fast = float(rng.uniform(*cfg.fast_speed))
    jitter = 0.0
    if cfg.shake_prob > 0 and rng.random() < cfg.shake_prob:  # draws nothing when off
        jitter = rng.normal(0.0, rng.uniform(*cfg.shake_px), (T, 2))
    return u, jitter, fast


def _draw_looks(rng, cfg: SynthConfig, layers: list[_Layer], u: np.ndarray) -> _Looks:
    """Blur, noise, JPEG and brightness for the clip; gain and motion blur for each layer."""
    do_blur = rng.random() < cfg.blur_prob
    do_noise = rng.random() < cfg.noise_prob
    do_jpeg = rng.random() < cfg.jpeg_prob
    sigma = rng.uniform(1.0, max(cfg.noise_sigma, 1.0))
    quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    noise_rng = np.random.default_rng(rng.integers(2**63))
    bright = cfg.brightness * (rng.uniform(-1, 1, 2)[:, None] * u + rng.uniform(-0.5, 0.5, 2)[:, None])
    for ly in layers:
        g = rng.uniform(-1, 1, 3) * cfg.layer_gain
        ly.gain = (1.0 + np.outer(u, g)).astype(np.float32)
        shutter, pick = rng.uniform(0.5, 1.0), rng.random()
        ly.blur = shutter if (do_blur and pick < 0.6) else 0.0
        ly.rgba = np.ascontiguousarray(np.dstack([ly.rgb, ly.alpha]))
    layers[0].blur = layers[0].blur * 0.5  # camera blur is milder
    flicker = None
    # Drawn from the noise generator, so the clip's geometry is the same with flicker on or off,
    # and nothing is drawn when it is off (old seeds keep their clips).
    if cfg.flicker_prob > 0 and noise_rng.random() < cfg.flicker_prob:
        T = len(u)
        exposure = noise_rng.normal(0.0, noise_rng.uniform(0.2, 1.0) * cfg.flicker, (T, 1))
        balance = noise_rng.normal(0.0, noise_rng.uniform(0.1, 0.5) * cfg.flicker, (T, 3))
        flicker = np.exp(exposure + balance).astype(np.float32)
    return _Looks(do_blur, do_noise, do_jpeg, sigma, quality, noise_rng, np.exp(bright[0]), bright[1] * 255.0, flicker)


def _sprite_boxes(layers: list[_Layer]) -> list[list]:
    """Frame-space bounding boxes [x0, y0, x1, y1] of every layer's texture, per frame."""
    boxes = []
    for ly in layers:
        h, w = ly.rgb.shape[:2]
        q = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], float)
        p = np.einsum("tij,kj->tki", ly.H, q)
        p = p[..., :2] / p[..., 2:]
        boxes.append(np.concatenate([np.floor(p.min(1)), np.ceil(p.max(1))], 1).astype(int).tolist())
    return boxes


def _render_background(bg: _Layer, t: int, vel, cfg: SynthConfig) -> np.ndarray:
    H, W = cfg.height, cfg.width
    canvas = cv2.warpPerspective(bg.rgb, bg.H[t], (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    canvas = canvas.astype(np.float32)
    if cfg.layer_gain:
        canvas *= bg.gain[t]
    if bg.blur:
        kb = _blur_kernel(vel * bg.blur)
        if kb is not None:
            canvas = cv2.filter2D(canvas, -1, kb, borderType=cv2.BORDER_REFLECT101)
    return canvas


def _composite_sprite(canvas: np.ndarray, ly: _Layer, t: int, vel, box, cfg: SynthConfig):
    """Lays sprite ``ly`` over ``canvas`` (in place, motion-blurred with its alpha); returns
    (x0, y0, alpha) of its geometric mask's region, or None when it is off the frame."""
    H, W = cfg.height, cfg.width
    kern = _blur_kernel(vel * ly.blur) if ly.blur else None
    pad = 2 + (kern.shape[0] // 2 if kern is not None else 0)
    bx0, by0, bx1, by1 = box
    x0, y0 = max(bx0 - pad, 0), max(by0 - pad, 0)
    x1, y1 = min(bx1 + pad + 1, W), min(by1 + pad + 1, H)
    if x1 <= x0 or y1 <= y0:
        return None
    Mr = ly.H[t].copy()
    Mr[0] -= x0 * Mr[2]
    Mr[1] -= y0 * Mr[2]
    w4 = cv2.warpPerspective(
        ly.rgba, Mr, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    ).astype(np.float32)
    a = w4[..., 3] * np.float32(1 / 255.0)
    col = w4[..., :3]
    if cfg.layer_gain:
        col *= ly.gain[t]
    roi = canvas[y0:y1, x0:x1]
    if kern is not None:
        pm = np.dstack([col * a[..., None], a])
        pm = cv2.filter2D(pm, -1, kern, borderType=cv2.BORDER_CONSTANT)
        roi *= 1.0 - pm[..., 3:4]
        roi += pm[..., :3]
    else:
        roi += a[..., None] * (col - roi)
    return x0, y0, a


def _finish_frame(canvas: np.ndarray, looks: _Looks, t: int, cfg: SynthConfig, out: np.ndarray) -> None:
    """Flicker, brightness drift, sensor noise, rounding to 8 bits and JPEG artefacts, into ``out``."""
    if looks.flicker is not None:
        canvas *= looks.flicker[t]
    if cfg.brightness:
        canvas *= np.float32(looks.contrast[t])
        canvas += np.float32(127.5 * (1.0 - looks.contrast[t]) + looks.offset[t])
    if looks.noise:
        canvas += _gauss_like(looks.noise_rng, canvas.shape, looks.sigma)
    canvas += np.float32(0.5)  # round, not truncate, on the cast below
    np.clip(canvas, 0, 255, out=canvas)
    np.copyto(out, canvas, casting="unsafe")
    if looks.jpeg:
        _, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, looks.quality])
        out[...] = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def _render(cfg: SynthConfig, layers: list[_Layer], looks: _Looks):
    """Every frame: (rgbs (T,H,W,3) uint8, alphas[t][layer] = (x0, y0, alpha) or None, the
    frame-0 map of which layer is on top of each pixel)."""
    T, H, W = cfg.frames, cfg.height, cfg.width
    vel = [np.gradient(ly.centre, axis=0) if T > 1 else np.zeros((1, 2)) for ly in layers]  # for motion blur
    boxes = _sprite_boxes(layers)
    rgbs = np.empty((T, H, W, 3), np.uint8)
    alphas: list[list[tuple[int, int, np.ndarray] | None]] = []
    id_map = np.zeros((H, W), np.uint8)
    for t in range(T):
        canvas = _render_background(layers[0], t, vel[0][t], cfg)
        frame_alphas: list = [None]
        for li in range(1, len(layers)):
            fa = _composite_sprite(canvas, layers[li], t, vel[li][t], boxes[li][t], cfg)
            frame_alphas.append(fa)
            if t == 0 and fa is not None:
                x0, y0, a = fa
                id_map[y0 : y0 + a.shape[0], x0 : x0 + a.shape[1]][a >= 0.5] = li
        alphas.append(frame_alphas)
        _finish_frame(canvas, looks, t, cfg, rgbs[t])
    return rgbs, alphas, id_map


def _trajectories(layers: list[_Layer], pts0: np.ndarray, lid: np.ndarray, T: int):
    """Exact (T,N,2) paths of frame-0 points ``pts0`` on their layers ``lid``, and their
    texture coordinates."""
    N = len(pts0)
    tex_xy = np.empty_like(pts0)
    trajs = np.empty((T, N, 2), np.float64)
    for li in np.unique(lid):
        sel = lid == li
        tex_xy[sel] = _apply(np.linalg.inv(layers[li].H[0]), pts0[sel])
        for t in range(T):
            trajs[t, sel] = _apply(layers[li].H[t], tex_xy[sel])
    trajs[0] = pts0  # exact, avoids round-trip error
    return trajs, tex_xy


def _visibility(trajs: np.ndarray, lid: np.ndarray, alphas, cfg: SynthConfig) -> np.ndarray:
    """(T,N): inside the frame and not covered (alpha under 0.5) by any nearer layer."""
    H, W = cfg.height, cfg.width
    T, N = trajs.shape[:2]
    x, y = trajs[..., 0], trajs[..., 1]
    visible = (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)
    for t in range(T):
        cover = np.zeros(N)
        for li in range(1, len(alphas[t])):
            fa = alphas[t][li]
            sel = lid < li
            if fa is None or not sel.any():
                continue
            x0, y0, a = fa
            cover[sel] = np.maximum(cover[sel], _bilinear(a, x[t, sel] - x0, y[t, sel] - y0))
        visible[t] &= cover < 0.5
    return visible


def make_clip(seed_or_rng, cfg: SynthConfig = SynthConfig(), debug: bool = False) -> dict:
    """Render one clip; `debug=True` also returns the layers for verification.

    Returns {"rgbs": (T,H,W,3) uint8, "trajs": (T,N,2) float32, "visible":
    (T,N) bool, "query_frame": 0}.  Debug adds "layers" (list of dicts with
    "tex" uint8, "mask" float32 in [0,1], "H" (T,3,3) texture->frame; index 0
    is the background, higher index = nearer), "point_layer" (N,) and
    "tex_xy" (N,2).
    """
    rng = seed_or_rng if isinstance(seed_or_rng, np.random.Generator) else np.random.default_rng(seed_or_rng)
    u, jitter, fast = _timeline(rng, cfg)
    layers = [_background(rng, cfg, u, jitter, fast)] + _sprites(rng, cfg, u, jitter, fast)
    looks = _draw_looks(rng, cfg, layers, u)
    rgbs, alphas, id_map = _render(cfg, layers, looks)
    pts0, lid = _sample_points(rng, cfg, id_map, len(layers))  # query points on frame 0
    trajs, tex_xy = _trajectories(layers, pts0, lid, cfg.frames)
    clip = {
        "rgbs": rgbs,
        "trajs": trajs.astype(np.float32),
        "visible": _visibility(trajs, lid, alphas, cfg),
        "query_frame": 0,
    }
    if debug:
        clip["layers"] = [{"tex": ly.rgb, "mask": ly.alpha.astype(np.float32) / 255.0, "H": ly.H} for ly in layers]
        clip["point_layer"] = lid
        clip["tex_xy"] = tex_xy
    return clip


# --------------------------------------------------------------------------
# Streams and stored test sets
# --------------------------------------------------------------------------


def clip_rng(seed: int, k: int) -> np.random.Generator:
    """Generator for clip k of stream `seed` (independent of every other clip)."""
    return np.random.default_rng([int(seed), int(k)])


def clip_stream(seed: int, cfg: SynthConfig = SynthConfig()) -> Iterator[dict]:
    """Endless clips; clip k depends only on (seed, k), so streams can resume."""
    k = 0
    while True:
        yield make_clip(clip_rng(seed, k), cfg)
        k += 1


_KEYS = ("rgbs", "trajs", "visible", "query_frame")


def write_test_set(path, count: int, seed: int, cfg: SynthConfig = SynthConfig()) -> None:
    """Freeze `count` clips into one .npz; atomic so a crash never leaves half a file."""
    stream = clip_stream(seed, cfg)
    clips = [next(stream) for _ in range(count)]
    arrays = {k: np.stack([np.asarray(c[k]) for c in clips]) for k in _KEYS}
    arrays["config"] = np.array(cfg.to_json())
    arrays["seed"] = np.array(int(seed))
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".synth-", suffix=".npz", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_test_set(path) -> list[dict]:
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in _KEYS}
    return [
        {
            "rgbs": data["rgbs"][i],
            "trajs": data["trajs"][i],
            "visible": data["visible"][i],
            "query_frame": int(data["query_frame"][i]),
        }
        for i in range(len(data["rgbs"]))
    ]


def load_test_config(path) -> SynthConfig:
    with np.load(path, allow_pickle=False) as z:
        return SynthConfig.from_json(str(z["config"]))


def clips_per_second(cfg: SynthConfig = SynthConfig(), n: int = 20) -> float:
    """Generation throughput in the calling thread's current cv2 threading setup."""
    _load_photos()
    make_clip(clip_rng(12345, 0), cfg)  # warm-up (imports, caches)
    t0 = time.perf_counter()
    for k in range(n):
        make_clip(clip_rng(12345, k + 1), cfg)
    return n / (time.perf_counter() - t0)
