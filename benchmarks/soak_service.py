"""Soak test of `pipstrack serve`: many clients, faults and hostile jobs at once, one table.

    .venv/bin/python benchmarks/soak_service.py [--clients 8] [--jobs 20] [--seed 0]

A real server (subprocess, a tiny network so jobs are quick; `--allow-root` on the test's plate
folder) takes `--clients` concurrent clients of `--jobs` jobs each. Every job is one of: an
honest upload, an honest `paths` job, a cancel at a random moment, a client that closes its
connection mid-upload (killed), a slow reader (does not poll for 3 s), an oversized job, a FIFO,
a device file, a file outside the allowed folder. Half way through the server is killed
(SIGKILL) and started again on the same address. Every job must end in a result, a cancel or an
error; the server must keep answering; its peak RSS is read from /proc. Prints a Markdown table
for docs/reliability.md.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

KINDS = (
    "honest", "paths", "cancel", "killed", "slow_reader", "oversized", "big_result", "fifo", "device", "outside",
)  # fmt: skip
CHUNK_BYTES = 4096  # the server's trajectory chunks in the soak: a 300-point result is 9 messages


def tiny_model(path: Path) -> None:
    import torch

    from pipstrack import Pips, PipsConfig
    from pipstrack.engine.weights import save_model

    torch.manual_seed(0)
    cfg = PipsConfig(encoder_widths=(16, 16, 24, 24), encoder_hidden=32, latent_dim=32, mixer_dim=64, mixer_depth=2)
    save_model(Pips(config=cfg), path)


class ServerProcess:
    def __init__(self, address, model, root, log):
        self.args = [
            sys.executable, "-m", "pipstrack", "serve", "--bind", address, "--device", "cpu", "--model", str(model),
            "--allow-root", str(root), "--threads", "1", "--job-memory-mb", "64",
        ]  # fmt: skip
        self.env = dict(
            os.environ, PIPSTRACK_CLIENT_TIMEOUT="2", OMP_NUM_THREADS="1", PIPSTRACK_CHUNK_BYTES=str(CHUNK_BYTES)
        )
        self.log = log
        self.peak_kb = 0
        self.start()

    def start(self):
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.log, "a"))

    def rss_peak_kb(self) -> int:
        try:
            for line in open(f"/proc/{self.proc.pid}/status"):
                if line.startswith("VmHWM:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
        except OSError:
            pass
        return self.peak_kb

    def kill(self):
        self.rss_peak_kb()
        self.proc.kill()
        self.proc.wait()


def wait_ready(address, timeout=60):
    from pipstrack.wire.client import TrackingError, ping

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            return ping(address, timeout=1.0)
        except TrackingError:
            time.sleep(0.2)
    raise SystemExit(f"no server at {address}")


def one_job(kind, address, frames, paths, hostile, rng):
    """Runs one job of ``kind``; returns its outcome: "result", "cancelled", or an error code."""
    from pipstrack.wire.client import Connection, TrackingError

    q = np.array([[0, 20.0, 20.0], [0, 60.0, 40.0]])
    conn = Connection(address, heartbeat=0.3, timeout=4.0)
    try:
        if kind in ("honest", "cancel", "killed", "slow_reader"):
            job = conn.submit(frames, q, chunk=2)
        elif kind == "paths":
            job = conn.submit(None, q, paths=paths, frame_shape=frames.shape[1:3])
        elif kind == "big_result":  # 300 points: a result in 9 chunks, read late (a slow reader)
            ys, xs = np.meshgrid(np.linspace(8, 64, 15), np.linspace(8, 120, 20), indexing="ij")
            grid = np.column_stack([np.zeros(xs.size), xs.ravel(), ys.ravel()])  # 300 points
            job = conn.submit(frames, grid, chunk=2, partial_interval=0.05)
        elif kind == "oversized":  # 3000 frames of 1080p at working size 1920: far over 64 MB
            job = conn.submit(lambda i: frames[0], q, frame_count=3000, frame_shape=(1080, 1920), dtype="uint8",
                              working_size=1920)  # fmt: skip
        else:
            job = conn.submit(None, q, paths=paths[:-1] + [hostile[kind]], frame_shape=frames.shape[1:3])
        if kind == "cancel":
            end = time.monotonic() + rng.uniform(0.0, 1.0)
            while time.monotonic() < end and not job.done:
                job.poll()
                time.sleep(0.01)
            job.cancel()
        if kind == "killed":
            while job.uploaded[0] < 2 and not job.done:
                job.poll()
                time.sleep(0.01)
            return "killed (closed mid-upload)"
        if kind in ("slow_reader", "big_result"):
            job.poll()
            time.sleep(3.0)
        try:
            got = job.wait(60)
            if kind == "big_result" and not (got["xy"].shape == (len(frames), 300, 2) and np.isfinite(got["xy"]).all()):
                return "result incomplete"
            return "result"
        except TrackingError as e:
            return "cancelled" if e.code == "cancelled" else e.code
    finally:
        conn.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import cv2

    from pipstrack.datasets.sample import homography_clip
    from pipstrack.evaluation.harness import load_photo
    from pipstrack.wire.client import ping

    tmp = Path(tempfile.mkdtemp(prefix="pipstrack-soak-"))
    model, plates, outside = tmp / "tiny.pt", tmp / "plates", tmp / "private"
    plates.mkdir(), outside.mkdir()
    tiny_model(model)
    frames = homography_clip(load_photo("coffee"), 12, (72, 128), seed=2, points=2, strength=0.4)["rgbs"]
    paths = []
    for i, f in enumerate(frames):
        paths.append(str(plates / f"p.{i:04d}.png"))
        cv2.imwrite(paths[-1], cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    os.mkfifo(plates / "pipe.png")
    (outside / "secret.png").write_bytes(open(paths[0], "rb").read())
    hostile = {"fifo": str(plates / "pipe.png"), "device": "/dev/zero", "outside": str(outside / "secret.png")}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    server = ServerProcess(address, model, plates, tmp / "serve.log")
    wait_ready(address)
    outcomes: dict = collections.defaultdict(collections.Counter)
    lock = threading.Lock()
    total = args.clients * args.jobs
    done = [0]
    restarted = threading.Event()

    def client(c):
        rng = random.Random(args.seed * 1000 + c)
        for _ in range(args.jobs):
            kind = rng.choice(KINDS)
            try:
                out = one_job(kind, address, frames, paths, hostile, rng)
            except Exception as e:  # the soak reports it; a crash here is a finding
                out = f"client exception {type(e).__name__}"
            with lock:
                outcomes[kind][out] += 1
                done[0] += 1

    def sampler():
        while not stop.is_set():
            server.rss_peak_kb()
            time.sleep(0.2)

    stop = threading.Event()
    threading.Thread(target=sampler, daemon=True).start()
    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if not restarted.is_set() and done[0] >= total // 2:
            server.kill()  # mid-run: every job in flight is lost with it
            server.start()
            wait_ready(address)
            restarted.set()
        time.sleep(0.1)
    elapsed = time.monotonic() - t0
    alive = ping(address, timeout=5.0)["protocol"]
    stop.set()
    peak = server.rss_peak_kb()
    server.kill()

    print(f"\n{args.clients} clients x {args.jobs} jobs ({total}), {elapsed:.0f} s, server killed and restarted once")
    print(f"after the run the server answers ping (protocol {alive}); peak RSS {peak / 1024:.0f} MiB\n")
    print("| job | count | outcomes |")
    print("|---|---:|---|")
    for kind in KINDS:
        c = outcomes.get(kind, collections.Counter())
        print(f"| {kind} | {sum(c.values())} | {', '.join(f'{k} {v}' for k, v in c.most_common())} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
