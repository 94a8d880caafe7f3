"""Peak memory of a long 4K EXR shot tracked with a 16x16 grid (issue 14: under 4 GB).

Writes a 4K (3840x2160) half-float EXR sequence of a photograph under a slow camera move, then
runs ``pipstrack track`` on it as a user would (a separate process, default options, the shipped
model) with a 16x16 grid on the first frame, and reports that process's peak RSS (from the
kernel's accounting of the child) and its time.

Disk: a 4K EXR is ~25-40 MB, so 1000 distinct frames would take tens of GB. By default
``--distinct 100`` frames are written and the sequence plays them forward and back (ping-pong:
the motion stays continuous) through symbolic links up to ``--frames``; every frame is still
opened, decoded and tracked like any other, so memory behaves as with distinct files.

    .venv/bin/python benchmarks/bench_memory.py --frames 1000 --distinct 100 --dir /tmp/exr4k
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_sequence(folder: Path, frames: int, distinct: int, size=(2160, 3840)) -> Path:
    import OpenEXR

    from pipstrack.datasets.sample import camera_path, fit_photo
    from pipstrack.evaluation.harness import load_photo

    folder.mkdir(parents=True, exist_ok=True)
    H, W = size
    photo = load_photo("astronaut")
    fit = fit_photo(photo, size, margin=1.3)
    mats = camera_path(np.arange(distinct, dtype=np.float64), np.random.default_rng(0), size, strength=0.5) @ fit
    lin = (photo.astype(np.float32) / 255.0) ** 2.2  # display-referred photo to linear light
    for k in range(distinct):
        path = folder / f"src.{k:04d}.exr"
        if not path.exists():
            img = cv2.warpPerspective(lin, mats[k], (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION}, {"RGB": img.astype(np.float16)}).write(str(path))
    period = max(2 * distinct - 2, 1)
    for i in range(frames):
        k = i % period
        k = k if k < distinct else period - k
        link = folder / f"plate.{1001 + i:04d}.exr"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(f"src.{k:04d}.exr")
    return folder / "plate.####.exr"


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT / "backend"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--distinct", type=int, default=100)
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--dir", default="/tmp/pipstrack-exr4k")
    ap.add_argument("--threads", default="auto")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)
    folder = Path(args.dir)
    t0 = time.perf_counter()
    pattern = write_sequence(folder, args.frames, args.distinct)
    written = time.perf_counter() - t0
    H, W = 2160, 3840
    g = args.grid
    out = folder / "tracks.json"
    cmd = [
        sys.executable, "-m", "pipstrack.cli.main", "track", str(pattern), "--grid", f"{g}x{g}",
        "--out", str(out), "--threads", args.threads,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "backend")}
    t1 = time.perf_counter()
    log = folder / "track.log"  # the command's progress as it runs: which stage a long run is in
    with open(log, "w") as err:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
    seconds = time.perf_counter() - t1
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    doc = {
        "frames": args.frames,
        "distinct_frames": args.distinct,
        "size": [H, W],
        "points": g * g,
        "returncode": proc.returncode,
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(peak_mib, 1),
        "write_seconds": round(written, 1),
    }
    print(json.dumps(doc, indent=1))
    if proc.returncode:
        print(log.read_text()[-2000:], file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
