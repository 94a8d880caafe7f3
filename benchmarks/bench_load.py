"""Tracking speed with another process busy on a core (Blender beside a local backend, a render on
a render box) against an idle machine, for each --threads choice, in one run (ratios, not absolute
times, are the result: docs/performance.md).

    .venv/bin/python benchmarks/bench_load.py            # the sample clip, 10 points x 48 frames
    .venv/bin/python benchmarks/bench_load.py --repeat 3
    .venv/bin/python benchmarks/bench_load.py --busy 2   # every core of this machine busy (a render)

Each measurement is a fresh `pipstrack track` process on the bundled sample; "busy" runs one
busy-looping Python process beside it for the whole run. Needs nothing else running.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(threads: str, busy: int, out: Path) -> float:
    """Seconds of one whole `pipstrack track` process, with ``busy`` busy-looping processes beside it."""
    from pipstrack.datasets.sample import sample_clip_dir, sample_points_file

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    cmd = [sys.executable, "-m", "pipstrack", "track", str(sample_clip_dir()), "--points", str(sample_points_file())]
    cmd += ["--out", str(out), "--threads", threads, "--device", "cpu"]
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        return time.perf_counter() - t0
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2, help="runs per cell; the fastest counts")
    ap.add_argument("--threads", default="auto,2,1", help="comma-separated --threads values")
    ap.add_argument("--busy", type=int, default=1, help="busy-looping processes beside it (a render: every core)")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for threads in args.threads.split(","):
            idle = min(one_run(threads, 0, Path(tmp) / "t.json") for _ in range(args.repeat))
            busy = min(one_run(threads, args.busy, Path(tmp) / "t.json") for _ in range(args.repeat))
            rows.append((threads, idle, busy))
    print(f"# {os.cpu_count()} cores; whole `pipstrack track` process on the sample clip (10 points x 48 frames)")
    beside = "one core busy" if args.busy == 1 else f"{args.busy} busy processes"
    print(f"| --threads | idle s | {beside} s | busy / idle |")
    print("|---|---:|---:|---:|")
    for threads, idle, busy in rows:
        print(f"| {threads} | {idle:.2f} | {busy:.2f} | {busy / idle:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
