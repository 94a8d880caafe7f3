"""The bundled sample clip, and the kind of test clip it is: a photograph moved by a
smooth homography (a hand-held camera over a flat subject) with an occluder crossing it.

Such clips have exact ground truth and look nothing like the synthetic training data,
so they show how the tracker does on real image content. The shipped clip lives in
``pipstrack/data/sample`` (frames ``plate.1001.jpg`` .. ``plate.1048.jpg``, the query
points in ``points.txt`` and the truth in ``ground_truth.npz``); ``python -m
pipstrack.datasets.sample`` rebuilds it from scikit-image's astronaut photo.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

DATA = Path(__file__).resolve().parents[1] / "data" / "sample"
FIRST_FRAME = 1001


def sample_clip_dir() -> Path:
    return DATA


def sample_points_file() -> Path:
    return DATA / "points.txt"


def load_ground_truth() -> dict:
    with np.load(DATA / "ground_truth.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def camera_path(t: np.ndarray, rng: np.random.Generator, size: tuple[int, int], strength: float = 1.0) -> np.ndarray:
    """(T,3,3) homographies, photo -> frame: a slow drift with shake, rotation, zoom and tilt."""
    H, W = size
    T = len(t)
    ph = rng.uniform(0, 2 * np.pi, 8)
    u = t / max(T - 1, 1)
    tx = strength * (
        0.10 * W * (u - 0.5) + 6 * np.sin(2 * np.pi * 1.7 * u + ph[0]) + 2 * np.sin(2 * np.pi * 6 * u + ph[1])
    )
    ty = strength * (
        0.05 * H * np.sin(np.pi * u + ph[2])
        + 4 * np.sin(2 * np.pi * 2.3 * u + ph[3])
        + 1.5 * np.sin(2 * np.pi * 7 * u + ph[4])
    )
    rot = strength * 0.06 * np.sin(2 * np.pi * 0.8 * u + ph[5])
    zoom = np.exp(strength * 0.12 * np.sin(np.pi * u + ph[6]))
    tilt = strength * 2e-4 * np.sin(2 * np.pi * 0.6 * u + ph[7])
    mats = []
    cx, cy = (W - 1) / 2, (H - 1) / 2
    for k in range(T):
        c, s = np.cos(rot[k]) * zoom[k], np.sin(rot[k]) * zoom[k]
        A = np.array([[c, -s, cx + tx[k]], [s, c, cy + ty[k]], [0, 0, 1.0]])
        P = np.array([[1, 0, 0], [0, 1, 0], [tilt[k], 0.3 * tilt[k], 1.0]])
        mats.append(A @ P)
    return np.stack(mats)


def fit_photo(photo: np.ndarray, size: tuple[int, int], margin: float = 1.25) -> np.ndarray:
    """Photo -> frame-centred coordinates (what :func:`camera_path` moves), the photo ``margin``
    times larger than the frame so its edges never show."""
    H, W = size
    ph, pw = photo.shape[:2]
    f = margin * max(W / pw, H / ph)
    return np.array([[f, 0, -f * (pw - 1) / 2], [0, f, -f * (ph - 1) / 2], [0, 0, 1.0]])


def homography_clip(
    photo: np.ndarray,
    frames: int,
    size: tuple[int, int],
    seed: int = 0,
    occluder: bool = True,
    points: int = 12,
    strength: float = 1.0,
) -> dict:
    """A clip of ``photo`` seen through :func:`camera_path`, a textured bar crossing it.

    Returns rgbs (T,H,W,3) uint8, trajs (T,N,2) and visible (T,N) for N good features of
    frame 0 (pixel centres at integer coordinates).
    """
    rng = np.random.default_rng(seed)
    H, W = size
    mats = camera_path(np.arange(frames, dtype=np.float64), rng, size, strength) @ fit_photo(photo, size)

    bar_w = int(0.16 * W)
    bar_tex = np.tile(np.linspace(40, 90, bar_w, dtype=np.float32)[None, :, None], (H, 1, 3))
    bar_tex[::12] *= 0.6
    start_x, end_x = -bar_w, W
    t0, t1 = int(frames * 0.08), frames - 1

    rgbs, masks = [], []
    for k in range(frames):
        img = cv2.warpPerspective(photo, mats[k], (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        mask = np.zeros((H, W), bool)
        if occluder and t0 <= k <= t1:
            x0 = int(round(start_x + (end_x - start_x) * (k - t0) / max(t1 - t0, 1)))
            lo, hi = max(x0, 0), min(x0 + bar_w, W)
            if hi > lo:
                img[:, lo:hi] = bar_tex[:, lo - x0 : hi - x0].astype(np.uint8)
                mask[:, lo:hi] = True
        rgbs.append(img)
        masks.append(mask)

    gray = cv2.cvtColor(rgbs[0], cv2.COLOR_RGB2GRAY)
    margin = np.zeros_like(gray)
    margin[16:-16, 16:-16] = 255
    corners = cv2.goodFeaturesToTrack(gray, points, 0.01, min(H, W) / 8, mask=margin)
    xy0 = np.round(corners.reshape(-1, 2).astype(np.float64), 2)
    to_photo = np.linalg.inv(mats[0])
    trajs, visible = [], []
    for k in range(frames):
        M = mats[k] @ to_photo
        p = np.c_[xy0, np.ones(len(xy0))] @ M.T
        xy = p[:, :2] / p[:, 2:]
        xi = np.clip(np.round(xy[:, 0]).astype(int), 0, W - 1)
        yi = np.clip(np.round(xy[:, 1]).astype(int), 0, H - 1)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] <= W - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= H - 1)
        trajs.append(xy)
        visible.append(inside & ~masks[k][yi, xi])
    return {"rgbs": np.stack(rgbs), "trajs": np.stack(trajs).astype(np.float32), "visible": np.stack(visible)}


def build(out: Path = DATA, frames: int = 48, size=(270, 480), seed: int = 3) -> None:
    from skimage import data as skdata

    clip = homography_clip(skdata.astronaut(), frames, size, seed=seed, points=10)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("plate.*.jpg"):
        old.unlink()
    for k, img in enumerate(clip["rgbs"]):
        cv2.imwrite(
            str(out / f"plate.{FIRST_FRAME + k}.jpg"),
            cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, 92],
        )
    lines = ["# frame,x,y,name  (clip frame numbers; pixels, centres at integer coordinates)"]
    for n, (x, y) in enumerate(clip["trajs"][0]):
        lines.append(f"{FIRST_FRAME},{x:.2f},{y:.2f},feature{n + 1:02d}")
    (out / "points.txt").write_text("\n".join(lines) + "\n")
    np.savez_compressed(
        out / "ground_truth.npz",
        trajs=clip["trajs"],
        visible=clip["visible"],
        frame_numbers=np.arange(FIRST_FRAME, FIRST_FRAME + frames),
    )


if __name__ == "__main__":
    build()
