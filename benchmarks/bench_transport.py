"""How fast frames travel to the tracking service, and what a job through it costs.

1. Raw transport: DEALER -> ROUTER over tcp loopback, frame chunks as the client sends them
   (zero-copy), the receiver only looks at the sizes: frames/s and MB/s, 1080p uint8 and 4K float16.
2. A whole job through `pipstrack serve` (a subprocess) vs the same `Tracker.track` in process,
   same model and options: the difference is the service's overhead (upload, conversion, resize).

    .venv/bin/python benchmarks/bench_transport.py [--frames 48] [--model PATH] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from pipstrack import protocol as P  # noqa: E402
from pipstrack.wire.client import Connection, TrackingError, ping  # noqa: E402


def raw_transport(shape, dtype, frames, chunk):
    """Frames/s and MB/s of zero-copy chunks DEALER -> ROUTER on loopback (receiver in a thread)."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    img = np.ones(shape, dtype)
    got = []

    def sink():
        n = 0
        while n < frames:
            parts = router.recv_multipart(copy=False)
            n += len(parts) - 2
        got.append(time.perf_counter())

    t = threading.Thread(target=sink)
    t.start()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.SNDHWM, 2)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    time.sleep(0.2)
    t0 = time.perf_counter()
    for lo in range(0, frames, chunk):
        n = min(chunk, frames - lo)
        dealer.send_multipart([P.header(P.FRAMES, "b", first=lo, count=n)] + [img] * n, copy=False)
    t.join()
    dt = got[0] - t0
    dealer.close(), router.close(), ctx.term()
    return frames / dt, frames * img.nbytes / dt / 1e6


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_vs_in_process(model_path, shape, dtype, frames, points, working_size):
    import torch

    from pipstrack import Tracker, load_model
    from pipstrack.io.frames import display_transform

    rng = np.random.default_rng(0)
    base = (rng.random((shape[0] // 8 + 16, shape[1] // 8 + 16, 3)) * 255).astype(np.uint8)
    import cv2

    big = cv2.resize(base, (shape[1] + 128, shape[0] + 128), interpolation=cv2.INTER_CUBIC)
    # a slow back-and-forth camera move, any number of frames
    offs = [(int(64 + 60 * np.sin(t / 11)), int(64 + 60 * np.cos(t / 17))) for t in range(frames)]
    clip = [big[oy : oy + shape[0], ox : ox + shape[1]] for ox, oy in offs]
    if dtype == "float16":
        clip = [((c.astype(np.float32) / 255) ** 2.2).astype(np.float16) for c in clip]
    H, W = shape
    q = np.stack([np.zeros(points), rng.uniform(8, W - 8, points), rng.uniform(8, H - 8, points)], 1)

    torch.set_num_threads(1)
    tracker = Tracker(load_model(model_path), device="cpu", working_long_side=working_size)
    t0 = time.perf_counter()
    src = np.stack([display_transform(c) if dtype == "float16" else c for c in clip])
    ref = tracker.track(src, q)
    t_local = time.perf_counter() - t0
    del src

    address = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipstrack",
            "serve",
            "--bind",
            address,
            "--model",
            str(model_path),
            "--device",
            "cpu",
            "--log-level",
            "warning",
        ],
        env=env,
    )
    try:
        end = time.monotonic() + 60
        while True:
            try:
                ping(address, timeout=1)
                break
            except TrackingError:
                if time.monotonic() > end:
                    raise
        conn = Connection(address)
        t0 = time.perf_counter()
        job = conn.submit(
            lambda i: clip[i],
            q,
            frame_count=frames,
            frame_shape=shape,
            dtype=dtype,
            working_size=working_size,
            chunk=1 if dtype == "float16" else 4,
        )
        res = job.wait(600)
        t_service = time.perf_counter() - t0
        conn.close()
    finally:
        proc.terminate()
        proc.wait(30)
    diff = float(np.nanmax(np.abs(res["xy"] - ref.xy)))
    return t_local, t_service, diff


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--points", type=int, default=16)
    ap.add_argument("--model", default=None, help="weights for the job comparison (default: the shipped model)")
    ap.add_argument(
        "--jobs", default="1080p,4k", help="which job comparisons: 1080p, 4k or both (4K keeps the clip in RAM)"
    )
    ap.add_argument("--no-raw", action="store_true", help="skip the raw transport table")
    args = ap.parse_args()
    from pipstrack.engine.weights import DEFAULT_MODEL

    model = args.model or str(DEFAULT_MODEL)
    if not args.no_raw:
        print("| payload | chunk | frames/s | MB/s |\n|---|---:|---:|---:|")
    for label, shape, dtype in (
        ("1080p uint8", (1080, 1920, 3), np.uint8),
        ("4K float16", (2160, 3840, 3), np.float16),
    ):
        for chunk in () if args.no_raw else (1, 4):
            fps, mbs = raw_transport(shape, dtype, args.frames, chunk)
            print(f"| {label} | {chunk} | {fps:.0f} | {mbs:.0f} |")
    print(
        f"\n| job ({args.frames} frames, {args.points} points, working size 512) "
        "| in process | through the service | overhead | max difference |"
    )
    print("|---|---:|---:|---:|---:|")
    jobs = {"1080p": ("1080p uint8", (1080, 1920), "uint8"), "4k": ("4K float16 linear", (2160, 3840), "float16")}
    for label, shape, dtype in (jobs[j.strip().lower()] for j in args.jobs.split(",")):
        t_local, t_service, diff = service_vs_in_process(model, shape, dtype, args.frames, args.points, 512)
        print(
            f"| {label} | {t_local:.2f} s | {t_service:.2f} s | "
            f"{t_service - t_local:+.2f} s ({100 * (t_service / t_local - 1):+.1f}%) | {diff:.1e} px |"
        )


if __name__ == "__main__":
    main()
