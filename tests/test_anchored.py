"""The keyframe-anchored polish at source resolution (pipstrack.engine.anchored)."""

import cv2
import numpy as np

from pipstrack.engine.anchored import anchored_polish
from pipstrack.evaluation.harness import load_photo


def warped_clip(T=12, size=(240, 320)):
    """A photograph under a slow affine camera move (rotation, zoom, sub-pixel shifts) with an
    exposure ramp: frames, and exact positions of a few points."""
    H, W = size
    base = cv2.resize(load_photo("coffee"), (W, H), interpolation=cv2.INTER_AREA).astype(np.float32)
    pts0 = np.array([[80.3, 70.6], [200.2, 120.4], [150.7, 180.1], [260.5, 60.9]])
    frames, truth = [], []
    for t in range(T):
        a = np.deg2rad(0.6 * t)
        s = 1.0 + 0.01 * t
        M = np.array([[s * np.cos(a), -s * np.sin(a), 0.37 * t], [s * np.sin(a), s * np.cos(a), -0.21 * t]])
        c = np.array([W / 2, H / 2])
        M[:, 2] += c - M[:, :2] @ c
        img = cv2.warpAffine(base, M, (W, H), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        gain = 1.0 - 0.03 * t  # exposure drifts
        frames.append(np.clip(img * gain, 0, 255).astype(np.uint8))
        truth.append(pts0 @ M[:, :2].T + M[:, 2])
    return np.stack(frames), np.stack(truth)


def test_matches_every_verified_frame_to_the_keyframe_pattern():
    frames, truth = warped_clip()
    T, N = truth.shape[:2]
    rng = np.random.default_rng(0)
    seeds = truth + rng.uniform(-0.6, 0.6, truth.shape)  # a chained polish's drift: tenths of a pixel
    seeds[0] = truth[0]
    verified = np.ones((T, N), bool)
    keyframes = [np.array([[0, *truth[0, n]]]) for n in range(N)]
    out, matched = anchored_polish(lambda i: frames[i], frames.shape[1:3], np.arange(T), seeds, verified, keyframes)
    err_before = np.linalg.norm(seeds[1:] - truth[1:], axis=-1)
    err_after = np.linalg.norm(out[1:] - truth[1:], axis=-1)
    assert matched[1:].all() and not matched[0].any()  # keyframes are left as they are
    assert np.median(err_after) < 0.06 and err_after.max() < 0.25, (np.median(err_after), err_after.max())
    assert np.median(err_after) < np.median(err_before) / 5


def test_a_frame_that_does_not_look_like_the_pattern_keeps_its_position():
    frames, truth = warped_clip(T=6)
    frames = frames.copy()
    x, y = np.round(truth[3, 1]).astype(int)
    frames[3, y - 15 : y + 16, x - 15 : x + 16] = 40  # an occluder over point 1 on frame 3
    seeds = truth + 0.3
    seeds[0] = truth[0]
    verified = np.ones(truth.shape[:2], bool)
    keyframes = [np.array([[0, *truth[0, n]]]) for n in range(truth.shape[1])]
    out, matched = anchored_polish(lambda i: frames[i], frames.shape[1:3], np.arange(6), seeds, verified, keyframes)
    assert not matched[3, 1] and np.allclose(out[3, 1], seeds[3, 1])
    assert matched[3, 0] and matched[4, 1]  # the others, and the same point once it is clear again


def test_working_size_frames_give_source_positions():
    """A service keeps only working-size frames: the match is made there and mapped back."""
    frames, truth = warped_clip(T=5, size=(240, 320))
    small = np.stack([cv2.resize(f, (160, 120), interpolation=cv2.INTER_AREA) for f in frames])
    seeds = truth + 0.8
    seeds[0] = truth[0]
    keyframes = [np.array([[0, *truth[0, n]]]) for n in range(truth.shape[1])]
    verified = np.ones(truth.shape[:2], bool)
    out, matched = anchored_polish(lambda i: small[i], (240, 320), np.arange(5), seeds, verified, keyframes)
    assert matched[1:].all()
    assert np.median(np.linalg.norm(out[1:] - truth[1:], axis=-1)) < 0.3  # at half the resolution
