"""The Blender extension end to end, in real Blender (bpy 5.0 as a module, headless).

Each scenario runs tests/blender/driver.py in a fresh process: it installs the extension zip
built by tools/build_extension.py the way Blender installs extensions, opens a generated clip,
places markers and runs the add-on's operators against a real `pipstrack serve` process on
loopback (the shipped default model). The markers are compared with an in-process
``Tracker.track`` on the same frames (the add-on must not change a number on the way) and
with the clip's exact ground truth.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

if importlib.util.find_spec("bpy") is None:  # found, not imported: bpy changes this process's floating-point state
    pytest.skip("Blender's Python module (bpy) is not installed", allow_module_level=True)

from conftest import Backend  # noqa: E402
from test_service import free_port, tiny_model  # noqa: E402, F401  (tiny_model: a fixture)

ROOT = Path(__file__).parents[1]
DRIVER = ROOT / "tests" / "blender" / "driver.py"
# Another Python with bpy (and numpy, pyzmq) runs the Blender side, e.g. pip's bpy==4.2.0 for the
# manifest's minimum version: PIPSTRACK_BLENDER_PYTHON=/path/to/python pytest tests/test_blender_addon.py
BLENDER_PYTHON = os.environ.get("PIPSTRACK_BLENDER_PYTHON") or sys.executable
T, H, W = 20, 128, 224
ITERS = 3  # the backend and the reference use the same settings; fewer iterations keep the suite quick
# Exactness is checked against the in-process tracker; against the ground truth the medians are
# printed (pytest -s) and recorded in docs/blender.md.
ON_FEATURE_PX = 3.0


@pytest.fixture(scope="module")
def shot(tmp_path_factory):
    """A photo under a moving camera with a bar crossing it: PNG sequence 1001.. and an MP4-like movie."""
    from pipstrack.datasets.sample import homography_clip
    from pipstrack.evaluation.harness import load_photo

    clip = homography_clip(load_photo("astronaut"), T, (H, W), seed=11, points=6, strength=0.5)
    d = tmp_path_factory.mktemp("shot")
    for i, img in enumerate(clip["rgbs"]):
        cv2.imwrite(str(d / f"plate.{1001 + i:04d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    for name, codec in (("plate.avi", "FFV1"), ("plate.mp4", "mp4v")):  # lossless, and a lossy MPEG-4
        writer = cv2.VideoWriter(str(d / name), cv2.VideoWriter_fourcc(*codec), 24, (W, H))
        for img in clip["rgbs"]:
            writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        writer.release()
    clip["dir"] = d
    return clip


@pytest.fixture(scope="module")
def reference(default_model):
    import torch

    from pipstrack import Tracker

    def run(frames, anchors, **kw):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return Tracker(default_model, device="cpu", iters=ITERS, working_long_side=512).track(frames, anchors, **kw)
        finally:
            torch.set_num_threads(threads)

    return run


def run_blender(tmp_path, zip_path, clip_path, steps, *, address, timeout=300, **spec):
    spec = dict(
        zip=str(zip_path),
        clip=str(clip_path),
        steps=steps,
        prefs={"address": address, "iters": ITERS, **spec.pop("prefs", {})},
        **spec,
    )
    sp, op = tmp_path / f"spec-{time.monotonic_ns()}.json", tmp_path / f"out-{time.monotonic_ns()}.json"
    sp.write_text(json.dumps(spec))
    env = dict(
        os.environ, PIPSTRACK_SERVER_TIMEOUT="2", PIPSTRACK_HEARTBEAT="0.3"
    )  # the add-on gives up on a silent backend after 2 s
    proc = subprocess.run(
        [BLENDER_PYTHON, str(DRIVER), str(sp), str(op)], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert op.exists(), f"driver died: {proc.stdout[-2000:]} {proc.stderr[-4000:]}"
    out = json.loads(op.read_text())
    assert "exception" not in out, out["exception"]
    assert out["enabled"], out
    return out


def check_markers(got, frames, ref_xy, W=W, H=H):
    """Markers equal the reference trajectory on frames inside the image (float32 marker storage);
    outside it they are disabled and sit on the frame's edge."""
    xy = np.array([got[f][:2] for f in frames])
    inside = (ref_xy[:, 0] >= -0.5) & (ref_xy[:, 0] <= W - 0.5) & (ref_xy[:, 1] >= -0.5) & (ref_xy[:, 1] <= H - 0.5)
    np.testing.assert_allclose(xy[inside], ref_xy[inside], atol=2e-3)
    assert all(got[f][2] for f, ok in zip(frames, inside) if not ok)
    np.testing.assert_allclose(xy[~inside], np.clip(ref_xy[~inside], [-0.5, -0.5], [W - 0.5, H - 0.5]), atol=2e-3)
    return xy


def markers(out, name, source="final"):
    """{clip frame: (x, y, mute, keyed)} of one track."""
    return {f: (x, y, mute, keyed) for f, x, y, mute, keyed in out[source]["tracks"][name]}


def grid_steps(columns, rows):
    """A grid of keyed tracks on the first frame, made with the add-on's Add Track Grid."""
    return [
        {"op": "frame", "scene_frame": 1},
        {"op": "set", "name": "grid_columns", "value": columns},
        {"op": "set", "name": "grid_rows", "value": rows},
        {"op": "pipstrack.add_grid"},
    ]


def keyframe_steps(clip, points, frame_idx):
    """Markers at job index ``frame_idx`` (clip frame frame_idx + 1) on the ground truth."""
    return [
        {
            "op": "marker",
            "track": f"p{n}",
            "frame": frame_idx + 1,
            "x": float(clip["trajs"][frame_idx, n, 0]),
            "y": float(clip["trajs"][frame_idx, n, 1]),
        }
        for n in points
    ]


# -- tests -------------------------------------------------------------------------------------
def test_track_both_directions_from_a_keyframe_matches_the_tracker_and_ground_truth(
    tmp_path, extension_zip, shot, backend, reference
):
    pts = [0, 1, 2, 3]
    key = 6  # keyframes in the middle: tracked backward and forward
    steps = keyframe_steps(shot, pts, key) + [
        {"op": "select", "tracks": [f"p{n}" for n in pts]},
        {"op": "pipstrack.track_markers", "args": {"direction": "BOTH"}},
    ]
    out = run_blender(
        tmp_path, extension_zip, shot["dir"] / "plate.1001.png", steps, address=backend.address, disable=True
    )
    assert out["steps"][-1]["result"] == ["FINISHED"]
    assert not {"torch", "pipstrack"} & set(out["heavy_modules"])  # the add-on needs numpy and pyzmq only
    # the anchors as Blender stores them (float32 marker positions), so the comparison is exact
    anchors = [np.array([[key, *markers(out, f"p{n}")[key + 1][:2]]]) for n in pts]
    np.testing.assert_allclose([a[0, 1:] for a in anchors], shot["trajs"][key, pts], atol=1e-4)
    ref = reference(shot["rgbs"], anchors)
    errs = []
    for j, n in enumerate(pts):
        got = markers(out, f"p{n}")
        assert sorted(got) == list(range(1, T + 1))  # every clip frame, no more
        assert got[key + 1][3] and not any(got[f][3] for f in got if f != key + 1)  # only the user's keyframe is keyed
        xy = check_markers(got, range(1, T + 1), ref.xy[:, j])
        vis = shot["visible"][:, n]
        errs.append(np.linalg.norm(xy - shot["trajs"][:, n], axis=1)[vis])
    print(
        "\nboth directions: median error against the ground truth "
        f"{np.median(np.concatenate(errs)):.2f} px on visible frames"
    )
    assert np.median(np.concatenate(errs)) < ON_FEATURE_PX
    store = out["final"]["store"]
    assert set(store) == {f"p{n}" for n in pts} and len(store["p0"]["frames"]) == T - 1  # all but the keyframe
    # unregistering leaves nothing behind
    gone = out["after_disable"]
    assert not gone["scene_prop"] and not gone["wm_prop"]
    assert "track_menu" not in gone["menu_funcs"]


def test_fill_gaps_passes_through_known_markers_on_both_sides(tmp_path, extension_zip, shot, backend, reference):
    n = 4
    known = list(range(0, 5)) + list(range(13, T))  # job indices with markers; 5..12 a hole
    steps = [
        {
            "op": "marker",
            "track": "hole",
            "frame": i + 1,
            "x": float(shot["trajs"][i, n, 0]),
            "y": float(shot["trajs"][i, n, 1]),
            "keyed": i in (0, 13),
        }
        for i in known
    ]
    steps += [
        {"op": "marker", "track": "hole", "frame": 6, "x": 5.0, "y": 5.0, "keyed": False, "mute": True},  # lost here
        {"op": "select", "tracks": ["hole"]},
        {"op": "dump"},
        {"op": "pipstrack.fill_gaps"},
    ]
    out = run_blender(tmp_path, extension_zip, shot["dir"] / "plate.1001.png", steps, address=backend.address)
    assert out["steps"][-1]["result"] == ["FINISHED"]
    after = markers(out, "hole")
    before = {f: (x, y, mute, keyed) for f, x, y, mute, keyed in out["steps"][-2]["result"]["tracks"]["hole"]}
    assert sorted(after) == list(range(1, T + 1))
    for f in (i + 1 for i in known):
        assert after[f] == before[f]  # known markers untouched
    filled = range(6, 14)  # clip frames of the hole
    assert not any(after[f][2] or after[f][3] for f in filled)  # enabled, tracked (not keyed)
    anchors = [np.array([[i, *before[i + 1][:2]] for i in known])]
    ref = reference(shot["rgbs"], anchors, frame_range=(0, T - 1), direction="gaps")
    check_markers(after, filled, ref.xy[5:13, 0])
    err = np.linalg.norm(np.array([after[f][:2] for f in filled]) - shot["trajs"][5:13, n], axis=1)
    lin = np.array(
        [np.interp(np.arange(5, 13), [4, 13], [shot["trajs"][4, n, c], shot["trajs"][13, n, c]]) for c in (0, 1)]
    ).T
    print(
        f"\nfill gaps: the hole filled to {np.median(err):.2f} px median; linear interpolation between the known "
        f"markers: {np.median(np.linalg.norm(lin - shot['trajs'][5:13, n], axis=1)):.2f} px"
    )
    assert np.median(err) < ON_FEATURE_PX


def test_backward_on_a_shifted_clip_and_pixels_decoded_by_blender(tmp_path, extension_zip, shot, backend, reference):
    """frame_start 101 and frame_offset 2: clip frame 1 shows plate.1003 on scene frame 101.
    Frames go over the socket as pixels Blender decoded (the render-box path)."""
    pts = [0, 5]
    off = 2
    rgbs = shot["rgbs"][off:]
    key = 12  # job index on the shifted clip: file plate.{1001 + key + off}
    steps = [
        {
            "op": "marker",
            "track": f"p{n}",
            "frame": key + 1,
            "x": float(shot["trajs"][key + off, n, 0]),
            "y": float(shot["trajs"][key + off, n, 1]),
        }
        for n in pts
    ]
    steps += [
        {"op": "select", "tracks": [f"p{n}" for n in pts]},
        {"op": "pipstrack.track_markers", "args": {"direction": "BACKWARD"}},
    ]
    out = run_blender(
        tmp_path,
        extension_zip,
        shot["dir"] / "plate.1001.png",
        steps,
        address=backend.address,
        frame_start=101,
        frame_offset=off,
        scene_start=101,
        scene_end=101 + T - off - 1,
        prefs={"frames_via": "PIXELS"},
    )
    assert out["steps"][-1]["result"] == ["FINISHED"], out["steps"][-1]
    anchors = [np.array([[key, *markers(out, f"p{n}")[key + 1][:2]]]) for n in pts]
    ref = reference(rgbs, anchors, direction="backward")
    for j, n in enumerate(pts):
        got = markers(out, f"p{n}")
        assert sorted(got) == list(range(1, key + 2))  # backward only: clip frames 1..key+1
        xy = check_markers(got, range(1, key + 2), ref.xy[: key + 1, j])
        err = np.linalg.norm(xy - shot["trajs"][off : off + key + 1, n], axis=1)
        assert np.median(err[shot["visible"][off : off + key + 1, n]]) < ON_FEATURE_PX


@pytest.mark.parametrize("movie", ["plate.avi", "plate.mp4"])
def test_movie_clip_read_by_the_backend_and_occlusion_choice(tmp_path, extension_zip, shot, backend, reference, movie):
    from pipstrack.io.frames import open_frames

    src = open_frames(shot["dir"] / movie)  # what the backend decodes (lossy for MP4)
    decoded = np.stack([src.read(i) for i in range(len(src))])
    pts = [1, 2, 3]
    steps = keyframe_steps(shot, pts, 0) + [
        {"op": "select", "tracks": [f"p{n}" for n in pts]},
        {"op": "set", "name": "occlusion", "value": "DISABLE"},
        {"op": "pipstrack.track_markers", "args": {"direction": "FORWARD"}},
        {"op": "dump"},
        {"op": "set", "name": "occlusion", "value": "KEEP"},
        {"op": "pipstrack.apply_occlusion"},
    ]
    out = run_blender(tmp_path, extension_zip, shot["dir"] / movie, steps, address=backend.address)
    assert out["clip"]["source"] == "MOVIE" and out["clip"]["duration"] == T
    assert out["steps"][len(pts) + 2]["result"] == ["FINISHED"]
    disabled = out["steps"][len(pts) + 3]["result"]
    anchors = [np.array([[0, *markers(out, f"p{n}")[1][:2]]]) for n in pts]
    ref = reference(decoded, anchors, direction="forward")
    n_muted = 0
    for j, n in enumerate(pts):
        got = {f: (x, y, mute, keyed) for f, x, y, mute, keyed in disabled["tracks"][f"p{n}"]}
        check_markers(got, range(1, T + 1), ref.xy[:, j])
        inside = np.array([0 <= x <= W - 1 and 0 <= y <= H - 1 for x, y in ref.xy[:, j]])
        mutes = np.array([got[f][2] for f in range(1, T + 1)])
        np.testing.assert_array_equal(
            mutes[inside], ~ref.visible[inside, j]
        )  # disabled exactly where PIPs says occluded
        n_muted += mutes[inside].sum()
        conf = disabled["store"][f"p{n}"]["confidence"]
        np.testing.assert_allclose(conf, ref.confidence[1:, j], atol=1e-4)
        kept = markers(out, f"p{n}")
        assert not any(
            kept[f][2] for f in range(1, T + 1) if inside[f - 1]
        )  # KEEP: estimates enabled again, no re-tracking
        assert [kept[f][:2] for f in kept] == [got[f][:2] for f in got]
    assert n_muted > 0  # the bar crossing the shot does occlude some of these points


def test_grid_then_track_and_cancel_restores(tmp_path, extension_zip, shot, backend):
    steps = [
        *grid_steps(4, 3),
        {"op": "dump"},
        {"op": "cancel_run"},
        {"op": "dump"},
        {"op": "pipstrack.track_markers"},
    ]
    out = run_blender(
        tmp_path, extension_zip, shot["dir"] / "plate.1001.png", steps, address=backend.address, prefs={"iters": 8}
    )
    grid = out["steps"][4]["result"]["tracks"]
    assert len(grid) == 12 and all(len(m) == 1 and m[0][0] == 1 and m[0][4] for m in grid.values())
    xs = sorted({round(m[0][1], 3) for m in grid.values()})
    np.testing.assert_allclose(xs, (np.arange(4) + 0.5) * W / 4 - 0.5, atol=1e-3)  # evenly spread, half-cell margin
    cancel = out["steps"][5]["result"]
    assert cancel["state"] == "cancelled"
    if cancel["during"] is not None:  # markers appeared while tracking ran...
        assert max(len(m) for m in cancel["during"]["tracks"].values()) > 1
    assert out["steps"][6]["result"]["tracks"] == grid  # ...and cancelling put every track back exactly
    assert out["steps"][7]["result"] == ["FINISHED"]
    assert all(len(m) == T for m in out["final"]["tracks"].values())


def test_backend_down_or_killed_mid_job_leaves_tracks_unchanged(tmp_path, extension_zip, shot):
    steps = keyframe_steps(shot, [0, 1], 4) + [
        {"op": "marker", "track": "p0", "frame": 15, "x": 50.0, "y": 60.0},
        {"op": "select", "tracks": ["p0", "p1"]},
        {"op": "dump"},
        {"op": "pipstrack.track_markers"},
    ]
    nobody = f"tcp://127.0.0.1:{free_port()}"
    out = run_blender(tmp_path, extension_zip, shot["dir"] / "plate.1001.png", steps, address=nobody)
    res = out["steps"][-1]["result"]
    assert "error" in res and "not answering" in res["error"], res
    assert out["final"]["tracks"] == out["steps"][-2]["result"]["tracks"]

    b = Backend(tmp_path)
    try:
        grid = [
            {"op": "marker", "track": f"g{i}", "frame": 1, "x": 20.0 + 12 * (i % 15), "y": 20.0 + 12 * (i // 15)}
            for i in range(60)
        ]
        steps = grid + [
            {"op": "select", "tracks": [f"g{i}" for i in range(60)]},
            {"op": "dump"},
            {"op": "kill_after", "pid": b.proc.pid, "delay": 1.0},
            {"op": "pipstrack.track_markers"},
        ]
        out = run_blender(
            tmp_path, extension_zip, shot["dir"] / "plate.1001.png", steps, address=b.address, prefs={"iters": 32}
        )
        res = out["steps"][-1]["result"]
        assert "error" in res and "not answering" in res["error"], res
        assert b.proc.wait(5) == -signal.SIGKILL
        assert out["final"]["tracks"] == out["steps"][-3]["result"]["tracks"]
        assert out["final"]["store"] == {}
    finally:
        b.kill()


def test_readme_demo_round_trip(tmp_path):
    """`./dev.sh demo` runs tools/demo.py: Blender + backend + sample clip, .blend and preview out."""
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "demo.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for name in ("pipstrack-demo.blend", "preview.mp4", "still.png", "accuracy.json"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.rglob("*.zip")), "the demo leaves no extension zip (without its wheels) for a user to install"
    acc = json.loads((out / "accuracy.json").read_text())
    markers_doc = json.loads((out / "blender_markers.json").read_text())
    assert len(markers_doc["tracks"]) == 10 and all(len(m) == 48 for m in markers_doc["tracks"].values())
    assert acc["median_err_visible"] < ON_FEATURE_PX  # the number itself is in the README and docs/model.md
    worst = acc["worst_err_visible_per_track"]  # medians hide lost tracks: every track is judged
    print("\ndemo through Blender: worst error on visible frames per track", worst)
    assert len(worst) == 10 and sum(w < 3.1 for w in worst.values()) >= 9  # today feature04 (3.1 px) is the exception
    assert acc["silent_tracks"] == 0  # no track far off where its marker is enabled
    assert acc["lost_tracks_list"] == [n for n, w in worst.items() if w > 8.0] and len(acc["lost_tracks_list"]) <= 1
    # A point that is never seen again (behind the pole until the end: feature01, feature04) ends
    # as disabled markers, even with occlusion "keep estimates"; the others end enabled.
    from pipstrack.datasets.sample import load_ground_truth

    hidden_at_end = ~load_ground_truth()["visible"][-1]
    for n, name in enumerate(sorted(markers_doc["tracks"])):
        last = sorted(markers_doc["tracks"][name])[-1]
        assert last[3] == bool(hidden_at_end[n]), (name, last)
    assert hidden_at_end.sum() == 2
    still = cv2.imread(str(out / "still.png"))
    assert still.shape == (540, 960, 3)  # the plate at twice its size, truth and errors drawn on it


@pytest.mark.parametrize("kind", ["exr_half_pixels", "png16_files"])
def test_linear_exr_and_16bit_png_plates(tmp_path, extension_zip, shot, backend, reference, kind):
    """OpenEXR half (linear light) decoded by Blender and sent as float16, and 16-bit PNG read by
    the backend: both reach the network exactly as the tracker itself would show them."""
    import OpenEXR

    from pipstrack.conventions import display_transform

    srgb = shot["rgbs"].astype(np.float32) / 255.0
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4).astype(np.float16)
    d = tmp_path / kind
    d.mkdir()
    for i in range(T):
        if kind.startswith("exr"):
            chans = {c: np.ascontiguousarray(linear[i, ..., k]) for k, c in enumerate("RGB")}
            OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, chans).write(
                str(d / f"lin.{i + 1:04d}.exr")
            )
        else:
            cv2.imwrite(
                str(d / f"deep.{i + 1:04d}.png"),
                cv2.cvtColor(shot["rgbs"][i].astype(np.uint16) * 257, cv2.COLOR_RGB2BGR),
            )
    if kind.startswith("exr"):
        first, prefs, seen = (
            d / "lin.0001.exr",
            {"frames_via": "PIXELS"},
            np.stack([display_transform(f.astype(np.float32)) for f in linear]),
        )
    else:
        first, prefs, seen = d / "deep.0001.png", {"frames_via": "FILES"}, shot["rgbs"]
    pts = [0, 2]
    steps = keyframe_steps(shot, pts, 0) + [
        {"op": "select", "tracks": ["p0", "p2"]},
        {"op": "pipstrack.track_markers", "args": {"direction": "FORWARD"}},
    ]
    out = run_blender(tmp_path, extension_zip, first, steps, address=backend.address, prefs=prefs)
    assert out["steps"][-1]["result"] == ["FINISHED"], out["steps"][-1]
    anchors = [np.array([[0, *markers(out, f"p{n}")[1][:2]]]) for n in pts]
    ref = reference(seen, anchors, direction="forward")
    for j, n in enumerate(pts):
        check_markers(markers(out, f"p{n}"), range(1, T + 1), ref.xy[:, j])


def test_a_failure_while_writing_markers_restores_the_tracks(tmp_path, extension_zip, shot, backend):
    """Nothing half-written: if writing the markers fails midway (here the second track raises),
    the run restores every track and reports the error instead of crashing."""
    steps = keyframe_steps(shot, [0, 1, 2], 5) + [
        {"op": "select", "tracks": ["p0", "p1", "p2"]},
        {"op": "dump"},
        {"op": "break_writer", "after": 2},
        {"op": "pipstrack.track_markers"},
    ]
    out = run_blender(
        tmp_path, extension_zip, shot["dir"] / "plate.1001.png", steps, address=backend.address, prefs={"iters": 2}
    )
    res = out["steps"][-1]["result"]
    assert "error" in res and "simulated failure" in res["error"] and "tracks restored" in res["error"], res
    assert out["final"]["tracks"] == out["steps"][-3]["result"]["tracks"] and out["final"]["store"] == {}


def test_render_box_with_curve_keys(tmp_path, extension_zip, shot):
    """A backend that only accepts allowed CurveZMQ keys: the add-on with the keys folder tracks
    (frames sent as pixels, as to a render box); without keys it gets a clear message, tracks unchanged."""
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "pipstrack", "keys", str(keys)], check=True, capture_output=True)
    b = Backend(tmp_path, "--keys", str(keys), keys=keys)
    try:
        steps = keyframe_steps(shot, [0], 0) + [
            {"op": "select", "tracks": ["p0"]},
            {"op": "check_backend"},
            {"op": "pipstrack.track_markers", "args": {"direction": "FORWARD"}},
        ]
        out = run_blender(
            tmp_path,
            extension_zip,
            shot["dir"] / "plate.1001.png",
            steps,
            address=b.address,
            prefs={"keys_dir": str(keys), "frames_via": "PIXELS"},
        )
        assert out["steps"][-2]["result"]["status"].startswith("pipstrack 0.")  # Check Backend
        assert out["steps"][-1]["result"] == ["FINISHED"]
        assert len(markers(out, "p0")) == T
        out = run_blender(tmp_path, extension_zip, shot["dir"] / "plate.1001.png", steps, address=b.address)
        assert out["steps"][-2]["result"]["status"].startswith("not reachable")  # no keys: no answer
        res = out["steps"][-1]["result"]
        assert "error" in res and "not answering" in res["error"], res
        assert markers(out, "p0") == {1: markers(out, "p0")[1]}  # only the keyframe: nothing written
    finally:
        b.kill()


def test_export_from_blender_to_nuke_and_after_effects(tmp_path, extension_zip, shot):
    """Markers exported by the add-on (the same writers as `pipstrack export`), parsed back:
    frames are the sequence's file numbers, positions convert exactly."""
    from test_export import read_ae, read_nk

    pts = [0, 1, 2, 3]
    steps = [
        {
            "op": "marker",
            "track": f"p{n}",
            "frame": i + 1,
            "x": float(shot["trajs"][i, n, 0]),
            "y": float(shot["trajs"][i, n, 1]),
            "keyed": i == 0,
            "mute": not shot["visible"][i, n],
        }
        for n in pts
        for i in range(T)
    ]
    nk, ae = tmp_path / "shot.nk", tmp_path / "shot.txt"
    steps += [
        {"op": "select", "tracks": [f"p{n}" for n in pts]},
        {"op": "pipstrack.export_tracks", "args": {"filepath": str(nk), "fmt": "nk", "corner_pin": True}},
        {"op": "select", "tracks": ["p2"]},
        {"op": "pipstrack.export_tracks", "args": {"filepath": str(ae), "fmt": "ae", "skip_occluded": True}},
        {
            "op": "pipstrack.export_tracks",
            "args": {"filepath": str(tmp_path / "bad.nk"), "fmt": "nk", "corner_pin": True},
        },
    ]
    out = run_blender(tmp_path, extension_zip, shot["dir"] / "plate.1001.png", steps, address="tcp://127.0.0.1:1")
    assert out["steps"][-4]["result"] == ["FINISHED"] and out["steps"][-2]["result"] == ["FINISHED"]
    assert "4 selected tracks" in out["steps"][-1]["result"]["error"] and not (tmp_path / "bad.nk").exists()
    tracks, pin = read_nk(nk.read_text())
    assert sorted(tracks) == [f"p{n}" for n in pts] and set(pin) >= {"to1", "to2", "to3", "to4"}
    for n in pts:
        got = tracks[f"p{n}"]
        assert sorted(got) == list(range(1001, 1001 + T))  # file numbers
        xy = np.array([(x - 0.5, H - y - 0.5) for _, (x, y) in sorted(got.items())])  # Nuke: y up, centres at +0.5
        np.testing.assert_allclose(xy, shot["trajs"][:, n], atol=2e-3)
    _, blocks = read_ae(ae.read_text())
    (pos,) = blocks.values()
    vis = shot["visible"][:, 2]
    assert sorted(pos) == [i for i in range(T) if vis[i]]  # AE: frames from the first, occluded ones skipped
    np.testing.assert_allclose([np.subtract(pos[i], 0.5) for i in sorted(pos)], shot["trajs"][vis, 2], atol=2e-3)


# -- the UI path: modal ticks, undo, file load, a busy Blender, Check Backend ---------------------
TICK_LIMIT_S = 0.030  # no timer tick may hold Blender's UI longer than this


def assert_ticks_within_budget(res):
    """99 % of the ticks under the limit, in their own work (CPU time of Blender's thread) and in
    wall time, and none over twice the limit in its own work. Not every tick: on this 2-core
    machine the backend tracks beside Blender and the OS preempts a tick now and then (once in six
    runs a 107 ms wall-time tick with 13 ms of its own work), and once in a full-suite run one tick
    of 330 counted 32.1 ms of its own work (CPU time includes the kernel's, page faults too) where
    three runs of the same test alone stayed under 16.5 ms. A tick over the limit prints what it
    was doing (the slow-tick record: queued writes, collections, page faults). While a run goes
    on, a full collection of Python's cycle collector (16-50 ms in this Blender, the cause of a
    54 ms tick once) no longer scans the objects that existed before the run, so it costs a tick
    a fraction of that."""
    cpu, wall = np.array(res["cpu"]), np.array(res["ticks"])
    over = [s for s in res["slow"] if s["cpu"] >= TICK_LIMIT_S or s["wall"] >= TICK_LIMIT_S]
    if over:
        print("ticks over the limit:", json.dumps(over))
    assert np.percentile(cpu, 99) < TICK_LIMIT_S and cpu.max() < 2 * TICK_LIMIT_S, (tick_summary(res), over)
    assert np.percentile(wall, 99) < TICK_LIMIT_S, (tick_summary(res), over)
    assert res["frozen_during"] > 0 and res["frozen_after"] == 0, res
    assert res["collection_during_run_s"] < 0.25 * res["full_collection_s"], res


def lan_address():
    """This machine's address on its network (what a render box's address looks like), or None."""
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.123", 9))  # nothing is sent: this picks the outgoing interface
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def tick_summary(res):
    ticks, cpu = np.array(res["ticks"]) * 1000, np.array(res["cpu"]) * 1000
    begin = 1000 * res["begin_s"]
    return (
        f"{len(ticks)} ticks, wall median {np.median(ticks):.1f} ms, 99th percentile "
        f"{np.percentile(ticks, 99):.1f} ms, max {ticks.max():.1f} ms; CPU max {cpu.max():.1f} ms; "
        f"begin {begin:.1f} ms; "
        f"full collection {1000 * res['full_collection_s']:.1f} ms, during the run "
        f"{1000 * res.get('collection_during_run_s', float('nan')):.1f} ms"
    )


def test_modal_ticks_under_30ms_sending_4k_float_exr_to_a_render_box(tmp_path, extension_zip, shot):
    """A 4K half-float EXR plate, a backend on this machine's network address with CurveZMQ keys (a
    render box): AUTO sends the files' bytes, read on a helper thread, so no modal tick of the
    operator, from the first to the last marker written, holds the UI more than 30 ms. With
    Blender's online access off, the same address is refused with a clear message."""
    import OpenEXR

    ip = lan_address()
    if ip is None:
        pytest.skip("no network interface besides loopback")
    plate = tmp_path / "plate4k"
    plate.mkdir()
    for i, img in enumerate(shot["rgbs"][:6]):
        big = cv2.resize(img, (3840, 2160), interpolation=cv2.INTER_CUBIC)
        lin = np.ascontiguousarray(((big / 255.0) ** 2.2).astype(np.float16))
        OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION}, {"RGB": lin}).write(str(plate / f"plate.{1001 + i}.exr"))
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "pipstrack", "keys", str(keys)], check=True, capture_output=True)
    b = Backend(tmp_path, "--keys", str(keys), keys=keys, bind=f"tcp://{ip}:{free_port()}")
    try:
        steps = [
            *grid_steps(4, 4),
            {"op": "modal_run"},
        ]
        common = dict(address=b.address, prefs={"keys_dir": str(keys), "working_size": 256})
        out = run_blender(tmp_path, extension_zip, plate / "plate.1001.exr", steps, online_access=True, **common)
        res = out["steps"][-1]["result"]
        print("\n4K EXR to a render box:", tick_summary(res))
        assert res["returned"] == ["FINISHED"], res["reports"]
        assert_ticks_within_budget(res)
        assert res["begin_s"] < TICK_LIMIT_S, tick_summary(res)
        assert len(out["final"]["tracks"]) == 16 and all(len(m) == 6 for m in out["final"]["tracks"].values())
        assert res["active_runs"] == 0
        out = run_blender(tmp_path, extension_zip, plate / "plate.1001.exr", steps, online_access=False, **common)
        res = out["steps"][-1]["result"]
        assert not res["started"] and "online access is off" in res["reports"][-1][1], res
    finally:
        b.kill()


@pytest.fixture(scope="module")
def long_plate(tmp_path_factory):
    """A 500-frame 128x72 PNG sequence (a photo under a slow camera move)."""
    from pipstrack.datasets.sample import homography_clip
    from pipstrack.evaluation.harness import load_photo

    clip = homography_clip(load_photo("astronaut"), 500, (72, 128), seed=3, points=4, strength=0.3)
    d = tmp_path_factory.mktemp("long")
    for i, img in enumerate(clip["rgbs"]):
        cv2.imwrite(str(d / f"long.{i + 1:04d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return d / "long.0001.png"


@pytest.fixture(scope="module")
def tiny_backend(tmp_path_factory, tiny_model):  # noqa: F811
    """A real backend with a tiny network: quick, so the ticks measure the add-on."""
    b = Backend(tmp_path_factory.mktemp("tiny"), model=tiny_model)
    yield b
    b.kill()


QUICK = {"iters": 1, "refine": False, "comotion": False, "working_size": 128}


def test_modal_ticks_under_30ms_for_a_16x16_grid_over_500_frames(tmp_path, extension_zip, long_plate, tiny_backend):
    """256 tracks x 500 frames: partial results stream in every second and the final one holds
    128,000 markers; they are written a batch at a time, only where they changed, so no tick
    holds the UI more than 30 ms, and the tracks end complete. (A tiny network keeps the backend
    quick; the ticks measure the add-on.)"""
    steps = [
        *grid_steps(16, 16),
        {"op": "modal_run", "timeout": 400},
    ]
    out = run_blender(
        tmp_path, extension_zip, long_plate, steps, address=tiny_backend.address, prefs=QUICK, timeout=600
    )
    res = out["steps"][-1]["result"]
    print("\n16x16 grid over 500 frames:", tick_summary(res))
    assert res["returned"] == ["FINISHED"], res["reports"]
    assert_ticks_within_budget(res)
    tracks = out["final"]["tracks"]
    assert len(tracks) == 256 and all(len(m) == 500 for m in tracks.values())
    assert res["written"] == 256 * 499


@pytest.mark.parametrize("action", ["undo", "load", "esc"])
def test_undo_file_load_or_esc_while_tracking_stops_the_run_cleanly(
    tmp_path, extension_zip, long_plate, tiny_backend, action
):
    """Markers are appearing when the user undoes, opens a file or presses Esc: the run stops, the
    backend is told, and the tracks are as before (undo, Esc) or as the opened file holds them."""
    steps = [
        *grid_steps(8, 8),
        {"op": "modal_run", "action": action, "path": str(tmp_path / "saved.blend")},
    ]
    out = run_blender(tmp_path, extension_zip, long_plate, steps, address=tiny_backend.address, prefs=QUICK)
    res = out["steps"][-1]["result"]
    assert res["action"] == action, "markers never appeared before the job ended"
    assert any(len(m) > 1 for m in res["during"]["tracks"].values())  # the run had written markers
    assert res["state"] == "cancelled" and res["active_runs"] == 0, res
    assert out["final"]["tracks"] == res["before"]["tracks"]  # as before / as saved: nothing half-written
    want = {"undo": "by undo", "load": "another file was opened", "esc": "cancelled"}[action]
    assert want in res["message"], res["message"]
    end, said = time.monotonic() + 10, f"job {res['job']} cancelled"
    while said not in tiny_backend.log.read_text() and time.monotonic() < end:
        time.sleep(0.2)
    assert said in tiny_backend.log.read_text()  # the backend stopped the job


def test_tracking_survives_a_busy_blender(tmp_path, extension_zip, shot, backend):
    """Blender renders for longer than the backend waits for a silent client (3 s here) while a job
    runs: the client's own thread keeps the heartbeats going, and the job finishes."""
    steps = keyframe_steps(shot, [0, 1], 0) + [
        {"op": "select", "tracks": ["p0", "p1"]},
        {"op": "modal_run", "action": "busy", "seconds": 6.0},
    ]
    out = run_blender(
        tmp_path,
        extension_zip,
        shot["dir"] / "plate.1001.png",
        steps,
        address=backend.address,
        prefs={"frames_via": "PIXELS"},
    )
    res = out["steps"][-1]["result"]
    assert res["action"] == "busy" and res["busy_s"] > 5.0
    assert res["returned"] == ["FINISHED"], res["reports"]
    assert all(len(markers(out, f"p{n}")) == T for n in (0, 1))


def test_check_backend_never_blocks(tmp_path, extension_zip, shot, backend):
    """Check Backend returns at once, and the panel shows the answer when it comes: the version for
    a backend that answers, "not reachable" for an address where nothing listens."""
    steps = [{"op": "check_backend"}]
    out = run_blender(tmp_path, extension_zip, shot["dir"] / "plate.1001.png", steps, address=backend.address)
    res = out["steps"][0]["result"]
    assert res["returned"] == ["FINISHED"] and res["execute_s"] < TICK_LIMIT_S, res
    assert res["status_while_checking"].startswith("checking") and res["status"].startswith("pipstrack 0."), res
    dead = f"tcp://127.0.0.1:{free_port()}"
    out = run_blender(tmp_path, extension_zip, shot["dir"] / "plate.1001.png", steps, address=dead)
    res = out["steps"][0]["result"]
    assert res["execute_s"] < TICK_LIMIT_S and res["status"].startswith("not reachable"), res


def test_tracking_operators_are_not_registered_for_redo(tmp_path, extension_zip, shot):
    """Adjust Last Operation and Repeat Last run ``execute``, the blocking path: the tracking
    operators are not offered there (still one undo step each)."""
    steps = [{"op": "bl_options"}]
    out = run_blender(tmp_path, extension_zip, shot["dir"] / "plate.1001.png", steps, address="tcp://127.0.0.1:9")
    opts = out["steps"][0]["result"]
    for name in ("track_markers", "fill_gaps"):
        assert "REGISTER" not in opts[name] and "UNDO" in opts[name], opts


@pytest.mark.parametrize("fmt", ["JPEG2000", "DPX", "CINEON", "TARGA", "IRIS"])
def test_sequences_in_film_and_other_formats(tmp_path, extension_zip, shot, backend, reference, fmt):
    """Sequences Blender writes: JPEG 2000, DPX, Cineon and Targa files the backend reads itself
    (exactly the in-process tracker on the same files: no decode on Blender's thread), Iris files
    it cannot read, decoded by Blender and sent as pixels even when File Paths is chosen, with a
    warning that says so."""
    steps = keyframe_steps(shot, [0, 1, 2], 0) + [
        {"op": "select", "tracks": ["p0", "p1", "p2"]},
        {"op": "modal_run", "direction": "FORWARD"},
    ]
    out = run_blender(
        tmp_path,
        extension_zip,
        shot["dir"] / "plate.1001.png",
        steps,
        address=backend.address,
        convert=fmt,
        prefs={"frames_via": "FILES"},
    )
    res = out["steps"][-1]["result"]
    assert res["returned"] == ["FINISHED"], res["reports"]
    suffix = {"JPEG2000": ".jp2", "DPX": ".dpx", "CINEON": ".cin", "TARGA": ".tga", "IRIS": ".rgb"}[fmt]
    assert out["converted"].endswith(suffix)
    if fmt != "IRIS":
        from pipstrack.io.frames import open_frames

        assert not any("cannot decode" in r[1] for r in res["reports"]), res["reports"]
        frames = open_frames(out["converted"])
        rgb = np.stack([frames.read(i) for i in range(len(frames))])
        ref = reference(rgb, np.array([[0, *shot["trajs"][0, n]] for n in (0, 1, 2)]))
        for j, n in enumerate((0, 1, 2)):
            got = markers(out, f"p{n}")
            check_markers(got, range(1, T + 1), ref.xy[:, j])
    else:
        assert any("cannot decode .rgb" in r[1] for r in res["reports"]), res["reports"]
        for n in (0, 1, 2):
            got = markers(out, f"p{n}")
            xy = np.array([got[f][:2] for f in range(1, T + 1)])
            vis = shot["visible"][:, n]
            err = np.linalg.norm(xy - shot["trajs"][:, n], axis=-1)[vis]
            assert len(got) == T and np.median(err) < ON_FEATURE_PX, err


def test_blenders_strict_validator_accepts_the_extension(extension_zip):
    """What `blender --command extension validate` (and so `extension build` and the extensions
    platform) runs: the validator that ships inside Blender, on the zip as built."""
    import bpy

    validator = Path(bpy.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    r = subprocess.run([sys.executable, str(validator), "validate", str(extension_zip)], capture_output=True, text=True)
    assert r.returncode == 0 and "Success" in r.stdout, r.stdout + r.stderr


def test_one_license_story(extension_zip):
    """The extension is GPL-3.0-or-later (as Blender requires of add-ons) and carries the licence
    text; the backend states its own (MIT) and the repository says which part is which."""
    import tomllib
    import zipfile

    with zipfile.ZipFile(extension_zip) as z:
        manifest = tomllib.loads(z.read("blender_manifest.toml").decode())
        text = z.read("LICENSE").decode()
    assert manifest["license"] == ["SPDX:GPL-3.0-or-later"]
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 3" in text
    root = (ROOT / "LICENSE").read_text()
    assert "MIT License" in root and "GPL" in root and "addon/" in root
    assert 'license = {text = "MIT"}' in (ROOT / "pyproject.toml").read_text()
