"""The compositing set-ups end to end in real Blender (bpy as a module, headless).

Each scenario runs tests/blender/compositing_driver.py in a fresh process: it installs the
extension zip, opens a generated clip whose motion is known exactly, writes ground-truth
markers (no tracker involved), runs a set-up operator and renders the compositor's result;
the renders are measured here against the ground truth (figures in docs/compositing.md).

PIPSTRACK_BLENDER_PYTHON=/path/to/python runs the driver under another Python with bpy (e.g.
bpy 4.2, whose compositor API differs) while this process does the measuring.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

if importlib.util.find_spec("bpy") is None:  # found, not imported: Blender runs in subprocesses
    pytest.skip("Blender's Python module (bpy) is not installed", allow_module_level=True)

ROOT = Path(__file__).parents[1]
DRIVER = ROOT / "tests" / "blender" / "compositing_driver.py"
PYTHON = os.environ.get("PIPSTRACK_BLENDER_PYTHON") or sys.executable
W, H = 160, 96


def run_blender(tmp_path, zip_path, clip_path, steps, timeout=240, prefs=None):
    spec = dict(
        zip=str(zip_path), clip=str(clip_path), steps=steps, user_resources=str(tmp_path / "bl-user"), prefs=prefs or {}
    )
    sp, op = tmp_path / f"spec-{time.monotonic_ns()}.json", tmp_path / f"out-{time.monotonic_ns()}.json"
    sp.write_text(json.dumps(spec))
    proc = subprocess.run([PYTHON, str(DRIVER), str(sp), str(op)], capture_output=True, text=True, timeout=timeout)
    assert op.exists(), f"driver died: {proc.stdout[-2000:]} {proc.stderr[-4000:]}"
    out = json.loads(op.read_text())
    assert "exception" not in out, out["exception"]
    assert out["enabled"], out
    return out


def results(out):
    return [s["result"] for s in out["steps"]]


def snaps_to_whole_pixels(out) -> bool:
    """Blender 4.2's CPU compositor moves images by whole pixels (measured; 4.5 and 5.0 do not):
    sub-pixel figures only hold from 4.5 on."""
    return tuple(out["version"][:2]) < (4, 5)


# -- clips ------------------------------------------------------------------------------------
def texture(h, w, seed, lo=0, hi=255, sigma=2.5):
    """Smooth random grey texture (for registration and tracking), uint8 RGB."""
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), sigma)
    t = (t - t.min()) / (t.max() - t.min())
    return np.repeat((lo + (hi - lo) * t)[..., None], 3, axis=2).astype(np.uint8)


def write_sequence(folder: Path, frames, name="plate"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(frames):
        cv2.imwrite(str(folder / f"{name}.{i + 1:04d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return folder / f"{name}.0001.png"


def read_rgb(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float64) / np.iinfo(img.dtype).max


def track_step(name, xy):
    """Markers on clip frames 1..T at pixel positions ``xy`` (T, 2)."""
    return {"op": "track", "name": name, "frames": list(range(1, len(xy) + 1)), "xy": np.asarray(xy).tolist()}


def shift_between(a, b, margin=12):
    """Sub-pixel translation of image ``b``'s content relative to ``a``: phase correlation for
    a start, refined by ECC (cv2.findTransformECC, translation) of ``a``'s centre (away from
    the borders a stabilisation leaves empty) within the whole of ``b``."""
    ga, gb = (np.ascontiguousarray(img.mean(axis=2), dtype=np.float32) for img in (a, b))
    ta = np.ascontiguousarray(ga[margin:-margin, margin:-margin])
    window = cv2.createHanningWindow(ta.shape[::-1], cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(ta, np.ascontiguousarray(gb[margin:-margin, margin:-margin]), window)
    warp = np.float32([[1, 0, dx + margin], [0, 1, dy + margin]])
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 200, 1e-6)
    _, warp = cv2.findTransformECC(ta, gb, warp, cv2.MOTION_TRANSLATION, criteria, None, 1)
    return warp[:, 2].astype(np.float64) - margin


def blob_centroid(channel, near, radius=6):
    """Intensity-weighted centroid of ``channel`` in a window around ``near`` (x, y)."""
    x0, y0 = int(round(near[0])), int(round(near[1]))
    win = channel[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    w = np.clip(win - 0.5 * win.max(), 0, None)
    ys, xs = np.mgrid[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])


def dot_image(h, w, dots, sigma=1.6):
    """Black RGB image with Gaussian dots: ``dots`` = [((x, y), channel), ...] at pixel centres."""
    ys, xs = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3), np.float64)
    for (x, y), c in dots:
        img[..., c] += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return (255 * np.clip(img, 0, 1)).astype(np.uint8)


# -- stabilisation ------------------------------------------------------------------------------
T_STAB = 16


@pytest.fixture(scope="module")
def shaky(tmp_path_factory):
    """A textured plate under a random camera shake (whole-frame translation, known exactly)."""
    rng = np.random.default_rng(3)
    shake = rng.uniform(-6, 6, size=(T_STAB, 2))
    shake[0] = 0
    margin = 12
    big = texture(H + 2 * margin, W + 2 * margin, seed=5)
    frames = []
    for dx, dy in shake:  # frame content at pixel p is the texture at p + margin - shake: features move by +shake
        m = np.float32([[1, 0, margin - dx], [0, 1, margin - dy]])
        frames.append(cv2.warpAffine(big, m, (W, H), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP))
    features = np.array([[30.0, 25.0], [125.0, 30.0], [70.0, 75.0]])  # frame-1 pixel positions
    trajs = features[None] + shake[:, None]  # (T, 3, 2)
    path = write_sequence(tmp_path_factory.mktemp("shaky"), frames)
    return {"path": path, "shake": shake, "trajs": trajs, "frames": frames}


def test_stabilise_removes_the_known_shake(tmp_path, extension_zip, shaky):
    names = ["s0", "s1", "s2"]
    steps = [track_step(n, shaky["trajs"][:, i]) for i, n in enumerate(names)]
    steps += [
        {"op": "select", "tracks": names},
        {"op": "state"},
        {"op": "pipstrack.setup_stabilise"},
        {"op": "state"},
        {"op": "render", "scene_frames": list(range(1, T_STAB + 1)), "dir": str(tmp_path / "r")},
        {"op": "switch", "frame": "PIPs Stabilise", "value": True},
        {"op": "render", "scene_frames": [T_STAB], "dir": str(tmp_path / "original")},
    ]
    out = run_blender(tmp_path, extension_zip, shaky["path"], steps)
    before, op, after, files, _, original = results(out)[-6:]
    assert op == ["FINISHED"], op
    assert before["tree"] is None and not before["stabilization"]["use_2d"]
    stab = after["stabilization"]
    assert stab["use_2d"] and stab["rotation"] and stab["scale"]
    assert stab["tracks"] == names and stab["rotation_tracks"] == names and stab["anchor_frame"] == 1
    assert after["resolution"][:2] == [W, H]
    nodes = after["tree"]["nodes"]
    frame = next(n for n, d in nodes.items() if d["type"] == "NodeFrame" and n.startswith("PIPs Stabilise"))
    mine = {d["type"] for d in nodes.values() if d["parent"] == frame}
    assert {"CompositorNodeMovieClip", "CompositorNodeStabilize", "CompositorNodeSwitch"} <= mine
    assert any(
        "Switch" in link.split("->")[0] and link.split("->")[1].split(":")[0] in ("Group Output", "Composite")
        for link in after["tree"]["links"]
    )

    renders = [read_rgb(f) for f in files]
    src = [f.astype(np.float64) / 255 for f in shaky["frames"]]
    measured_in = np.array([shift_between(src[0], s) for s in src])
    np.testing.assert_allclose(measured_in, shaky["shake"], atol=0.15)  # the measure itself is sound
    residual = np.array([shift_between(renders[0], r) for r in renders])
    shake_px = np.linalg.norm(shaky["shake"], axis=1)
    res_px = np.linalg.norm(residual, axis=1)
    print(
        f"\nstabilise: input shake mean {shake_px[1:].mean():.2f} px max {shake_px.max():.2f} px; "
        f"residual mean {res_px[1:].mean():.3f} px max {res_px.max():.3f} px"
    )
    if snaps_to_whole_pixels(out):
        assert res_px.max() < 0.8 and res_px[1:].mean() < 0.6
    else:
        assert res_px.max() < 0.1 * shake_px.max() and res_px[1:].mean() < 0.05 * shake_px[1:].mean()
    # the stabilised first frame is the plate itself (anchored on frame 1)
    assert np.abs(renders[0][8:-8, 8:-8] - src[0][8:-8, 8:-8]).mean() < (0.05 if snaps_to_whole_pixels(out) else 0.01)
    # the Switch shows the original, shaky clip
    assert np.abs(read_rgb(original[0]) - src[-1]).max() < 0.01


def test_stabilise_from_tracks_pipstrack_made(tmp_path, extension_zip, shaky, backend):
    """The whole chain: keys on frame 1, tracked by the add-on through a real backend with the
    shipped model, stabilised by the set-up, rendered; the residual shake is measured."""
    names = ["s0", "s1", "s2"]
    steps = [
        {"op": "track", "name": n, "frames": [1], "xy": [shaky["trajs"][0, i].tolist()]} for i, n in enumerate(names)
    ]
    steps += [
        {"op": "select", "tracks": names},
        {"op": "pipstrack.track_markers", "args": {"direction": "FORWARD"}},
        {"op": "markers"},
        {"op": "pipstrack.setup_stabilise"},
        {"op": "render", "scene_frames": list(range(1, T_STAB + 1)), "dir": str(tmp_path / "r")},
    ]
    out = run_blender(tmp_path, extension_zip, shaky["path"], steps, prefs={"address": backend.address})
    tracked, tracks, stab, files = results(out)[-4:]
    assert tracked == ["FINISHED"] and stab == ["FINISHED"], (tracked, stab)
    xy = np.array([[m[1:3] for m in tracks[n]] for n in names]).transpose(1, 0, 2)  # (T, 3, 2)
    track_err = np.linalg.norm(xy - shaky["trajs"], axis=2)
    renders = [read_rgb(f) for f in files]
    residual = np.linalg.norm([shift_between(renders[0], r) for r in renders], axis=1)
    shake_px = np.linalg.norm(shaky["shake"], axis=1)
    print(
        f"\npipstrack-tracked stabilise: track error median {np.median(track_err):.2f} px; input shake mean "
        f"{shake_px[1:].mean():.2f} px, residual mean {residual[1:].mean():.2f} px max {residual.max():.2f} px"
    )
    # docs/compositing.md states the figures (today 0.01 px mean, 0.02 px max, for a 4.3 px mean shake)
    assert track_err.max() < 0.5
    assert residual.max() < 0.1 * shake_px.max() and residual[1:].mean() < 0.05 * shake_px[1:].mean()


# -- corner pin -------------------------------------------------------------------------------
T_PIN = 8
PIN_H, PIN_W = 48, 64
PIN_DOTS = [((20, 14), 0), ((47, 33), 1)]  # a red and a green dot at pixel centres of the pinned image


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    """A planar quad moving under a known homography over a static plate; its four corners
    are the ground-truth tracks (pixel centres, y down)."""
    rng = np.random.default_rng(8)
    base = np.array([[45.0, 68.0], [118.0, 72.0], [112.0, 22.0], [50.0, 26.0]])  # BL, BR, TR, TL on screen
    quads = [base + rng.uniform(-5, 5, size=(4, 2)) + rng.uniform(-6, 6, size=2) for _ in range(T_PIN)]
    pattern = texture(PIN_H, PIN_W, seed=9, lo=60, hi=255)
    plate = texture(H, W, seed=10, lo=0, hi=90)
    src = np.float32([[-0.5, PIN_H - 0.5], [PIN_W - 0.5, PIN_H - 0.5], [PIN_W - 0.5, -0.5], [-0.5, -0.5]])
    frames = []
    for q in quads:
        hom = cv2.getPerspectiveTransform(src, np.float32(q))
        warped = cv2.warpPerspective(pattern, hom, (W, H), flags=cv2.INTER_LINEAR)
        mask = cv2.warpPerspective(np.ones((PIN_H, PIN_W), np.float32), hom, (W, H))[..., None]
        frames.append((mask * warped + (1 - mask) * plate).astype(np.uint8))
    d = tmp_path_factory.mktemp("plane")
    path = write_sequence(d, frames)
    pin = d / "pin.png"
    cv2.imwrite(str(pin), cv2.cvtColor(dot_image(PIN_H, PIN_W, PIN_DOTS), cv2.COLOR_RGB2BGR))
    return {"path": path, "quads": np.array(quads), "pin": pin}


def pinned_position(quad, uv):
    """Where the corner pin puts pixel ``uv`` of the pinned image: its edges (not pixel centres)
    go to the tracks, so work in edge coordinates (pixel centre + 0.5)."""
    src = np.float32([[0, PIN_H], [PIN_W, PIN_H], [PIN_W, 0], [0, 0]])
    hom = cv2.getPerspectiveTransform(src, np.float32(quad + 0.5))
    p = cv2.perspectiveTransform(np.float32([[np.add(uv, 0.5)]]), hom)[0, 0]
    return p - 0.5


def test_corner_pin_lands_the_image_where_the_homography_puts_it(tmp_path, extension_zip, plane):
    names = ["c_tl", "c_br", "c_bl", "c_tr"]  # created out of order: the operator orders them by position
    idx = {"c_bl": 0, "c_br": 1, "c_tr": 2, "c_tl": 3}
    steps = [track_step(n, plane["quads"][:, idx[n]]) for n in names]
    frames = [1, 5, 8]
    steps += [
        {"op": "user_tree"},
        {"op": "state"},
        {"op": "select", "tracks": names},
        {"op": "frame", "scene_frame": 3},
        {"op": "pipstrack.setup_corner_pin", "args": {"image_path": str(plane["pin"])}},
        {"op": "state"},
        {"op": "render", "scene_frames": frames, "dir": str(tmp_path / "r")},
    ]
    out = run_blender(tmp_path, extension_zip, plane["path"], steps)
    before, _, _, op, after, files = results(out)[-6:]
    assert op == ["FINISHED"], op
    nodes = after["tree"]["nodes"]
    # the user's tree is the one used, and keeps all its nodes; only the output's input link changed
    assert after["tree"]["name"] == before["tree"]["name"] and set(before["tree"]["nodes"]) <= set(nodes)
    assert set(before["tree"]["links"]) - set(after["tree"]["links"]) == {
        next(link for link in before["tree"]["links"] if link.startswith("User RGB"))
    }
    frame = next(n for n, d in nodes.items() if d["type"] == "NodeFrame" and n.startswith("PIPs Corner Pin"))
    mine = [d for d in nodes.values() if d["parent"] == frame]
    assert sorted(d["track"] for d in mine if d["type"] == "CompositorNodeTrackPos") == sorted(names)
    assert {"CompositorNodeCornerPin", "CompositorNodeImage", "CompositorNodeAlphaOver"} <= {d["type"] for d in mine}
    # which track drives which corner
    corner_of = {}
    for link in after["tree"]["links"]:
        src, dst = link.split("->")
        node = src.split(":")[0]
        if nodes[node]["type"].endswith("CombineXYZ") and dst.split(":")[0] == next(
            n for n, d in nodes.items() if d["type"] == "CompositorNodeCornerPin"
        ):
            corner_of[dst.split(":")[1]] = node
    assert len(corner_of) == 4

    errs = []
    for f, path in zip(frames, files):
        img = read_rgb(path)
        for uv, c in PIN_DOTS:
            want = pinned_position(plane["quads"][f - 1], uv)
            got = blob_centroid(img[..., c], want)
            errs.append(np.linalg.norm(got - want))
    errs = np.array(errs)
    print(f"\ncorner pin: dot error mean {errs.mean():.3f} px max {errs.max():.3f} px over {len(errs)} dots")
    assert errs.max() < 0.5
    # outside the quad the clip shows through unchanged
    img = read_rgb(files[0])
    plate_px = cv2.imread(str(plane["path"]))[..., ::-1] / 255.0
    assert np.abs(img[2:10, 2:30] - plate_px[2:10, 2:30]).max() < 0.01


# -- match-move -------------------------------------------------------------------------------
T_MM = 8
# The pinned images: a red dot at the centre (to land on the track), a green one 10 px right of it.
# Odd size: the centre is a pixel centre, and Blender aligns the image half a pixel off (the
# operator compensates); even size: the centre lies between pixels.
MM_IMAGES = {"odd": (33, [((16, 16), 0), ((26, 16), 1)]), "even": (32, [((15.5, 15.5), 0), ((25.5, 15.5), 1)])}


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    t = np.arange(T_MM)
    lead = np.stack([80 + 40 * np.cos(0.4 * t) + 0.3 * t, 48 + 18 * np.sin(0.5 * t)], axis=1)
    angle = np.deg2rad(12) * np.sin(0.7 * t)  # y-down pixel angles
    scale = 1.0 + 0.15 * np.sin(0.5 * t + 0.3)
    follow = lead + 20 * scale[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    plate = texture(H, W, seed=12, lo=0, hi=90)
    d = tmp_path_factory.mktemp("moving")
    path = write_sequence(d, [plate] * T_MM)
    images = {}
    for kind, (size, dots) in MM_IMAGES.items():
        images[kind] = d / f"dots_{kind}.png"
        cv2.imwrite(str(images[kind]), cv2.cvtColor(dot_image(size, size, dots), cv2.COLOR_RGB2BGR))
    return {"path": path, "lead": lead, "follow": follow, "angle": angle, "scale": scale, "images": images}


def test_matchmove_carries_the_image_with_the_track(tmp_path, extension_zip, moving):
    frames = [1, 4, 7]
    ref = 2  # the reference frame for rotation and scale
    runs = [("one-odd", ["lead"], "odd"), ("one-even", ["lead"], "even"), ("two-even", ["lead", "follow"], "even")]
    steps = [track_step("lead", moving["lead"]), track_step("follow", moving["follow"])]
    for name, sel, kind in runs:
        steps += [
            {"op": "frame", "scene_frame": ref},
            {"op": "select", "tracks": sel, "active": "lead"},
            {"op": "pipstrack.setup_matchmove", "args": {"image_path": str(moving["images"][kind])}},
            {"op": "render", "scene_frames": frames, "dir": str(tmp_path / name)},
        ]
    steps.append({"op": "state"})
    out = run_blender(tmp_path, extension_zip, moving["path"], steps)
    res = results(out)[2:]
    after = res[-1]
    assert all(res[2 + 4 * i] == ["FINISHED"] for i in range(len(runs))), res
    frames_made = [n for n, d in after["tree"]["nodes"].items() if d["type"] == "NodeFrame"]
    assert len(frames_made) == len(runs)  # each set-up added its own frame; the earlier ones' nodes stay

    err_pos, err_rot = [], []
    for i, (_name, sel, _kind) in enumerate(runs):
        for f, path in zip(frames, res[3 + 4 * i]):
            img, lead = read_rgb(path), moving["lead"][f - 1]
            err_pos.append(np.linalg.norm(blob_centroid(img[..., 0], lead) - lead))  # the centre on the track
            if len(sel) == 1:
                green = lead + np.array([10.0, 0.0])  # position only
            else:  # turned and scaled as the lead -> follow line, from the reference frame
                a = moving["angle"][f - 1] - moving["angle"][ref - 1]
                s = moving["scale"][f - 1] / moving["scale"][ref - 1]
                green = lead + 10 * s * np.array([np.cos(a), np.sin(a)])
            (err_pos if len(sel) == 1 else err_rot).append(np.linalg.norm(blob_centroid(img[..., 1], green) - green))
    err_pos, err_rot = np.array(err_pos), np.array(err_rot)
    print(
        f"\nmatch-move: on-track error mean {err_pos.mean():.3f} px max {err_pos.max():.3f} px; "
        f"rotated/scaled dot error mean {err_rot.mean():.3f} px max {err_rot.max():.3f} px"
    )
    limit = 1.0 if snaps_to_whole_pixels(out) else 0.25
    assert err_pos.max() < limit and err_rot.max() < limit


# -- errors -----------------------------------------------------------------------------------
def test_wrong_selections_report_clearly_and_change_nothing(tmp_path, extension_zip, shaky):
    convex = [
        shaky["trajs"][:, 0],
        shaky["trajs"][:, 1],
        shaky["trajs"][:, 2],
        shaky["trajs"][:, 0] + [95, 50],
        shaky["trajs"][:, 1] + [0, 40],
    ]
    tracks = [track_step(f"t{i}", xy) for i, xy in enumerate(convex)]
    line = [track_step(f"l{i}", np.repeat([[20.0 + 30 * i, 50.0]], T_STAB, axis=0)) for i in range(4)]
    steps = (
        tracks
        + line
        + [
            {"op": "select", "tracks": []},
            {"op": "state"},
            {"op": "pipstrack.setup_stabilise"},
            {"op": "pipstrack.setup_corner_pin"},
            {"op": "pipstrack.setup_matchmove"},
            {"op": "select", "tracks": ["t0", "t1", "t2"]},
            {"op": "pipstrack.setup_corner_pin"},
            {"op": "select", "tracks": ["t0", "t1", "t2", "t3", "t4"]},
            {"op": "pipstrack.setup_corner_pin"},
            {"op": "select", "tracks": ["l0", "l1", "l2", "l3"]},
            {"op": "pipstrack.setup_corner_pin"},
            {"op": "select", "tracks": ["t0", "t1", "t2", "t3"]},
            {"op": "pipstrack.setup_corner_pin", "args": {"image_path": str(tmp_path / "missing.png")}},
            {"op": "select", "tracks": ["t0", "t1", "t2"]},
            {"op": "pipstrack.setup_matchmove"},
            {"op": "state"},
        ]
    )
    out = run_blender(tmp_path, extension_zip, shaky["path"], steps)
    r = results(out)[len(tracks) + len(line) :]
    before, after = r[1], r[-1]
    for res in r[2:5]:  # nothing selected: the operators are unavailable and say why
        assert res["poll"] is False and "Select the tracks" in res["message"], res
    errors = [r[6], r[8], r[10], r[12], r[14]]
    assert all("error" in e for e in errors), errors
    assert "exactly four tracks" in errors[0]["error"] and "(3 selected)" in errors[0]["error"]
    assert "exactly four tracks" in errors[1]["error"] and "(5 selected)" in errors[1]["error"]
    assert "convex quadrilateral" in errors[2]["error"]
    assert "no image at" in errors[3]["error"]
    assert "select one track" in errors[4]["error"] and "(3 selected)" in errors[4]["error"]
    assert after == before  # no node, node group, image, stabilisation or render setting changed


def test_defaults_generated_image_and_location_only(tmp_path, extension_zip, plane):
    """No image given: a generated colour grid is pinned; one track stabilises location only."""
    idx = {"c_bl": 0, "c_br": 1, "c_tr": 2, "c_tl": 3}
    steps = [track_step(n, plane["quads"][:, i]) for n, i in idx.items()]
    steps += [
        {"op": "select", "tracks": list(idx)},
        {"op": "pipstrack.setup_corner_pin"},
        {"op": "render", "scene_frames": [2], "dir": str(tmp_path / "r")},
        {"op": "select", "tracks": ["c_bl"]},
        {"op": "pipstrack.setup_stabilise"},
        {"op": "state"},
    ]
    out = run_blender(tmp_path, extension_zip, plane["path"], steps)
    assert len(out["registered"]) == 4  # the panel and the three operators
    pin, files, _, stab, after = results(out)[-5:]
    assert pin == stab == ["FINISHED"], (pin, stab)
    assert "PIPs Checker" in after["images"]
    s = after["stabilization"]
    assert (
        s["use_2d"] and s["tracks"] == ["c_bl"] and s["rotation_tracks"] == [] and not s["rotation"] and not s["scale"]
    )
    # the grid covers the quad: its colours differ from the clip there, not outside
    img, clip = read_rgb(files[0]), cv2.imread(str(plane["path"]).replace("0001", "0002"))[..., ::-1] / 255.0
    centre = plane["quads"][1].mean(axis=0).round().astype(int)
    inside = np.abs(img - clip)[centre[1] - 6 : centre[1] + 6, centre[0] - 10 : centre[0] + 10].mean()
    outside = np.abs(img - clip)[2:10, 2:30].mean()
    assert inside > 0.05 and outside < 0.01, (inside, outside)
