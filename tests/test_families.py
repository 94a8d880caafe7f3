"""The harder clip families of `pipstrack eval --families`: their ground truth is exact (the pixel
under a visible point shows what it showed on its query frame; a 3 px error is plainly visible),
each family has the property it is there for, and the evaluation scores queries on any frame."""

import cv2
import numpy as np
import pytest

from pipstrack.datasets import families as F
from pipstrack.evaluation import baselines as B
from pipstrack.evaluation import harness as ev

SIZE = (128, 160)


@pytest.fixture(scope="module")
def photos():
    return [ev.load_photo(n) for n in ("astronaut", "coffee")]


def _colour(img, xy):
    return cv2.getRectSubPix(img, (1, 1), (float(xy[0]), float(xy[1])))[0, 0].astype(np.float64)


def truth_error(clip, offset=(0.0, 0.0)):
    """Median colour difference between a visible point's pixel and its query-frame pixel."""
    qf = clip["query_frames"]
    diffs = []
    for t, n in zip(*np.nonzero(clip["visible"])):
        ref = _colour(clip["rgbs"][qf[n]], clip["trajs"][qf[n], n])
        diffs.append(np.abs(_colour(clip["rgbs"][t], clip["trajs"][t, n] + offset) - ref).mean())
    return float(np.median(diffs)), len(diffs)


@pytest.mark.parametrize("family", ["deform", "layers", "long"])
def test_ground_truth_follows_the_content(family, photos):
    clip = F.family_clip(family, photos, 0, 12, SIZE, seed=5, points=24)
    T, N = clip["visible"].shape
    assert clip["rgbs"].shape == (T, *SIZE, 3) and clip["trajs"].shape == (T, N, 2) and N >= 12
    err, count = truth_error(clip)
    shifted, _ = truth_error(clip, (2.5, -1.5))
    assert count > 10 * N // 2
    assert err < 10 and shifted > 4 * err, (err, shifted)
    qf = clip["query_frames"]
    assert clip["visible"][qf, np.arange(N)].all()  # every query is on a frame where it is seen


def test_deformation_is_not_one_homography(photos):
    clip = F.deform_clip(photos[0], 12, SIZE, seed=5, points=32)
    worst = 0.0
    for t in range(1, 12):
        Hm, _ = cv2.findHomography(clip["trajs"][0], clip["trajs"][t], 0)
        fit = cv2.perspectiveTransform(clip["trajs"][0][None].astype(np.float64), Hm)[0]
        worst = max(worst, float(np.max(np.linalg.norm(fit - clip["trajs"][t], axis=1))))
    assert worst > 1.5  # non-rigid: a homography of the points is off by more than a pixel


def test_layers_move_independently_and_the_card_hides_the_background(photos):
    clip = F.layers_clip(photos[0], photos[1], 24, SIZE, seed=5, points=24)
    motion = clip["trajs"][-1] - clip["trajs"][0]
    card, rest = motion[: len(motion) // 3], motion[-len(motion) // 3 :]  # card points come first
    assert np.linalg.norm(np.median(card, 0) - np.median(rest, 0)) > 10
    hidden_inside = (~clip["visible"]) & (clip["trajs"][..., 0] > 2) & (clip["trajs"][..., 0] < SIZE[1] - 3)
    assert hidden_inside.any(axis=0).sum() >= 2  # background points behind the card for a while


def test_long_clip_queries_middle_frames_and_has_several_occlusions(photos):
    clip = F.long_clip(photos[0], 240, SIZE, seed=5, points=24)
    assert clip["rgbs"].shape[0] == 240
    assert sorted(set(clip["query_frames"].tolist())) == [0, 80, 160]
    occluded_frames = np.flatnonzero((~clip["visible"] & (np.abs(clip["trajs"][..., 0] - 80) < 70)).any(axis=1))
    spans = np.split(occluded_frames, np.flatnonzero(np.diff(occluded_frames) > 5) + 1)
    assert len(spans) >= 3  # three occluders at different times


def test_hard_clip_truth_is_the_middle_of_the_exposure(photos):
    sharp = F.hard_clip(photos[0], 10, SIZE, seed=5, points=24, shutter=0.0, subframes=1, degrade=False)
    blurred = F.hard_clip(photos[0], 10, SIZE, seed=5, points=24, degrade=False)
    np.testing.assert_array_equal(sharp["trajs"], blurred["trajs"])  # the shutter does not move the truth
    err, _ = truth_error(sharp)
    assert err < 6 and truth_error(sharp, (2.5, -1.5))[0] > 3 * err + 10
    speed = np.linalg.norm(np.diff(sharp["trajs"], axis=0), axis=-1)
    assert np.percentile(speed, 90) > 12  # fast: the footage classical trackers lose
    # The blurred frame is the mean over the open shutter: the sharp frame lies inside the blur.
    assert np.abs(blurred["rgbs"].astype(int) - sharp["rgbs"].astype(int)).mean() > 3
    noisy = F.hard_clip(photos[0], 10, SIZE, seed=5, points=24)
    assert np.abs(noisy["rgbs"].astype(int) - blurred["rgbs"].astype(int)).mean() > 2


def test_baselines_take_queries_on_middle_frames(photos):
    """The forward-only baselines are run forward and backward from each query frame; at the query
    frame they return the query itself, and on the frames before it they track backward."""
    clip = F.long_clip(photos[0], 240, SIZE, seed=5, points=24)
    c = ev.EvalClip("long", "long", clip["rgbs"], clip["trajs"], clip["visible"], clip["query_frames"])
    xy, vis = ev.any_query_frame(B.lucas_kanade)(c.rgbs, c.queries)
    n = np.arange(len(c.query_frame))
    np.testing.assert_allclose(xy[c.query_frame, n], c.trajs[c.query_frame, n], atol=1e-4)
    before = (np.arange(240)[:, None] < c.query_frame[None, :]) & c.visible & vis
    assert before.sum() > 100
    err = np.linalg.norm(xy - c.trajs, axis=-1)
    assert np.median(err[before]) < 1.0  # tracked back correctly, not left at the query
    scores = ev.score(c, xy, vis)
    assert 0 < scores["delta_avg"] <= 1


def test_eval_command_with_families_and_a_bad_name():
    from test_eval import run_eval_cli

    bad = run_eval_cli("--synthetic", "0", "--photo-clips", "0", "--families", "deform,wobble")
    assert bad.returncode == 2 and "wobble" in bad.stderr and "Traceback" not in bad.stderr
    out = run_eval_cli(
        "--synthetic", "0", "--photo-clips", "0", "--families", "deform,hard", "--family-clips", "1",
        "--frames", "8", "--size", "96x128", "--points", "8", "--baselines", "lk", "--device", "cpu",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "deform:" in out.stdout and "hard:" in out.stdout and "deform (1) δavg %" in out.stdout
