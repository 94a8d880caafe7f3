"""The README's first command: the whole round trip, headless.

Builds the Blender extension, starts `pipstrack serve` on loopback with the shipped default
model, opens the bundled sample clip in Blender (bpy), keys markers, tracks them through the
backend over ZeroMQ, saves the .blend with the tracks, and draws the markers Blender holds
over the plate (preview.mp4, still.png) with their accuracy against the clip's exact ground truth.

    python tools/demo.py [--out pipstrack-demo]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def wait_for(address: str, proc, log: Path, timeout: float = 120.0) -> dict:
    from pipstrack.wire.client import TrackingError, ping

    end = time.monotonic() + timeout
    while True:
        try:
            return ping(address, timeout=1.0)
        except TrackingError:
            if proc.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"the backend did not start:\n{log.read_text()[-2000:]}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("pipstrack-demo"))
    args = ap.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    sys.path.insert(0, str(ROOT / "tools"))
    from build_extension import build

    # The demo's Blender uses the venv's pyzmq, so its zip has no wheels: it is built in a temporary
    # folder and removed, never left beside the results where a user might install it.
    build_dir = Path(tempfile.mkdtemp(prefix="pipstrack-demo-ext-"))
    zip_path = build(build_dir, "none")

    address, log = free_address(), out / "backend.log"
    backend = subprocess.Popen(
        [sys.executable, "-m", "pipstrack", "serve", "--bind", address],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),
    )
    try:
        info = wait_for(address, backend, log)
        print(
            f"backend at {address}: pipstrack {info['server']}, "
            f"model {Path(info['model']).name}, device {info['device']}"
        )
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, str(ROOT / "tools" / "blender_session.py"), str(zip_path), address, str(out)], check=True
        )
        print(f"Blender round trip took {time.perf_counter() - t0:.1f} s")
    finally:
        backend.terminate()
        backend.wait(30)
        shutil.rmtree(build_dir, ignore_errors=True)
    report(out)
    return 0


def report(out: Path) -> None:
    """Draws what Blender holds and scores it against the sample's ground truth."""
    from pipstrack.datasets import sample
    from pipstrack.evaluation.sample_report import report as score_sample
    from pipstrack.io.frames import open_frames
    from pipstrack.io.preview import write_preview

    doc = json.loads((out / "blender_markers.json").read_text())
    truth = sample.load_ground_truth()
    frames = [int(f) for f in truth["frame_numbers"]]
    names = sorted(doc["tracks"])
    T, N = len(frames), len(names)
    xy, vis = np.full((T, N, 2), np.nan), np.zeros((T, N), bool)
    for n, name in enumerate(names):
        for f, x, y, mute in doc["tracks"][name]:
            if f in frames:
                xy[frames.index(f), n] = (x, y)
                vis[frames.index(f), n] = not mute
    # the sample's ground truth lists its points in points.txt order (feature01..)
    m, still_frame = score_sample(xy, vis, out, drawn_visible=truth["visible"])
    print(
        "markers in Blender against the ground truth: "
        f"median error {m['median_err_visible']:.2f} px on visible frames, "
        f"{m['median_err_occluded']:.2f} px behind the occluder; delta_avg {m['delta_avg']:.3f}"
    )
    write_preview(
        open_frames(sample.sample_clip_dir()), xy.astype(np.float32), np.ones((T, N), bool), out / "preview.mp4"
    )
    print(
        f"wrote {out / 'pipstrack-demo.blend'}, {out / 'preview.mp4'} and {out / 'still.png'} (frame {still_frame}: "
        "rings are points PIPs estimated behind the occluder)"
    )


if __name__ == "__main__":
    sys.exit(main())
