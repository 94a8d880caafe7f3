"""The Blender extension end to end, in real Blender (bpy 5.0 as a module, headless).

Each scenario runs tests/blender/driver.py in a fresh process: it installs the extension zip
built by tools/build_extension.py the way Blender installs extensions, opens a generated clip,
places markers and runs the add-on's operators against a real `pipstrack serve` process on
loopback (the shipped default model). The markers are compared with an in-process
``Tracker.track`` on the same frames (the add-on must not change a number on the way) and
with the clip's exact ground truth.
"""
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

pytest.importorskip("bpy")

from pipstrack.client import TrackingError, ping  # noqa: E402
from test_service import free_port  # noqa: E402

ROOT = Path(__file__).parents[1]
DRIVER = ROOT / "tests" / "blender" / "driver.py"
T, H, W = 20, 128, 224
ITERS = 3  # the backend and the reference use the same settings; fewer iterations keep the suite quick


@pytest.fixture(scope="module")
def extension_zip(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, str(ROOT / "tools" / "build_extension.py"), "--out", str(out), "--wheels", "none"],
                   check=True, capture_output=True)
    (zip_path,) = out.glob("*.zip")
    return zip_path


@pytest.fixture(scope="module")
def shot(tmp_path_factory):
    """A photo under a moving camera with a bar crossing it: PNG sequence 1001.. and an MP4-like movie."""
    from pipstrack.eval import load_photo
    from pipstrack.sample import homography_clip

    clip = homography_clip(load_photo("astronaut"), T, (H, W), seed=11, points=6)
    d = tmp_path_factory.mktemp("shot")
    for i, img in enumerate(clip["rgbs"]):
        cv2.imwrite(str(d / f"plate.{1001 + i:04d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    writer = cv2.VideoWriter(str(d / "plate.avi"), cv2.VideoWriter_fourcc(*"FFV1"), 24, (W, H))  # lossless
    for img in clip["rgbs"]:
        writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    writer.release()
    clip["dir"] = d
    return clip


class Backend:
    def __init__(self, tmp):
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.log = Path(tmp) / f"serve-{time.monotonic_ns()}.log"
        env = dict(os.environ, PIPSTRACK_CLIENT_TIMEOUT="3", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "pipstrack", "serve", "--bind", self.address, "--device", "cpu"],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), env=env)
        end = time.monotonic() + 60
        while True:
            try:
                ping(self.address, timeout=1.0)
                return
            except TrackingError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"backend did not start: {self.log.read_text()}")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    b = Backend(tmp_path_factory.mktemp("backend"))
    yield b
    b.kill()


@pytest.fixture(scope="module")
def reference(default_model):
    from pipstrack import Tracker

    def run(frames, anchors, **kw):
        return Tracker(default_model, device="cpu", iters=ITERS, working_long_side=512).track(frames, anchors, **kw)

    return run


def run_blender(tmp_path, zip_path, clip_path, steps, *, address, timeout=300, **spec):
    spec = dict(zip=str(zip_path), clip=str(clip_path), steps=steps,
                prefs={"address": address, "iters": ITERS, **spec.pop("prefs", {})}, **spec)
    sp, op = tmp_path / f"spec-{time.monotonic_ns()}.json", tmp_path / f"out-{time.monotonic_ns()}.json"
    sp.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, str(DRIVER), str(sp), str(op)], capture_output=True, text=True, timeout=timeout)
    assert op.exists(), f"driver died: {proc.stdout[-2000:]} {proc.stderr[-4000:]}"
    out = json.loads(op.read_text())
    assert "exception" not in out, out["exception"]
    assert out["enabled"], out
    return out


def markers(out, name, source="final"):
    """{clip frame: (x, y, mute, keyed)} of one track."""
    return {f: (x, y, mute, keyed) for f, x, y, mute, keyed in out[source]["tracks"][name]}


def keyframe_steps(clip, points, frame_idx):
    """Markers at job index ``frame_idx`` (clip frame frame_idx + 1) on the ground truth."""
    return [{"op": "marker", "track": f"p{n}", "frame": frame_idx + 1, "x": float(clip["trajs"][frame_idx, n, 0]),
             "y": float(clip["trajs"][frame_idx, n, 1])} for n in points]


# -- tests -------------------------------------------------------------------------------------
def test_track_both_directions_from_a_keyframe_matches_the_tracker_and_ground_truth(tmp_path, extension_zip, shot, backend, reference):
    pts = [0, 1, 2, 3]
    key = 6  # keyframes in the middle: tracked backward and forward
    steps = keyframe_steps(shot, pts, key) + [
        {"op": "select", "tracks": [f"p{n}" for n in pts]},
        {"op": "pipstrack.track_markers", "args": {"direction": "BOTH"}},
    ]
    out = run_blender(tmp_path, extension_zip, shot["dir"] / "plate.1001.png", steps, address=backend.address, disable=True)
    assert out["steps"][-1]["result"] == ["FINISHED"]
    assert out["heavy_modules"] == ["cv2"] or out["heavy_modules"] == []  # never torch or the backend package
    # the anchors as Blender stores them (float32 marker positions), so the comparison is exact
    anchors = [np.array([[key, *markers(out, f"p{n}")[key + 1][:2]]]) for n in pts]
    np.testing.assert_allclose([a[0, 1:] for a in anchors], shot["trajs"][key, pts], atol=1e-4)
    ref = reference(shot["rgbs"], anchors)
    errs = []
    for j, n in enumerate(pts):
        got = markers(out, f"p{n}")
        assert sorted(got) == list(range(1, T + 1))  # every clip frame, no more
        assert got[key + 1][3] and not any(got[f][3] for f in got if f != key + 1)  # only the user's keyframe is keyed
        xy = np.array([got[f][:2] for f in range(1, T + 1)])
        np.testing.assert_allclose(xy, ref.xy[:, j], atol=2e-3)  # float32 marker storage
        vis = shot["visible"][:, n]
        errs.append(np.linalg.norm(xy - shot["trajs"][:, n], axis=1)[vis])
    assert np.median(np.concatenate(errs)) < 4.0  # the default model on this shot: see docs/blender.md
    store = out["final"]["store"]
    assert set(store) == {f"p{n}" for n in pts} and len(store["p0"]["frames"]) == T
    # unregistering leaves nothing behind
    gone = out["after_disable"]
    assert not gone["scene_prop"] and not gone["wm_prop"]
    assert "track_menu" not in gone["menu_funcs"]
