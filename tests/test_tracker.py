"""The long-clip tracker: conventions, anchors, directions, equivalence with the authors'
per-point chaining, progress, cancellation, input errors, and what the shipped model does end to end."""

import threading

import cv2
import numpy as np
import pytest
import torch

from pipstrack import Tracker, TrackingCancelled
from pipstrack.conventions import resize_to_working, working_size
from pipstrack.engine.chaining import next_window_offset, track_point_reference
from pipstrack.io.frames import ArrayFrames


def test_window_rule_follows_the_authors():
    assert next_window_offset(np.array([1, 1, 1, 1, 1, 1, 1, 0.95])) == 7
    assert next_window_offset(np.array([1, 1, 1, 0.95, 0.5, 0.5, 0.5, 0.5])) == 3
    # nothing above 0.9: the threshold drops by 0.02 until the best late frame qualifies
    assert next_window_offset(np.array([1, 0.1, 0.1, 0.85, 0.1, 0.1, 0.86, 0.1])) == 6
    assert next_window_offset(np.zeros(8)) == 7


def small_clip(sample_clip, frames=20, scale=0.5):
    rgbs, truth = sample_clip
    h, w = int(rgbs.shape[1] * scale), int(rgbs.shape[2] * scale)
    clip = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in rgbs[:frames]])
    trajs = (truth["trajs"][:frames] + 0.5) * scale - 0.5
    return clip, trajs, truth["visible"][:frames]


def float64_copy(model):
    copy = type(model)(config=model.config)
    copy.load_state_dict(model.state_dict())
    return copy.double().eval()


def test_engine_follows_the_per_point_procedure_exactly(default_model, sample_clip):
    """Same weights, same clip: the engine's scheduling, shared frame encodings, carried
    features and segment assembly give each point exactly the authors' per-point
    chaining, for points starting on different frames, forward and backward."""
    model = float64_copy(default_model)
    clip, trajs, _ = small_clip(sample_clip, frames=20)
    starts = [0, 0, 6, 19]
    queries = np.array([[f, *trajs[f, i]] for i, f in enumerate(starts)])
    result = Tracker(
        model, device="cpu", working_long_side=None, max_points_per_call=1, refine=False, precision="fp32"
    ).track(clip, queries)
    assert result.stats["frames_encoded"] == len(clip)
    for i, f in enumerate(starts):
        if f < len(clip) - 1:
            fwd, fvis = track_point_reference(model, clip[f:], queries[i, 1:])
            np.testing.assert_allclose(result.xy[f:, i], fwd, atol=1e-4)
            np.testing.assert_allclose(result.confidence[f + 1 :, i], fvis[1:], atol=1e-6)
        if f > 0:
            bwd, _ = track_point_reference(model, clip[: f + 1][::-1].copy(), queries[i, 1:])
            np.testing.assert_allclose(result.xy[: f + 1, i][::-1], bwd, atol=1e-4)


def test_points_batched_together_are_computed_independently(default_model, sample_clip):
    """Running many points in one network call gives each the numbers it gets alone, up
    to rounding: 1e-9 px after one refinement step in float64. (Later steps amplify
    rounding by the network's own sensitivity to its start position; see docs/tracking.md.)"""
    model = float64_copy(default_model)
    clip, trajs, _ = small_clip(sample_clip, frames=8)
    with torch.no_grad():
        frames = torch.from_numpy(clip).double().permute(0, 3, 1, 2)
        fmaps = torch.cat([model.encode(f[None]) for f in frames])[None]
        xy = torch.from_numpy(trajs[0][None]).double()
        together, vis_together, _ = model.refine(fmaps, xy, iters=1)
        for n in range(xy.shape[1]):
            alone, vis_alone, _ = model.refine(fmaps, xy[:, n : n + 1], iters=1)
            np.testing.assert_allclose(together[-1][0, :, n], alone[-1][0, :, 0], atol=1e-9)
            np.testing.assert_allclose(vis_together[0, :, n], vis_alone[0, :, 0], atol=1e-9)


def test_a_pyramid_pooled_frame_by_frame_gives_the_same_numbers(default_model, sample_clip):
    """The tracker pools each frame's correlation pyramid once and reuses it in every window
    that frame is in; the network must then compute exactly what it computes when it pools the
    window's maps itself."""
    clip, trajs, _ = small_clip(sample_clip, frames=8)
    with torch.no_grad():
        frames = torch.from_numpy(clip).float().permute(0, 3, 1, 2)
        per_frame = [[level[0] for level in default_model.pyramid(default_model.encode(f[None]))] for f in frames]
        pyramid = [torch.stack(level) for level in zip(*per_frame)]
        xy = torch.from_numpy(trajs[0][None]).float()
        own, vis_own, _ = default_model.refine(pyramid[0][None], xy, iters=2)
        given, vis_given, _ = default_model.refine(pyramid[0][None], xy, iters=2, pyramid=pyramid)
    assert len(pyramid) == default_model.config.corr_levels
    assert torch.equal(own[-1], given[-1]) and torch.equal(vis_own, vis_given)


def test_batched_tracking_matches_per_point_tracking_closely(default_model, sample_clip):
    """The default, batched engine against the per-point procedure in float32: the same
    tracks within the network's rounding sensitivity."""
    clip, trajs, _ = small_clip(sample_clip, frames=16)
    queries = np.array([[0, *trajs[0, i]] for i in range(6)])
    batched = Tracker(default_model, device="cpu", working_long_side=None, refine=False, precision="fp32").track(
        clip, queries
    )
    for i in range(len(queries)):
        ref, _ = track_point_reference(default_model, clip, queries[i, 1:])
        assert np.median(np.abs(batched.xy[:, i] - ref)) < 0.5


class CountingFrames(ArrayFrames):
    def __init__(self, frames):
        super().__init__(frames)
        self.reads = []

    def read(self, index):
        self.reads.append(index)
        return super().read(index)


def test_each_frame_is_read_and_encoded_once(default_model, sample_clip):
    clip, trajs, _ = small_clip(sample_clip, frames=24)
    src = CountingFrames(clip)
    queries = np.array([[0, *trajs[0, i]] for i in range(6)] + [[23, *trajs[23, 0]], [12, *trajs[12, 1]]])
    result = Tracker(default_model, device="cpu", lead=False).track(src, queries)
    assert sorted(src.reads) == list(range(24))
    assert result.stats["frames_encoded"] == 24
    # With the classical lead (the default) frames are still read once; those no network window
    # needs (where every point was verified by the KLT steps) are not encoded at all.
    src = CountingFrames(clip)
    result = Tracker(default_model, device="cpu").track(src, queries)
    assert sorted(src.reads) == list(range(24))
    assert 0 < result.stats["frames_encoded"] <= 24
    assert result.xy.shape == (24, 8, 2) and result.visible.shape == (24, 8) and result.confidence.shape == (24, 8)
    assert result.xy.dtype == np.float32 and result.visible.dtype == bool
    # Smaller than the source, the network sees resized frames; the last polish matches each
    # verified frame at the source resolution, reading it once more (a few kept at a time).
    src = CountingFrames(clip)
    result = Tracker(default_model, device="cpu", working_long_side=160).track(src, queries)  # the clip is 240x135
    reads = np.bincount(src.reads, minlength=24)
    keyframes = [0, 12, 23]  # their patterns are cut first: read once more
    assert all(reads[f] == (3 if f in keyframes[1:] else 2) for f in range(24)), reads
    assert result.stats["anchored"] > 0


def test_a_feature_cache_smaller_than_the_shot_gives_the_same_tracks(default_model, sample_clip):
    """A long shot's features do not all fit the cache budget: frames the runs have passed go
    first, so a shot tracked forward is still encoded once per frame, and where a backward run
    needs an evicted frame again it is encoded again, with the same result."""
    clip, trajs, _ = small_clip(sample_clip, frames=24)
    forward = np.array([[0, *trajs[0, i]] for i in range(4)])
    full = Tracker(default_model, device="cpu", refine=False)
    small = Tracker(default_model, device="cpu", refine=False)
    tracker_work = full.track(clip, forward)
    with torch.no_grad():
        work = working_size(*clip.shape[1:3], full.working_long_side)
        img = torch.from_numpy(resize_to_working(clip[0], work)).float().permute(2, 0, 1)[None]
        frame_bytes = default_model.encode(img)[0].numel() * next(default_model.parameters()).element_size()
    small.cache_bytes = 12 * frame_bytes  # room for a window and a half of 8 frames
    got = small.track(clip, forward)
    assert got.stats["frames_encoded"] == 24 == tracker_work.stats["frames_encoded"]
    np.testing.assert_array_equal(got.xy, tracker_work.xy)
    both = np.concatenate([forward, [[16, *trajs[16, 1]]]])
    expected, got = full.track(clip, both), small.track(clip, both)
    assert expected.stats["frames_encoded"] == 24 < got.stats["frames_encoded"]
    np.testing.assert_array_equal(got.xy, expected.xy)
    np.testing.assert_array_equal(got.confidence, expected.confidence)


def test_with_refinement_seen_means_verified(default_model, sample_clip):
    """A frame the polish could not verify is an estimate: never reported visible, its confidence
    at most 0.5 (a lower threshold admits the likeliest estimates); verified frames score >= 0.7."""
    clip, trajs, vis = small_clip(sample_clip, frames=24)
    q = np.array([[0, *trajs[0, i]] for i in range(trajs.shape[1])])
    r = Tracker(default_model, device="cpu").track(clip, q)
    assert np.array_equal(r.visible, r.verified)
    assert r.verified.any() and (~r.verified).any()  # the pole hides some points: both kinds occur
    assert (r.confidence[~r.verified] <= 0.5).all() and (r.confidence[r.verified] >= 0.7).all()
    raw = Tracker(default_model, device="cpu", refine=False).track(clip, q)
    assert raw.verified is None and np.array_equal(raw.visible, raw.confidence > 0.5)


def test_anchors_are_kept_and_gaps_filled_from_both_sides(default_model, sample_clip):
    clip, trajs, _ = small_clip(sample_clip, frames=24)
    anchors = np.array([[2, *trajs[2, 1]], [11, *trajs[11, 1]], [20, *trajs[20, 1]]])
    tracker = Tracker(default_model, device="cpu")
    both = tracker.track(clip, [anchors])
    for f, x, y in anchors:
        np.testing.assert_array_equal(both.xy[int(f), 0], np.float32([x, y]))
        assert both.confidence[int(f), 0] == 1.0
    assert both.tracked.all()
    fwd = tracker.track(clip, [anchors], direction="forward")
    assert not fwd.tracked[:2, 0].any() and fwd.tracked[2:, 0].all()
    bwd = tracker.track(clip, [anchors], direction="backward")
    assert bwd.tracked[:21, 0].all() and not bwd.tracked[21:, 0].any()
    # between anchors the result does not depend on the direction asked for
    np.testing.assert_allclose(fwd.xy[2:21], both.xy[2:21])


def test_frame_range_limits_the_work(default_model, sample_clip):
    clip, trajs, _ = small_clip(sample_clip, frames=24)
    r = Tracker(default_model, device="cpu", lead=False).track(clip, [[10, *trajs[10, 0]]], frame_range=(5, 15))
    assert list(r.frame_indices) == list(range(5, 16))
    assert r.xy.shape == (11, 1, 2) and r.tracked.all()
    assert r.stats["frames_encoded"] == 11


def test_deterministic(default_model, sample_clip):
    clip, trajs, _ = small_clip(sample_clip, frames=16)
    q = np.array([[0, *trajs[0, i]] for i in range(5)])
    t = Tracker(default_model, device="cpu")
    a, b = t.track(clip, q), t.track(clip, q)
    np.testing.assert_array_equal(a.xy, b.xy)
    np.testing.assert_array_equal(a.confidence, b.confidence)


def test_progress_and_cancel(default_model, sample_clip):
    clip, trajs, _ = small_clip(sample_clip, frames=24)
    q = np.array([[0, *trajs[0, 0]], [23, *trajs[23, 1]]])
    seen = []
    Tracker(default_model, device="cpu").track(clip, q, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] and all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    assert len(seen) > 3

    stop = threading.Event()

    def cancel_after_first(done, total):
        stop.set()

    with pytest.raises(TrackingCancelled):
        Tracker(default_model, device="cpu").track(clip, q, progress=cancel_after_first, cancel=stop)

    # Refinement comes after the network and has its share of the bar: it reports, and it stops.
    network = []
    Tracker(default_model, device="cpu", refine=False).track(clip, q, progress=lambda d, t: network.append(t))
    assert network[-1] < seen[-1][1] < 1.2 * network[-1]
    stop = threading.Event()

    def cancel_while_refining(done, total):
        if done >= network[-1]:  # the network's part is done
            stop.set()

    with pytest.raises(TrackingCancelled):
        Tracker(default_model, device="cpu").track(clip, q, progress=cancel_while_refining, cancel=stop)


@pytest.mark.parametrize(
    "queries,frame_range,message",
    [
        ([[0, 500.0, 10.0]], None, "outside the 240x135 image"),
        ([[40, 10.0, 10.0]], None, "frame 40 is outside"),
        ([[0, 10.0, 10.0]], (5, 10), "frame 0 is outside"),
        ([[0, float("nan"), 10.0]], None, "NaN"),
        ([[0, 1.0]], None, "shape"),
        ([np.array([[0, 1.0, 1.0], [0, 2.0, 2.0]])], None, "two anchors on the same frame"),
        ([[0, 10.0, 10.0]], (10, 5), "frame range"),
    ],
)
def test_bad_queries_get_specific_errors(default_model, sample_clip, queries, frame_range, message):
    clip, _, _ = small_clip(sample_clip, frames=20)
    with pytest.raises(ValueError, match=message):
        Tracker(default_model, device="cpu").track(clip, queries, frame_range=frame_range)


def test_unknown_device_is_refused(default_model):
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        Tracker(default_model, device="tpu")


# -- what the shipped model does end to end (network, refinement, co-motion) -----------------------
def _errors_around_occlusion(trajs, visible, xy, size):
    """Errors (px) on visible frames after a point's first occlusion, and on its occluded frames
    inside the image."""
    H, W = size
    err = np.linalg.norm(xy - trajs, axis=-1)
    after = visible & (np.cumsum(~visible, axis=0) > 0)
    inside = (trajs[..., 0] >= 0) & (trajs[..., 0] < W) & (trajs[..., 1] >= 0) & (trajs[..., 1] < H)
    return err[after], err[~visible & inside]


def test_points_are_found_again_after_an_occluder_crosses_them(default_model):
    """A photograph under a hand-held camera move with a bar sweeping across it (the eval's photo
    clips): the network alone loses points the bar covered, the default tracker brings them back."""
    from pipstrack.datasets.sample import homography_clip
    from pipstrack.evaluation.harness import load_photo

    clip = homography_clip(load_photo("coffee"), 24, (256, 320), seed=1234, occluder=True, points=48)
    queries = np.c_[np.zeros(clip["trajs"].shape[1]), clip["trajs"][0]]
    full = Tracker(default_model, device="cpu").track(clip["rgbs"], queries, direction="forward")
    raw = Tracker(default_model, device="cpu", refine=False).track(clip["rgbs"], queries, direction="forward")
    after, hidden = _errors_around_occlusion(clip["trajs"], clip["visible"], full.xy, (256, 320))
    raw_after, raw_hidden = _errors_around_occlusion(clip["trajs"], clip["visible"], raw.xy, (256, 320))
    print(
        f"\nafter the bar: {np.median(after):.2f} px (network alone {np.median(raw_after):.2f}); "
        f"behind it: {np.median(hidden):.2f} px ({np.median(raw_hidden):.2f})"
    )
    assert len(after) > 50 and len(hidden) > 20  # the bar really covered points
    assert np.median(after) < 1.0 < 5.0 < np.median(raw_after)
    assert np.median(hidden) < 3.0 < np.median(raw_hidden)
    # Found again means seen again: "visible" is "verified" (91 % of the frames in view), and
    # frames reported seen are where the point is. Known exception, one of the 29 points: today
    # point 9 is reported seen 8.6 px off on frame 20 (before the classical lead it was a point on
    # the cup's rim, lost by frame 2 and so without company history, found 14 px along the rim on
    # three frames where the rim looks the same, NCC 0.99).
    assert full.visible[clip["visible"]].mean() > 0.85
    seen_off = full.visible & (np.linalg.norm(full.xy - clip["trajs"], axis=2) > 8)
    assert seen_off.any(axis=0).sum() <= 1 and seen_off.sum() <= 3


def test_default_model_on_a_held_out_synthetic_clip(default_model):
    """The issue's stated error: on the first held-out synthetic clip (independent sprites, blur,
    noise), median error on visible frames under 2 px and δavg above 0.6 (docs/model.md: 76 % over ten)."""
    from pipstrack.evaluation.harness import score, synthetic_clips

    clip = next(synthetic_clips(1, 24, (256, 320)))
    res = Tracker(default_model, device="cpu").track(clip.rgbs, clip.queries, direction="forward")
    m = score(clip, res.xy, res.visible)
    assert m["median_err_visible"] < 2.0 and m["delta_avg"] > 0.6


@pytest.mark.slow
def test_the_sample_clip_tracked_alone_and_together_is_never_silently_wrong(default_model, sample_clip):
    """The README's sample: a pole sweeps across the plate and drags the network along. Every
    point tracked in company and each one alone (no co-motion to help it): the points the pole
    dragged (feature06, feature09) are found again after it, and wherever a track is more than
    8 px off on a frame where its point is visible, the tracker says it did not verify that frame."""
    rgbs, truth = sample_clip
    q = np.c_[np.zeros(truth["trajs"].shape[1]), truth["trajs"][0]]
    vis = truth["visible"]
    tracker = Tracker(default_model, device="cpu")
    together = tracker.track(rgbs, q)
    alone = [tracker.track(rgbs, q[[n]]) for n in range(len(q))]
    for label, xy, verified in (
        ("together", together.xy, together.verified),
        ("alone", np.concatenate([r.xy for r in alone], 1), np.concatenate([r.verified for r in alone], 1)),
    ):
        err = np.linalg.norm(xy - truth["trajs"], axis=2)
        worst = np.where(vis, err, 0).max(axis=0)
        print(f"\n{label}: worst error on visible frames per track", np.round(worst, 2).tolist())
        assert not (vis & (err > 8) & verified).any(), f"{label}: a track is more than 8 px off yet verified"
        for n in (5, 8):  # feature06 and feature09: after the pole has passed them
            back = np.arange(len(vis))[vis[:, n]]
            back = back[back > np.nonzero(~vis[:, n])[0].max()]
            assert np.median(err[back, n]) < 1.0, (label, n)
        if label == "together":  # issue 12's bar: every demo track within 2 px on every visible frame
            assert (worst < 2.0).all(), np.round(worst, 2)
        else:
            assert (worst < 3.1).sum() >= 9, label  # alone, today one track (feature04) is worse


def test_device_and_precision_choices():
    import torch

    from pipstrack.engine.tracker import resolve_device, resolve_precision, torch_build

    assert resolve_device("cpu").type == "cpu"
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")
    for missing, present in (("cuda", torch.cuda.is_available()), ("mps", torch.backends.mps.is_available())):
        if not present:
            with pytest.raises(ValueError, match=f"'{missing}' requested"):
                resolve_device(missing)
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    from pipstrack.engine.tracker import cpu_has_bf16

    # auto on the CPU: the encoder in bfloat16 only where the CPU computes it natively
    assert resolve_precision("auto", torch.device("cpu")) == (torch.bfloat16 if cpu_has_bf16() else None)
    assert resolve_precision("fp32", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError):
        resolve_precision("int4", torch.device("cpu"))
    assert torch_build().startswith(f"torch {torch.__version__}")
    import argparse

    from pipstrack.cli.common import add_device_options
    from pipstrack.engine.tracker import PRECISIONS

    parser = argparse.ArgumentParser()
    add_device_options(parser)
    (choice,) = [a for a in parser._actions if a.dest == "precision"]
    assert tuple(choice.choices) == PRECISIONS  # the command line offers what the tracker takes


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_mixed_precision_stays_close_to_float32(default_model, sample_clip, device):
    """The autocast path (bfloat16; what `auto` picks on a CUDA GPU) against float32 on the
    same frames: within 1 px on 90 % of point-frames, the network alone (no polish to hide it).
    On the CPU this runs the very code a GPU runs; on CUDA where there is one."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    clip, trajs, _ = small_clip(sample_clip, frames=12)
    q = np.array([[0, *trajs[0, i]] for i in range(6)])
    kw = dict(device=device, refine=False)
    ref = Tracker(default_model, precision="fp32", **kw).track(clip, q)
    half = Tracker(default_model, precision="bf16", **kw).track(clip, q)
    d = np.linalg.norm(half.xy - ref.xy, axis=-1)
    print("\nbf16 encoder vs float32, px: median, 90 %, max", np.quantile(d, [0.5, 0.9, 1.0]))
    assert half.xy.dtype == np.float32 and np.quantile(d, 0.9) < 1.0, np.quantile(d, [0.5, 0.9, 1.0])


def test_window_advance_rule_written_procedure_or_authors_code(default_model):
    """The written rule may advance one frame where visibility is low; the authors' code never
    advances less than two (``min_advance=2``). Both take the latest confident frame otherwise."""
    low = np.array([1.0, 0.95, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert next_window_offset(low) == 1
    assert next_window_offset(low, min_advance=2) == 2
    good = np.array([1.0, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95])
    assert next_window_offset(good) == next_window_offset(good, min_advance=2) == 7
    with pytest.raises(ValueError, match="min_advance"):
        Tracker(default_model, device="cpu", min_advance=3)


def test_int8_precision_on_the_cpu_keeps_the_tracks(default_model, sample_clip):
    """``precision="int8"`` quantises the mixer (and runs the encoder in bfloat16 where the CPU
    has it): the refined tracks stay where float32 puts them, the caller's model is untouched,
    and asking for it on a GPU is a clear error."""
    from pipstrack.engine.tracker import resolve_precision

    frames, truth = sample_clip
    q = np.c_[np.zeros(10), truth["trajs"][0]]
    before = {k: v.clone() for k, v in default_model.state_dict().items()}
    exact = Tracker(default_model, device="cpu", precision="fp32").track(frames[:24], q)
    fast = Tracker(default_model, device="cpu", precision="int8").track(frames[:24], q)
    diff = np.linalg.norm(fast.xy - exact.xy, axis=-1)
    assert np.median(diff) < 0.05 and np.percentile(diff, 90) < 0.5
    err = np.linalg.norm(fast.xy - truth["trajs"][:24], axis=-1)[truth["visible"][:24]]
    assert np.median(err) < 0.2
    assert all(torch.equal(before[k], v) for k, v in default_model.state_dict().items())
    with pytest.raises(ValueError, match="CPU"):
        resolve_precision("int8", torch.device("cuda"))


def test_the_classical_lead_spares_the_network_where_klt_holds(default_model):
    """On a clean photograph under a camera move the strict KLT steps verify every point to the
    end: no frame is encoded, no window runs, and the tracks are as precise as with the network
    over every frame. With a bar crossing the plate the network takes over where the steps
    fail (the points behind the bar come back as well as without the lead)."""
    import cv2

    from pipstrack.datasets.sample import homography_clip
    from pipstrack.evaluation.harness import load_photo

    photo = load_photo("coffee")
    # a slow pan and drift over the photograph (1.5 and 0.6 px per frame), exact ground truth
    T, shift = 16, np.array([1.5, 0.6])
    frames = [
        cv2.warpAffine(photo, np.float32([[1, 0, -t * shift[0] - 40], [0, 1, -t * shift[1] - 40]]), (320, 256))
        for t in range(T)
    ]
    clean = np.stack(frames)
    corners = cv2.goodFeaturesToTrack(cv2.cvtColor(clean[0], cv2.COLOR_RGB2GRAY), 80, 0.02, 16)[:, 0]
    corners = corners[(corners > 40).all(1) & (corners[:, 0] < 260) & (corners[:, 1] < 200)][:16]
    truth = corners[None] - np.arange(T)[:, None, None] * shift
    q = np.c_[np.zeros(len(corners)), corners]
    led = Tracker(default_model, device="cpu").track(clean, q, direction="forward")
    full = Tracker(default_model, device="cpu", lead=False).track(clean, q, direction="forward")
    assert len(q) >= 8
    assert led.stats["frames_encoded"] == 0 and led.stats["windows"] == 0 and led.stats["lead_whole"] == len(q)
    assert full.stats["frames_encoded"] == T and "lead_frames" not in full.stats
    err_led = np.linalg.norm(led.xy - truth, axis=2)
    err_full = np.linalg.norm(full.xy - truth, axis=2)
    print(
        f"\nclean pan: worst {err_led.max():.3f} px with the lead, {err_full.max():.3f} px without; "
        f"median {np.median(err_led):.3f} / {np.median(err_full):.3f} px"
    )
    assert err_led.max() < 1.0 and err_led.max() <= err_full.max() + 0.05
    assert np.median(err_led) <= np.median(err_full) + 0.01
    assert led.verified.all()

    barred = homography_clip(photo, 24, (256, 320), seed=1234, occluder=True, points=24)
    q = np.c_[np.zeros(barred["trajs"].shape[1]), barred["trajs"][0]]
    led = Tracker(default_model, device="cpu").track(barred["rgbs"], q, direction="forward")
    full = Tracker(default_model, device="cpu", lead=False).track(barred["rgbs"], q, direction="forward")
    assert 0 < led.stats["frames_encoded"] < 24 or led.stats["windows"] < full.stats["windows"]
    for r in (led, full):
        r.after, r.hidden = _errors_around_occlusion(barred["trajs"], barred["visible"], r.xy, (256, 320))
    print(f"\nafter the bar: lead {np.median(led.after):.2f} px, network everywhere {np.median(full.after):.2f} px")
    assert np.median(led.after) < 1.0 and np.median(led.hidden) < 3.0


def test_points_the_lead_loses_at_the_frame_edge_are_carried_by_company_without_the_network(default_model):
    """A clean pan that goes left and comes back: the points near the left edge leave the frame
    for a while and the strict steps lose them there, while the others stay verified. Their
    company carries them (no frame is encoded, no window runs), they are not reported seen while
    out of the frame, and once back they are verified on their own patch again, as precise as
    with the network over their frames."""
    import cv2

    from pipstrack.evaluation.harness import load_photo

    photo = load_photo("astronaut")
    T = 24
    pan = np.minimum(np.arange(T), T - 1 - np.arange(T)) * 4.0  # 0 -> 44 -> 0 px: out and back
    frames = np.stack(
        [
            cv2.warpAffine(photo, np.float32([[1, 0, -pan[t] - 100], [0, 1, -40 - 0.5 * t]]), (320, 256))
            for t in range(T)
        ]
    )
    motion = np.stack([-pan, -0.5 * np.arange(T)], axis=1)  # how the scene moves in the frame
    corners = cv2.goodFeaturesToTrack(cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY), 120, 0.05, 14)[:, 0]
    inside = (corners[:, 1] > 20) & (corners[:, 1] < 200) & (corners[:, 0] < 300)
    edge = corners[inside & (corners[:, 0] > 20) & (corners[:, 0] < 40)][:4]
    rest = corners[inside & (corners[:, 0] > 70)][:16]
    assert len(edge) >= 2 and len(rest) >= 12
    pts = np.concatenate([edge, rest])
    truth = pts[None] + motion[:, None]
    in_frame = (truth[..., 0] >= 0) & (truth[..., 0] <= 319)
    assert not in_frame[:, : len(edge)].all(axis=0).any()  # every edge point leaves the frame
    q = np.c_[np.zeros(len(pts)), pts]
    led = Tracker(default_model, device="cpu").track(frames, q, direction="forward")
    net = Tracker(default_model, device="cpu", company_lead=False).track(frames, q, direction="forward")
    assert led.stats["company_carried"] >= len(edge)
    assert led.stats["frames_encoded"] == 0 and led.stats["windows"] == 0
    assert net.stats["frames_encoded"] > 0
    err = np.linalg.norm(led.xy - truth, axis=2)
    err_net = np.linalg.norm(net.xy - truth, axis=2)
    print(
        f"\nedge points: worst in frame {err[in_frame].max():.3f} px carried by company, "
        f"{err_net[in_frame].max():.3f} px with the network"
    )
    assert not (led.visible & ~in_frame).any()  # never reported seen outside the frame
    assert led.verified[T - 3 :, : len(edge)].all()  # back on their own patch once well inside again
    assert err[in_frame].max() < 1.0 and err[in_frame].max() <= err_net[in_frame].max() + 0.1
