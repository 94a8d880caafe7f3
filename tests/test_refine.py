"""Sub-pixel refinement (pipstrack.refine) on its own: rough trajectories in, polished out."""
import cv2
import numpy as np

from pipstrack.refine import refine_trajectories


def textured_clip(T=12, H=96, W=128, seed=0):
    """A smooth texture translated by a known sub-pixel path; returns grey frames and the path."""
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.random((H + 40, W + 40)).astype(np.float32), (0, 0), 2.0)
    tex = (255 * (tex - tex.min()) / (tex.max() - tex.min())).astype(np.uint8)
    shift = np.cumsum(rng.uniform(-2.5, 2.5, (T, 2)), axis=0)
    shift[0] = 0
    frames = [cv2.warpAffine(tex, np.float32([[1, 0, 20 - dx], [0, 1, 20 - dy]]), (W, H), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP)
              for dx, dy in shift]
    return frames, shift


def test_rough_estimates_are_polished_on_visible_frames_only():
    frames, shift = textured_clip()
    T = len(frames)
    start = np.array([[40.0, 30.0], [90.0, 60.0], [64.0, 48.0]])
    truth = start[None] + shift[:, None]
    rng = np.random.default_rng(1)
    rough = truth + rng.normal(0, 2.0, truth.shape)  # "PIPs": right area, a few px off
    rough[0] = truth[0]  # the query frame is exact
    visible = np.ones((T, 3), bool)
    visible[5:8, 2] = False  # point 2 occluded for three frames
    out, stats = refine_trajectories(lambda i: frames[i], np.arange(T), rough, visible, [[0]] * 3)
    err_rough = np.linalg.norm(rough - truth, axis=2)
    err = np.linalg.norm(out - truth, axis=2)
    assert np.median(err[visible]) < 0.1 < np.median(err_rough[visible])
    np.testing.assert_array_equal(out[0], truth[0].astype(np.float32))  # anchors never move
    assert stats["refined"] >= visible[1:].sum() - 2
    # occluded frames were not matched; they take the neighbours' correction (here: near the truth)
    assert np.all(err[5:8, 2] < err_rough[5:8, 2] + 1.0)


def test_a_wrong_feature_far_from_the_seed_is_not_taken():
    frames, shift = textured_clip(seed=3)
    T = len(frames)
    truth = np.array([[50.0, 40.0]])[None] + shift[:, None]
    far = truth.copy()
    far[1:] += 25.0  # PIPs lost it: 35 px off, beyond the 12 px radius
    out, _ = refine_trajectories(lambda i: frames[i], np.arange(T), far, np.ones((T, 1), bool), [[0]])
    np.testing.assert_allclose(out[1:], far[1:], atol=1e-4)  # left as PIPs said, not pulled elsewhere
