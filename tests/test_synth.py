"""Checks that synthetic clips' ground truth agrees with their pixels.

The tracker is only as good as these labels, so the tests re-derive them
independently (re-warping each layer's mask and sampling textures) instead of
trusting the generator's own bookkeeping.
"""

import dataclasses
import os
import sys

import cv2
import numpy as np
import pytest

try:
    from pipstrack.datasets import synth
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "backend"))
    from pipstrack.datasets import synth

CFG = synth.SynthConfig()
CLEAN = CFG.clean()


def bilinear(img, x, y):
    """Bilinear sample of HxW or HxWxC at float coords (clamped)."""
    img = np.asarray(img, np.float64)
    h, w = img.shape[:2]
    x = np.clip(np.asarray(x, np.float64), 0, w - 1.000001)
    y = np.clip(np.asarray(y, np.float64), 0, h - 1.000001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    if img.ndim == 3:
        fx, fy = fx[:, None], fy[:, None]
    return (
        img[y0, x0] * (1 - fx) * (1 - fy)
        + img[y0, x0 + 1] * fx * (1 - fy)
        + img[y0 + 1, x0] * (1 - fx) * fy
        + img[y0 + 1, x0 + 1] * fx * fy
    )


def in_frame(trajs, cfg):
    x, y = trajs[..., 0], trajs[..., 1]
    return (x >= 0) & (x <= cfg.width - 1) & (y >= 0) & (y <= cfg.height - 1)


@pytest.fixture(scope="module")
def debug_clips():
    return [synth.make_clip(synth.clip_rng(11, k), CLEAN, debug=True) for k in range(8)]


@pytest.fixture(scope="module")
def batch():
    return [synth.make_clip(synth.clip_rng(3, k), CFG) for k in range(40)]


def test_shapes_and_dtypes():
    c = synth.make_clip(0)
    T, H, W, N = CFG.frames, CFG.height, CFG.width, CFG.points
    assert c["rgbs"].shape == (T, H, W, 3) and c["rgbs"].dtype == np.uint8
    assert c["trajs"].shape == (T, N, 2) and c["trajs"].dtype == np.float32
    assert c["visible"].shape == (T, N) and c["visible"].dtype == bool
    assert c["query_frame"] == 0
    assert np.isfinite(c["trajs"]).all()
    assert c["visible"][0].all(), "queries are sampled on visible pixels"


def test_custom_size():
    cfg = synth.SynthConfig(frames=5, height=64, width=96, points=16, min_sprites=1, max_sprites=2)
    c = synth.make_clip(1, cfg)
    assert c["rgbs"].shape == (5, 64, 96, 3)
    assert c["trajs"].shape == (5, 16, 2)


def test_deterministic():
    a, b, d = synth.make_clip(5), synth.make_clip(5), synth.make_clip(6)
    for k in ("rgbs", "trajs", "visible"):
        assert a[k].tobytes() == b[k].tobytes()
    assert not np.array_equal(a["rgbs"], d["rgbs"])
    # Stream clip k depends only on (seed, k).
    s = synth.clip_stream(9, CFG)
    first = [next(s) for _ in range(3)]
    again = synth.make_clip(synth.clip_rng(9, 2), CFG)
    assert first[2]["rgbs"].tobytes() == again["rgbs"].tobytes()
    assert not np.array_equal(first[0]["trajs"], first[1]["trajs"])


def test_augmentations_do_not_change_geometry():
    rng_seed = 21
    a = synth.make_clip(rng_seed, CFG)
    b = synth.make_clip(rng_seed, CLEAN)
    assert np.array_equal(a["trajs"], b["trajs"])
    assert np.array_equal(a["visible"], b["visible"])


def test_texture_colour_matches_rendered_colour(debug_clips):
    """Visible points show their own texture's colour at trajs[t]."""
    errs, shifted = [], []
    for c in debug_clips:
        for t in range(CLEAN.frames):
            for n in np.nonzero(c["visible"][t])[0]:
                tex = c["layers"][c["point_layer"][n]]["tex"]
                want = bilinear(tex, c["tex_xy"][n : n + 1, 0], c["tex_xy"][n : n + 1, 1])[0]
                x, y = c["trajs"][t, n]
                got = bilinear(c["rgbs"][t], [x], [y])[0]
                off = bilinear(c["rgbs"][t], [x + 2.5], [y - 1.5])[0]
                errs.append(np.abs(want - got).mean())
                shifted.append(np.abs(want - off).mean())
    errs, shifted = np.array(errs), np.array(shifted)
    assert len(errs) > 1000
    # Resampling a warped texture is not exact on sharp edges, hence percentiles.
    assert np.median(errs) < 1.5
    assert np.percentile(errs, 90) < 8
    # Negative control: a 3 px error in the labels is clearly detectable.
    assert np.median(shifted) > 4 * np.median(errs) + 2


def test_occlusion_matches_upper_masks(debug_clips):
    """Invisible in-frame points are under an upper layer's mask; visible ones aren't."""
    eps = 0.03
    n_occ = 0
    for c in debug_clips:
        T = CLEAN.frames
        lid = c["point_layer"]
        inside = in_frame(c["trajs"], CLEAN)
        for t in range(T):
            cover = np.zeros(CLEAN.points)
            for li, ly in enumerate(c["layers"]):
                sel = lid < li
                if li == 0 or not sel.any():
                    continue
                warped = cv2.warpPerspective(
                    ly["mask"],
                    ly["H"][t],
                    (CLEAN.width, CLEAN.height),
                    flags=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT,
                    borderValue=0,
                )
                x, y = c["trajs"][t, sel, 0], c["trajs"][t, sel, 1]
                cover[sel] = np.maximum(cover[sel], bilinear(warped, x, y) * inside[t, sel])
            vis = c["visible"][t]
            assert (cover[vis] < 0.5 + eps).all()
            occ = ~vis & inside[t]
            assert (cover[occ] >= 0.5 - eps).all()
            n_occ += occ.sum()
        # Every point lies on the opaque part of its own layer.
        for li in np.unique(lid):
            m = c["layers"][li]["mask"]
            sel = lid == li
            assert (bilinear(m, c["tex_xy"][sel, 0], c["tex_xy"][sel, 1]) >= 0.5).all()
    assert n_occ > 0


def test_trajectories_follow_layer_homographies(debug_clips):
    for c in debug_clips:
        for n in range(0, CLEAN.points, 7):
            Hs = c["layers"][c["point_layer"][n]]["H"]
            p = np.append(c["tex_xy"][n], 1.0)
            q = Hs @ p
            np.testing.assert_allclose(q[:, :2] / q[:, 2:], c["trajs"][:, n], atol=1e-3)


def test_out_of_frame_points_are_invisible(batch):
    total_out = 0
    for c in batch:
        out = ~in_frame(c["trajs"], CFG)
        assert not (c["visible"] & out).any()
        total_out += out.sum()
    assert total_out > 0


def test_occlusions_and_exits_are_common(batch):
    occ_clips = exit_clips = 0
    occ_frac = []
    for c in batch:
        inside = in_frame(c["trajs"], CFG)
        occ = inside & ~c["visible"]
        occ_clips += occ.any()
        exit_clips += (~inside).any()
        occ_frac.append(occ.mean())
    assert occ_clips >= 0.6 * len(batch)
    assert exit_clips >= 0.3 * len(batch)
    assert np.mean(occ_frac) > 0.02


def test_points_spread_over_sprites():
    shares = [np.mean(synth.make_clip(synth.clip_rng(4, k), CFG, debug=True)["point_layer"] > 0) for k in range(10)]
    assert 0.2 < np.mean(shares) < 0.8


def test_procedural_only_without_photos(monkeypatch):
    monkeypatch.setattr(synth, "_PHOTOS", {})
    monkeypatch.setattr(synth, "_PHOTOS_LOADED", True)
    c = synth.make_clip(2, synth.SynthConfig(photo_prob=1.0))
    assert c["rgbs"].shape[0] == CFG.frames


def test_write_load_round_trip(tmp_path):
    cfg = synth.SynthConfig(frames=4, height=48, width=64, points=8)
    path = tmp_path / "sub" / "test.npz"
    synth.write_test_set(path, count=3, seed=17, cfg=cfg)
    assert sorted(os.listdir(path.parent)) == ["test.npz"]  # no temp left over
    clips = synth.load_test_set(path)
    assert len(clips) == 3
    s = synth.clip_stream(17, cfg)
    for got in clips:
        want = next(s)
        for k in ("rgbs", "trajs", "visible"):
            assert got[k].dtype == want[k].dtype
            assert np.array_equal(got[k], want[k])
        assert got["query_frame"] == 0
    assert synth.load_test_config(path) == cfg


def test_slow_clips_move_slowly_and_leave_other_seeds_alone():
    import numpy as np

    from pipstrack.datasets import synth

    speed = lambda c: float(np.linalg.norm(np.diff(c["trajs"], axis=0), axis=-1).mean())  # noqa: E731
    normal = [synth.make_clip(np.random.default_rng([5, k]), synth.SynthConfig()) for k in range(6)]
    slow = [
        synth.make_clip(np.random.default_rng([5, k]), synth.SynthConfig(slow_prob=1.0, slow_speed=(0.01, 0.1)))
        for k in range(6)
    ]
    assert np.median([speed(c) for c in slow]) < 0.2 * np.median([speed(c) for c in normal])
    again = synth.make_clip(np.random.default_rng([5, 0]), synth.SynthConfig(slow_prob=0.0))
    np.testing.assert_array_equal(again["rgbs"], normal[0]["rgbs"])  # off: the old stream, clip for clip


def test_camera_shake_keeps_ground_truth_exact():
    """Shaken clips: every layer jolts together and a rendered point is still where its
    trajectory says (the pixel under a visible point matches its frame-0 colour)."""
    import numpy as np

    from pipstrack.datasets import synth

    cfg = synth.SynthConfig(
        shake_prob=1.0, shake_px=(2.0, 2.0), noise_prob=0, jpeg_prob=0, blur_prob=0, brightness=0, layer_gain=0
    )
    c = synth.make_clip(np.random.default_rng(4), cfg)
    acc = np.diff(c["trajs"], n=2, axis=0)  # jolts: large second differences
    assert np.median(np.abs(acc)) > 1.0
    t, n = np.nonzero(c["visible"] & c["visible"][:1])
    xy = np.round(c["trajs"][t, n]).astype(int)
    ok = (xy[:, 0] >= 0) & (xy[:, 0] < cfg.width) & (xy[:, 1] >= 0) & (xy[:, 1] < cfg.height)
    x0 = np.round(c["trajs"][0, n[ok]]).astype(int)
    diff = np.abs(
        c["rgbs"][t[ok], xy[ok, 1], xy[ok, 0]].astype(int) - c["rgbs"][0, x0[:, 1], x0[:, 0]].astype(int)
    ).mean(axis=1)
    assert np.median(diff) < 12  # same surface point (bilinear resampling and rounding aside)
    plain = synth.make_clip(np.random.default_rng(4), synth.SynthConfig())
    assert np.median(np.abs(np.diff(plain["trajs"], n=2, axis=0))) < np.median(np.abs(acc))


def test_hard_augmentations_keep_ground_truth_exact_and_old_streams():
    """Fast clips move faster, poles are thin sprites, flicker changes the frames' colour but not
    their geometry, the evaluation's photographs never appear, and with all of it off a seed
    gives the clip it always gave."""
    hard = synth.SynthConfig(fast_prob=1.0, pole_prob=1.0, flicker_prob=1.0, exclude_photos=synth.EVAL_PHOTOS)
    speed = lambda c: float(np.linalg.norm(np.diff(c["trajs"], axis=0), axis=-1).mean())  # noqa: E731
    normal = [synth.make_clip(np.random.default_rng([6, k]), CFG) for k in range(8)]
    fast = [synth.make_clip(np.random.default_rng([6, k]), hard) for k in range(8)]
    assert np.median([speed(c) for c in fast]) > 1.4 * np.median([speed(c) for c in normal])
    # Poles: every sprite mask is a bar, so its area is a small share of its bounding square.
    tex_err = []
    for seed in range(7, 13):
        c = synth.make_clip(np.random.default_rng(seed), hard.clean(), debug=True)
        for layer in c["layers"][1:]:
            assert layer["mask"].mean() < 0.16
        # The pixel under a visible point on a pole still shows its texture (flicker off: clean()).
        t, n = np.nonzero(c["visible"])
        keep = c["point_layer"][n] > 0
        for f, k in zip(t[keep], n[keep]):
            tex = c["layers"][c["point_layer"][k]]["tex"]
            want = bilinear(tex, c["tex_xy"][k : k + 1, 0], c["tex_xy"][k : k + 1, 1])[0]
            got = bilinear(c["rgbs"][f], [c["trajs"][f, k, 0]], [c["trajs"][f, k, 1]])[0]
            tex_err.append(np.abs(want - got).mean())
    assert len(tex_err) > 20 and np.median(tex_err) < 3
    # Flicker: same geometry, different colours from frame to frame.
    still = dataclasses.replace(CLEAN, flicker_prob=1.0, flicker=0.1)
    a = synth.make_clip(np.random.default_rng(8), CLEAN)
    b = synth.make_clip(np.random.default_rng(8), still)
    assert np.array_equal(a["trajs"], b["trajs"])
    gain = b["rgbs"].reshape(8, -1, 3).mean(1) / np.maximum(a["rgbs"].reshape(8, -1, 3).mean(1), 1)
    assert np.std(gain[:, 0] / gain[:, 1]) > 0.01  # white balance moves, not only exposure
    np.testing.assert_array_equal(a["rgbs"], synth.make_clip(np.random.default_rng(8), still.clean())["rgbs"])
    # Excluded photographs: with photo textures only, none of the evaluation's appears.
    used = []
    real = synth._tex_photo

    def spy(rng, h, w, photos):
        used.extend(photos)
        return real(rng, h, w, photos)

    synth._tex_photo = spy
    try:
        synth.make_clip(3, dataclasses.replace(hard, photo_prob=1.0))
    finally:
        synth._tex_photo = real
    assert used and not set(used) & set(synth.EVAL_PHOTOS)


def test_lingering_occluders_hide_points_for_most_of_the_clip_and_keep_old_streams():
    """A lingering occluder slides in early and stays: the rest of the clip is the one the seed
    gives without it, more points seen on the query frame are hidden on most later frames, ground
    truth stays exact where a point is visible, and with it off nothing changes."""
    lingering = dataclasses.replace(CFG, linger_prob=1.0)
    long_plain, long_lingering = [], []
    for k in range(16):
        a = synth.make_clip(np.random.default_rng([3, k]), CFG, debug=True)
        b = synth.make_clip(np.random.default_rng([3, k]), lingering, debug=True)
        assert len(b["layers"]) == len(a["layers"]) + 1
        for la, lb in zip(a["layers"], b["layers"]):
            np.testing.assert_array_equal(la["H"], lb["H"])
        long_plain.append(((~a["visible"][1:]).sum(0) >= 4).mean())
        long_lingering.append(((~b["visible"][1:]).sum(0) >= 4).mean())
    print(f"hidden on 4+ of 7 later frames: {np.mean(long_plain):.2f} -> {np.mean(long_lingering):.2f}")
    assert np.mean(long_lingering) > np.mean(long_plain) + 0.05
    np.testing.assert_array_equal(
        synth.make_clip(np.random.default_rng(11), CFG)["rgbs"],
        synth.make_clip(np.random.default_rng(11), dataclasses.replace(CFG, linger_prob=0.0))["rgbs"],
    )
    # Where a point is visible the frame shows its texture (photometric looks off: clean()).
    c = synth.make_clip(np.random.default_rng(12), lingering.clean(), debug=True)
    t, n = np.nonzero(c["visible"])
    errs = []
    for f, k in zip(t, n):
        tex = c["layers"][c["point_layer"][k]]
        want = bilinear(tex["tex"], c["tex_xy"][k : k + 1, 0], c["tex_xy"][k : k + 1, 1])[0]
        got = bilinear(c["rgbs"][f], [c["trajs"][f, k, 0]], [c["trajs"][f, k, 1]])[0]
        errs.append(np.abs(want - got).mean())
    assert len(errs) > 50 and np.median(errs) < 3
