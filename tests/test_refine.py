"""Sub-pixel refinement (pipstrack.refine) on its own: rough trajectories in, polished out."""

import cv2
import numpy as np

from pipstrack.engine.refine import refine_trajectories


def smooth_texture(rng, shape, sigma: float) -> np.ndarray:
    """Blurred noise of ``shape`` stretched to the full 8-bit range: texture LK can lock on to."""
    tex = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), sigma)
    return (255 * (tex - tex.min()) / (tex.max() - tex.min())).astype(np.uint8)


def textured_clip(T=12, H=96, W=128, seed=0):
    """A smooth texture translated by a known sub-pixel path; returns grey frames and the path."""
    rng = np.random.default_rng(seed)
    tex = smooth_texture(rng, (H + 40, W + 40), 2.0)
    shift = np.cumsum(rng.uniform(-2.5, 2.5, (T, 2)), axis=0)
    shift[0] = 0
    frames = [
        cv2.warpAffine(
            tex, np.float32([[1, 0, 20 - dx], [0, 1, 20 - dy]]), (W, H), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
        )
        for dx, dy in shift
    ]
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
    out, found, sim, stats = refine_trajectories(lambda i: frames[i], np.arange(T), rough, visible, [[0]] * 3)
    err_rough = np.linalg.norm(rough - truth, axis=2)
    err = np.linalg.norm(out - truth, axis=2)
    assert np.median(err[visible]) < 0.1 < np.median(err_rough[visible])
    np.testing.assert_array_equal(out[0], truth[0].astype(np.float32))  # anchors never move
    assert stats["refined"] >= visible[1:].sum() - 2
    assert found[visible].all() and np.all(sim[visible] > 0.7)  # the evidence the tracker raises confidence with
    # occluded frames were not matched; they take the neighbours' correction (here: near the truth)
    assert np.all(err[5:8, 2] < err_rough[5:8, 2] + 1.0)


def test_a_wrong_feature_far_from_the_seed_is_not_taken():
    """Without re-detection nothing pulls a point that PIPs lost to some other place."""
    frames, shift = textured_clip(seed=3)
    T = len(frames)
    truth = np.array([[50.0, 40.0]])[None] + shift[:, None]
    far = truth.copy()
    far[1:] += 25.0  # PIPs lost it: 35 px off, beyond the 12 px radius
    out, found, sim, _ = refine_trajectories(
        lambda i: frames[i], np.arange(T), far, np.ones((T, 1), bool), [[0]], redetect=False
    )
    np.testing.assert_allclose(out[1:], far[1:], atol=1e-4)  # left as PIPs said, not pulled elsewhere
    assert not found[1:].any() and found[0, 0] and sim[0, 0] == 1.0  # nothing claims to have found it there
    assert np.median(sim[1:, 0]) < 0.5  # and the patch there does not look like the point: reported unseen


def test_a_lone_point_the_network_lost_is_found_again_by_its_looks():
    """The same lost point, alone in its job (no co-motion): re-detection finds its patch again
    and every frame is back on the truth, verified."""
    frames, shift = textured_clip(seed=3)
    T = len(frames)
    truth = np.array([[50.0, 40.0]])[None] + shift[:, None]
    far = truth.copy()
    far[1:] += 25.0
    out, found, sim, stats = refine_trajectories(lambda i: frames[i], np.arange(T), far, np.ones((T, 1), bool), [[0]])
    err = np.linalg.norm(out - truth, axis=2)
    assert stats["redetected"] >= 1 and found.all()
    assert err.max() < 0.1, err.max()
    assert np.nanmin(sim) > 0.9


def test_a_repeating_texture_is_not_re_detected_on_the_wrong_period():
    """Stripes look alike every period: no unique match, so nothing is claimed found there."""
    T, H, W = 6, 96, 128
    xx = np.arange(W)[None, :].repeat(H, 0)
    stripes = (127 + 100 * np.sin(2 * np.pi * xx / 10.0)).astype(np.uint8)
    frames = [np.dstack([stripes] * 3)] * T
    xy = np.tile(np.array([[60.0, 48.0]]), (T, 1, 1))
    xy[1:] += 37.0  # PIPs far off, on another stripe
    out, found, _, stats = refine_trajectories(lambda i: frames[i], np.arange(T), xy, np.ones((T, 1), bool), [[0]])
    assert stats["redetected"] == 0 and not found[1:].any()


def test_a_texture_that_differs_in_hue_only_is_polished():
    """Grey conversion would flatten it to one value; refinement works on the colour frames."""
    frames, shift = textured_clip(seed=5)
    a = [f.astype(np.float32) - 128.0 for f in frames]
    # Equal luma everywhere: R up where G goes down by the luma weights' ratio.
    iso = [
        np.clip(np.dstack([128 + 0.9 * d, 128 - 0.9 * d * 0.299 / 0.587, np.full_like(d, 128)]), 0, 255).astype(
            np.uint8
        )
        for d in a
    ]
    assert max(float(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).std()) for f in iso) < 1.0
    T = len(iso)
    truth = np.array([[50.0, 40.0], [80.0, 50.0]])[None] + shift[:, None]
    rough = truth + np.random.default_rng(2).normal(0, 1.5, truth.shape)
    rough[0] = truth[0]
    out, _, _, _ = refine_trajectories(lambda i: iso[i], np.arange(T), rough, np.ones((T, 2), bool), [[0]] * 2)
    assert np.median(np.linalg.norm(out - truth, axis=2)[1:]) < 0.1


def plate_with_occluder(T=20, H=120, W=160, seed=0, grid=(5, 4)):
    """A textured plate under a slow zoom and pan, and a flat grey card crossing it left to
    right; frames, the true path of a grid of points on the plate, and their visibility."""
    rng = np.random.default_rng(seed)
    tex = smooth_texture(rng, (H, W, 3), 1.5)
    gx, gy = np.meshgrid(np.linspace(30, 130, grid[0]), np.linspace(30, 90, grid[1]))
    grid = np.c_[gx.ravel(), gy.ravel()]
    frames, truth, visible = [], [], []
    for t in range(T):
        s, dx, dy = 1 + 0.006 * t, 0.8 * t, 0.3 * t
        A = np.float32([[s, 0, (1 - s) * W / 2 + dx], [0, s, (1 - s) * H / 2 + dy]])
        img = cv2.warpAffine(tex, A, (W, H), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        x0 = -40 + 12 * t  # the card: 36 px wide, full height, moving 12 px per frame
        img[:, max(0, x0) : max(0, x0 + 36)] = 90
        p = grid @ A[:, :2].T + A[:, 2]
        frames.append(img)
        truth.append(p)
        visible.append(~((p[:, 0] >= x0 - 8) & (p[:, 0] < x0 + 36 + 8)))  # its patch touches the card
    return frames, np.array(truth), np.array(visible)


def test_a_point_dragged_by_an_occluder_is_brought_back_by_the_points_around_it():
    frames, truth, vis = plate_with_occluder()
    T, N = vis.shape
    n = 7  # hidden a few frames in, visible again afterwards
    assert (~vis[:, n]).any() and vis[-1, n] and vis[0, n]
    rng = np.random.default_rng(3)
    rough = truth + rng.normal(0, 1.0, truth.shape)
    rough[0] = truth[0]
    # What a small network does: once the card reaches the point it rides along with it, and
    # stays lost (here: carried 12 px per frame with the card, then left where the card left it).
    hid = np.nonzero(~vis[:, n])[0]
    for k, t in enumerate(range(hid[0], T)):
        rough[t, n] = truth[hid[0], n] + [12.0 * min(k, len(hid)), 0.0]
    net_visible = np.ones((T, N), bool)
    net_visible[hid, n] = False
    out, found, sim, stats = refine_trajectories(lambda i: frames[i], np.arange(T), rough, net_visible, [[0]] * N)
    err = np.linalg.norm(out - truth, axis=2)
    after = np.arange(hid[-1] + 2, T)
    assert np.max(err[after, n]) < 0.1  # found again where it really is, to a tenth of a pixel
    assert np.max(err[hid, n]) < 1.0  # and behind the card, carried by its neighbours
    assert np.median(np.linalg.norm(rough - truth, axis=2)[hid, n]) > 10
    assert stats["comotion"] > 0
    covered = [t for t in range(T) if -40 + 12 * t <= truth[t, n, 0] < -40 + 12 * t + 36]  # the card on its centre
    assert covered and np.all(sim[covered, n] < 0.5)  # the patch there is the card: reported unseen
    # Tracked alone (no neighbours, so no co-motion) re-detection finds it again after the card;
    # without re-detection nothing can.
    alone, found_alone, _, st = refine_trajectories(
        lambda i: frames[i], np.arange(T), rough[:, [n]], net_visible[:, [n]], [[0]]
    )
    assert st["redetected"] > 0 and found_alone[after, 0].all()
    assert np.max(np.linalg.norm(alone[after, 0] - truth[after, n], axis=1)) < 0.1
    stuck, _, _, _ = refine_trajectories(
        lambda i: frames[i], np.arange(T), rough[:, [n]], net_visible[:, [n]], [[0]], redetect=False
    )
    assert np.median(np.linalg.norm(stuck[after, 0] - truth[after, n], axis=1)) > 10


def test_a_card_sweeping_the_whole_plate_drags_every_point_and_all_are_brought_back():
    """No point is left that never went behind the card: the ones found again after it passed
    carry the others, and a point found again keeps going on its own."""
    frames, truth, vis = plate_with_occluder()
    T, N = vis.shape
    rough = truth + np.random.default_rng(4).normal(0, 1.0, truth.shape)
    rough[0] = truth[0]
    dragged = np.zeros((T, N), bool)
    for n in range(N):
        hid = np.nonzero(~vis[:, n])[0]
        assert len(hid) and hid[0] > 0 and hid[-1] < T - 2  # each point is covered once, mid-clip
        for k, t in enumerate(range(hid[0], T)):
            rough[t, n] = truth[hid[0], n] + [12.0 * min(k, len(hid)), 0.0]
        dragged[hid[-1] + 1 :, n] = True
    out, _, _, _ = refine_trajectories(lambda i: frames[i], np.arange(T), rough, vis, [[0]] * N)
    err = np.linalg.norm(out - truth, axis=2)
    H, W = frames[0].shape[:2]
    inside = (truth[..., 0] > 10) & (truth[..., 0] < W - 10) & (truth[..., 1] > 10) & (truth[..., 1] < H - 10)
    assert np.median(np.linalg.norm(rough - truth, axis=2)[dragged & inside]) > 20
    assert np.max(err[dragged & inside]) < 0.5  # every one found again (a patch half off the image cannot be)


def test_a_point_beside_an_occluders_edge_is_verified_with_the_narrow_window():
    """A bar slides up to a lone point and covers it: on the frames where its edge is 4-6 px from
    the point, the point is in view but its 15 px patch is half bar. The narrow window verifies
    those frames, precisely, from the network's rough guess; the frames the bar covers are not."""
    import pipstrack.engine.refine as R

    frames, shift = textured_clip(T=14, seed=5)
    T = len(frames)
    truth = np.array([[60.0, 48.0]])[None] + shift[:, None]
    edge = np.full(T, 200.0)  # the bar's left edge, x (off the frame: no bar)
    edge[6:9] = truth[6:9, 0, 0] + [6.0, 5.0, 4.0]  # right of the point, coming closer
    edge[9:] = truth[9:, 0, 0] - 10.0  # covering it
    rgb = []
    for t, f in enumerate(frames):
        f = f.copy()
        f[:, int(np.ceil(edge[t])) :] = 60
        rgb.append(np.dstack([f] * 3))
    visible = truth[..., 0] < edge[:, None] - 0.5
    rough = truth + np.random.default_rng(2).normal(0, 1.5, truth.shape)
    rough[0] = truth[0]

    def run():
        return refine_trajectories(lambda i: rgb[i], np.arange(T), rough, visible, [[0]])

    out, found, _, stats = run()
    err = np.linalg.norm(out - truth, axis=2)[:, 0]
    assert found[6:9, 0].all() and err[6:9].max() < 0.2, err[6:9]
    assert not found[9:, 0].any()  # behind the bar: not verified
    assert stats["edge"] >= 1
    R.EDGE_PASS = False  # negative control: without the narrow pass, the edge frames stay unverified
    try:
        without = run()[1]
    finally:
        R.EDGE_PASS = True
    assert not without[6:9, 0].all()


def test_a_repeating_texture_locked_a_period_off_is_not_reported_verified():
    """On a checker, a step seeded near the next square matches it perfectly: the polish must not
    call that position verified (the point would be silently wrong by a whole period)."""
    import pipstrack.engine.refine as R

    T, H, W, period = 10, 96, 128, 10
    yy, xx = np.mgrid[0 : H + 60, 0 : W + 60]
    checker = (((xx // (period // 2)) + (yy // (period // 2))) % 2 * 160 + 40).astype(np.uint8)
    checker = cv2.GaussianBlur(checker, (0, 0), 0.8)
    shift = np.c_[np.arange(T) * 1.5, np.arange(T) * 0.5]
    frames = [
        np.dstack([cv2.warpAffine(checker, np.float32([[1, 0, dx - 30], [0, 1, dy - 30]]), (W, H))] * 3)
        for dx, dy in shift
    ]
    truth = np.array([[64.0, 48.0]])[None] + shift[:, None]
    rough = truth + [period, 0.0]  # the network a period off from frame 1 on
    rough[0] = truth[0]

    def run():
        return refine_trajectories(lambda i: frames[i], np.arange(T), rough, np.ones((T, 1), bool), [[0]])

    R.AMBIGUOUS_CHECK = False  # negative control: without the check, the wrong period is "verified"
    try:
        out, found, _, _ = run()
    finally:
        R.AMBIGUOUS_CHECK = True
    wrong = np.linalg.norm(out - truth, axis=2)[:, 0] > 3
    assert (wrong & found[:, 0]).any()
    out, found, _, _ = run()
    err = np.linalg.norm(out - truth, axis=2)[:, 0]
    assert not (found[:, 0] & (err > 3)).any()  # nothing a period off is called verified


def zooming_plate_with_card(T=16, H=120, W=160, zoom=0.72, seed=4):
    """A textured plate zooming out about its centre to ``zoom`` (linear) over the clip, and a
    flat card that hides a point from frame 2 until four frames before the end; frames, the
    point's true path, and the frames it is hidden on."""
    rng = np.random.default_rng(seed)
    tex = smooth_texture(rng, (H, W), 1.5)
    c = np.array([W / 2, H / 2])
    p0 = np.array([60.0, 50.0])
    frames, truth = [], []
    hidden = np.zeros(T, bool)
    hidden[2 : T - 4] = True
    for t in range(T):
        s = 1 + (zoom - 1) * t / (T - 1)
        m = np.float32([[s, 0, (1 - s) * c[0]], [0, s, (1 - s) * c[1]]])
        img = cv2.warpAffine(tex, m, (W, H), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        p = c + s * (p0 - c)
        if hidden[t]:
            img[int(p[1]) - 14 : int(p[1]) + 15, int(p[0]) - 14 : int(p[0]) + 15] = 128
        frames.append(np.dstack([img] * 3))
        truth.append(p)
    return frames, np.array(truth)[:, None], hidden


def test_a_lone_point_back_nearer_or_further_is_found_again_at_its_new_scale(monkeypatch):
    """Hidden while the camera zoomed out by a quarter, the point comes back too small for its
    last patch to match as it was: re-detection also looks for the patch resized, and the point
    is verified on every frame after the card. With the search at the patch's own scale only it
    stays lost (the case the resized search is there for)."""
    from pipstrack.engine import redetect

    frames, truth, hidden = zooming_plate_with_card()
    T = len(frames)
    far = truth + np.array([30.0, 25.0])  # the network followed something else from frame 1 on
    far[0] = truth[0]
    after = np.arange(T) > np.flatnonzero(hidden)[-1]

    def run():
        return refine_trajectories(lambda i: frames[i], np.arange(T), far, np.ones((T, 1), bool), [[0]])

    out, found, _, stats = run()
    err = np.linalg.norm(out - truth, axis=2)[:, 0]
    assert stats["redetected"] >= 1 and found[after, 0].all()
    assert err[after].max() < 0.5, err[after]
    monkeypatch.setattr(redetect, "SCALES", (1.0,))
    _, found_own_scale, _, _ = run()
    assert not found_own_scale[after, 0].any()


def test_a_frame_found_wrong_takes_the_frames_stepped_from_it_along():
    """The company check drops a frame where a step slid a period off; the later frames were
    stepped from it (their templates cut at the wrong place) and must go too, while frames
    stepped from elsewhere, and other points, keep their verification."""
    from pipstrack.engine.refine import stepped_from

    T = 8
    parent = np.full((T, 2), -1)
    parent[1:4, 0] = [0, 1, 2]  # point 0: a chain 0 -> 1 -> 2 -> 3
    parent[4:8, 0] = [3, 4, 5, 6]  # ... on to 7
    parent[6, 0] = 0  # frame 6 was stepped again from the keyframe (a re-seeded pass)
    parent[1:, 1] = np.arange(T - 1)  # point 1: one chain over the whole clip
    bad = np.zeros((T, 2), bool)
    bad[3, 0] = True  # the frame the company check found departing
    out = stepped_from(bad, parent)
    assert out[:, 0].tolist() == [False, False, False, True, True, True, False, False]
    assert not out[:, 1].any()
    assert not bad[4:, 0].any()  # the input is left as it was


def test_a_re_detection_records_whose_patch_found_it():
    """Re-detection is a search from the patch of a verified frame: it records that frame as the
    match's parent, so that a frame later found wrong takes what was re-detected from it along."""
    from pipstrack.engine.redetect import redetect_pass
    from pipstrack.engine.refine import REDETECT_RADIUS, WIN, _lk_step, stepped_from

    frames, shift = textured_clip(seed=3)
    T = len(frames)
    truth = np.array([50.0, 40.0]) + shift
    out = truth[:, None].copy()
    out[4:, 0] += 25.0  # lost from frame 4 on
    polished = np.zeros((T, 1), bool)
    polished[:4] = True
    similarity = np.where(polished, 1.0, np.nan)
    parent = np.full((T, 1), -1)

    def verify(g0, g1, p0, seed):
        return _lk_step(g0, g1, p0, seed, np.ones(len(p0), bool), REDETECT_RADIUS, levels=0)

    found = redetect_pass(
        lambda t: frames[t], out, polished, similarity, ~polished, np.array([0]), verify,
        lambda n, g1, p: True, win=WIN, parent=parent,
    )  # fmt: skip
    assert found == T - 4 and polished.all()
    assert np.linalg.norm(out[:, 0] - truth, axis=1).max() < 0.1
    assert parent[4:, 0].tolist() == list(range(3, T - 1))  # each found by the patch of the frame before
    bad = np.zeros((T, 1), bool)
    bad[5] = True
    assert np.flatnonzero(stepped_from(bad, parent)[:, 0]).tolist() == list(range(5, T))


def test_a_point_hidden_for_long_is_looked_for_sparsely_and_found_from_the_frame_it_is_back_on(monkeypatch):
    """A point under a card from frame 2 to frame 22 of 30: past DENSE_GAP frames re-detection
    looks for it only on every SPARSE_EVERY-th frame, and where it finds it matches the skipped
    frames back from there, so every frame after the card is verified on the truth, as with a
    search on every frame, for fewer searches of the wide window (the time re-detection costs).
    A lone point (``sparse=False``) is looked for on every frame."""
    from pipstrack.engine import redetect
    from pipstrack.engine.refine import REDETECT_RADIUS, WIN, _lk_step

    T, back = 30, 23
    frames, shift = textured_clip(T=T, H=120, W=160, seed=3)
    truth = np.array([70.0, 55.0]) + shift
    for t in range(2, back):  # a flat card over the point
        x, y = np.round(truth[t]).astype(int)
        frames[t] = frames[t].copy()
        frames[t][y - 14 : y + 15, x - 14 : x + 15] = 128
    assert back - 2 > redetect.DENSE_GAP + redetect.SPARSE_EVERY  # searched sparsely, a frame skipped

    def verify(g0, g1, p0, seed):
        return _lk_step(g0, g1, p0, seed, np.ones(len(p0), bool), REDETECT_RADIUS, levels=0)

    calls = []
    real = redetect.best_match
    monkeypatch.setattr(redetect, "best_match", lambda *a: calls.append(a[3]) or real(*a))

    def run(**options):
        out = truth[:, None].copy()
        out[2:, 0] += 25.0  # the network lost it under the card
        polished = np.zeros((T, 1), bool)
        polished[:2] = True
        found = redetect.redetect_pass(
            lambda t: frames[t], out, polished, np.where(polished, 1.0, np.nan), ~polished, np.array([0]),
            verify, lambda n, g1, p: True, win=WIN, **options,
        )  # fmt: skip
        wide = sum(r > redetect.SEARCH_PX + redetect.GROWTH_PX * redetect.DENSE_GAP for r in calls)
        calls.clear()
        return out, polished, found, wide

    out, polished, found, wide = run()
    assert found == T - back and polished[back:, 0].all() and not polished[2:back, 0].any()
    assert np.linalg.norm(out[back:, 0] - truth[back:], axis=1).max() < 0.25
    every = redetect.SPARSE_EVERY
    monkeypatch.setattr(redetect, "SPARSE_EVERY", 1)  # a search on every frame: the same frames, within 0.001 px
    out_dense, polished_dense, _, wide_dense = run()
    assert (polished_dense == polished).all()
    np.testing.assert_allclose(out_dense[back:], out[back:], atol=1e-3)
    assert wide * 2 < wide_dense, (wide, wide_dense)
    monkeypatch.setattr(redetect, "SPARSE_EVERY", every)  # a lone point (the whole job): on every frame
    _, polished_lone, _, wide_lone = run(sparse=False)
    assert (polished_lone == polished_dense).all() and wide_lone == wide_dense


def test_a_gap_the_network_crossed_dragged_leans_on_the_points_own_motion_next_to_its_verified_ends():
    """A point verified up to frame 4 and again from frame 12: in between the network (shifted by
    the ends' corrections) ran up to 5 px off its smooth path, less than STRAYED_PX, so that path
    stays in the middle of the gap; the frame next to each end takes the point's own motion (off by
    its acceleration only), the next one halfway, and the verified frames are not touched; under
    camera shake the network's path stays."""
    from pipstrack.engine import refine

    T = 17
    t = np.arange(T, dtype=float)
    truth = np.c_[50 + 2.0 * t + 0.05 * t**2, 40 + 1.5 * t]  # a smooth, slightly accelerating path
    net = truth.copy()
    net[5:12, 0] += 5.0 * np.sin(np.pi * (t[5:12] - 4) / 8)  # dragged across the gap, back at the far end
    out = net.copy()
    good = np.r_[0:5, 12:T]
    refine._own_motion_fill(out, net, good)
    err = np.linalg.norm(out - truth, axis=1)
    assert (out[good] == net[good]).all()
    assert err[5] < 0.2 and err[11] < 0.2  # beside each end: the own motion
    assert np.linalg.norm(net - truth, axis=1)[[5, 11]].min() > 1.5  # where the network was 1.9 px off
    for k in (6, 10):  # two frames from an end: halfway
        assert err[k] < 0.6 * np.linalg.norm(net[k] - truth[k]), k
    np.testing.assert_allclose(out[7:10], net[7:10])  # the middle of the gap: the network's path
    shaken = truth + np.random.default_rng(0).uniform(-1.5, 1.5, truth.shape)  # a hand-held camera
    net = shaken.copy()
    net[5:12, 0] += 5.0 * np.sin(np.pi * (t[5:12] - 4) / 8)
    out = net.copy()
    refine._own_motion_fill(out, net, good)
    np.testing.assert_allclose(out, net)  # its velocity says nothing about the next frame: the network's


def test_a_step_that_jumps_from_the_points_own_motion_onto_a_look_alike_is_not_verified(monkeypatch):
    """A point on a card moving over the plate (no other point moves with it) is covered from
    frame 6 on, and a copy of its patch shows 12 px away (the far side of an occluder, a repeating
    part, a patch cut off by the frame edge); the network follows the copy. A step there passes
    every patch check, and no co-moving point can judge it, but it breaks from the point's own
    motion by far more than the plate's points' motion did: not verified, nor what was stepped
    from it, while the plate's points keep every frame. Without the jump check (negative control) the copy is
    verified. (Re-detection is off: a search is not judged by the point's motion, and would find
    an exact copy, unique in its window, on its own: docs/tracking.md.)"""
    import pipstrack.engine.refine as R

    T, H, W = 12, 96, 128
    rng = np.random.default_rng(5)
    tex = smooth_texture(rng, (H + 40, W + 40), 1.5)
    card = smooth_texture(rng, (41, 41), 1.5)
    shift = np.c_[np.arange(T) * 1.0, np.arange(T) * 0.5]  # the plate
    path = np.c_[30 + np.arange(T) * 2.0, 30 + np.arange(T) * 1.0]  # the card's corner: its own motion
    start = np.array([[20.0, 20.0], [100.0, 20.0], [20.0, 75.0], [100.0, 75.0]])
    truth = np.concatenate([(path + 20)[:, None], start[None] + shift[:, None]], axis=1)
    offset = np.array([12, 3])
    frames = []
    for t, (dx, dy) in enumerate(shift):
        img = cv2.warpAffine(
            tex, np.float32([[1, 0, 20 - dx], [0, 1, 20 - dy]]), (W, H), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
        )
        x0, y0 = path[t].astype(int)
        img[y0 : y0 + 41, x0 : x0 + 41] = card
        if t >= 6:  # the point's patch copied beside it, and the point itself covered
            x, y = (truth[t, 0] + 0.5).astype(int)
            patch = img[y - 9 : y + 10, x - 9 : x + 10].copy()
            img[y - 9 : y + 10, x - 9 : x + 10] = 128
            img[y + offset[1] - 9 : y + offset[1] + 10, x + offset[0] - 9 : x + offset[0] + 10] = patch
        frames.append(np.dstack([img] * 3))
    rough = truth.copy()
    rough[6:, 0] += offset  # the network took the copy
    after = np.arange(T) >= 6

    def run():
        return refine_trajectories(
            lambda i: frames[i], np.arange(T), rough, np.ones((T, 5), bool), [[0]] * 5, redetect=False
        )

    monkeypatch.setattr(R, "JUMP_CHECK", False)
    out, found, _, _ = run()
    err = np.linalg.norm(out - truth, axis=2)
    assert (found[after, 0] & (err[after, 0] > 8)).any()  # the copy verified: silently wrong
    monkeypatch.setattr(R, "JUMP_CHECK", True)
    out, found, _, stats = run()
    err = np.linalg.norm(out - truth, axis=2)
    assert found[1:6, 0].all() and err[1:6, 0].max() < 0.2  # the frames before stay verified
    assert not (found & (err > 3)).any(), err[found]  # nothing wrong is called verified
    assert found[:, 1:].all() and stats["jumped"] >= 1


def test_the_jump_check_judges_a_step_by_the_points_own_motion_beside_the_cameras():
    """A step is judged by the velocity before it (times the frames it spans, across a gap) after
    taking out how the other points' motion broke on the same frames (a camera shake moves them
    all); the slack grows with the speed; a step the co-moving prediction backs is kept; a
    frame without two verified frames behind its step, found by a search, or with too few other
    points to judge the camera by, is not judged."""
    from pipstrack.engine.refine import _jumped

    T, N = 8, 7
    out = np.zeros((T, N, 2))
    out[:, :, 0] = np.arange(T)[:, None] * np.array([1.0, 10.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # one at 10 px a frame
    out[5:, :, 1] += 9.0  # the camera shakes: every point 9 px down from frame 5 on
    polished = np.ones((T, N), bool)
    parent = np.tile(np.arange(-1, T - 1)[:, None], (1, N))
    searched = np.zeros((T, N), bool)
    out[5, 0, 0] += 10.0  # point 0 also jumps 10 px on frame 5 (slack 8 + 1 px)
    out[5, 1, 0] += 8.0  # point 1 moves at 10 px a frame: 8 px is well within 8 + 10 px
    polished[2:5, 2] = False  # point 2 steps from frame 1 to 5, across a gap, as the plate moved
    parent[5, 2] = 1
    out[3, 3, 0] += 11.0  # point 3 jumps 11 px on frame 3, but its company goes there too
    pred = np.full((T, N, 2), np.nan)
    pred[3:, 3] = out[3:, 3]
    bad = _jumped(out, polished, parent, pred, searched)
    assert bad[5, 0] and not bad[[1, 2, 3, 4, 7], 0].any()  # frame 6 stepped from it: stepped_from's job
    assert not bad[:, 1:].any()  # the shake alone, the fast point, the gap, the backed jump
    assert _jumped(out, polished, parent, None, searched)[3, 3]  # without the company it is a jump
    searched[5, 0] = True
    assert not _jumped(out, polished, parent, pred, searched)[5, 0]
    few = polished.copy()
    few[5, 2:] = False  # only one other point verified on frame 5
    assert not _jumped(out, few, parent, pred, np.zeros((T, N), bool))[5, 0]
    polished[3, 0] = False  # frame 5's step has no verified frame before its start
    parent[4, 0] = -1
    assert not _jumped(out, polished, parent, pred, np.zeros((T, N), bool))[5, 0]


def test_the_cameras_break_is_the_median_of_the_other_points():
    from pipstrack.engine.refine import _median_without

    rng = np.random.default_rng(1)
    for m in (2, 3, 4, 7, 10):
        values = rng.normal(size=(m, 2))
        want = np.array([np.median(np.delete(values, i, axis=0), axis=0) for i in range(m)])
        np.testing.assert_allclose(_median_without(values), want)


def test_a_point_leaving_the_frame_is_verified_until_its_window_reaches_the_border(monkeypatch):
    """Past the border a step's window holds replicated pixels, which match along the edge: a
    point leaving the frame is verified while its 15 px window is inside, may be verified by the
    7 px edge window closer to the border, and is not verified once that is cut off too."""
    import pipstrack.engine.refine as R

    T, H, W = 14, 96, 128
    rng = np.random.default_rng(2)
    tex = smooth_texture(rng, (H + 80, W + 40), 1.5)
    shift = np.c_[np.arange(T) * 0.3, -np.arange(T) * 2.5]  # up and out at the top
    frames = [
        np.dstack(
            [
                cv2.warpAffine(
                    tex,
                    np.float32([[1, 0, 20 - dx], [0, 1, 20 - dy]]),
                    (W, H),
                    flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                    borderMode=cv2.BORDER_REFLECT,
                )
            ]
            * 3
        )
        for dx, dy in shift
    ]
    truth = np.array([[64.0, 30.0]])[None] + shift[:, None]
    inside = truth[:, 0, 1] >= 7  # the 15 px window is inside the frame
    cut_off = truth[:, 0, 1] < 3  # ... and the 7 px one is not

    def run():
        return refine_trajectories(lambda i: frames[i], np.arange(T), truth.copy(), np.ones((T, 1), bool), [[0]])

    monkeypatch.setattr(R, "BORDER_CHECK", False)
    _, found_anywhere, _, _ = run()
    assert found_anywhere[cut_off, 0].any()  # without the check, steps "verify" the cut-off window
    monkeypatch.setattr(R, "BORDER_CHECK", True)
    out, found, _, _ = run()
    assert found[inside, 0].all() and not found[cut_off, 0].any()
    err = np.linalg.norm(out - truth, axis=2)[:, 0]
    assert err[inside].max() < 0.1


def test_a_step_reads_only_the_region_around_its_points_and_lands_where_the_whole_frame_does(monkeypatch):
    """Lucas-Kanade for a few points runs on a cut of the frames around them (OpenCV builds its
    pyramids over whatever it is given); the steps land where the whole frames put them, at every
    pyramid depth, beside the border as in the middle, and a point's step does not depend on the
    others' being in the same call."""
    import pipstrack.engine.refine as R
    from pipstrack.evaluation.harness import load_photo

    photo = cv2.resize(load_photo("chelsea"), (512, 288), interpolation=cv2.INTER_AREA)
    moved = cv2.warpAffine(photo, np.float32([[1.01, 0.004, 2.6], [-0.004, 1.01, -1.9]]), (512, 288))
    rng = np.random.default_rng(5)
    p0 = np.r_[[[9.0, 9.0], [503.5, 140.2], [256.3, 279.0]], rng.uniform([20, 20], [490, 268], (5, 2))]
    seed = p0 + rng.normal(0, 1.5, p0.shape)
    for win, levels in ((15, 2), (15, 1), (7, 0)):
        cut = [R.lk_there_and_back(photo, moved, p0[k : k + 1], seed[k : k + 1], win, levels) for k in range(len(p0))]
        monkeypatch.setattr(R, "LK_CROP_MARGIN", 10**6)  # the whole frames
        whole = R.lk_there_and_back(photo, moved, p0, seed, win, levels)
        monkeypatch.undo()
        for k, (p1, back, ok) in enumerate(cut):
            assert ok[0] == whole[2][k], (win, levels, k)
            if ok[0]:
                assert np.abs(p1[0] - whole[0][k]).max() < 0.05 and np.abs(back[0] - whole[1][k]).max() < 0.05, (
                    win,
                    levels,
                    k,
                )
