"""How long ``pipstrack --help`` takes as a whole process (issue: under 0.5 s), and the
heaviest imports it pays for.

    .venv/bin/python benchmarks/bench_startup.py [--repeat 7]

Prints the minimum and median wall time of ``pipstrack --help`` and of ``python -c pass`` (the
interpreter's own start, for scale) and the five slowest imports of the command line (``-X
importtime``). tests/test_layout.py checks that the help loads no heavy library.
"""

import argparse
import re
import statistics
import subprocess
import sys
import time


def wall(cmd, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    help_cmd = [sys.executable, "-m", "pipstrack", "--help"]
    for name, cmd in (("python -c pass", [sys.executable, "-c", "pass"]), ("pipstrack --help", help_cmd)):
        t = wall(cmd, args.repeat)
        print(f"{name:18s} min {min(t):.3f} s  median {statistics.median(t):.3f} s  ({args.repeat} runs)")
    r = subprocess.run([sys.executable, "-X", "importtime", *help_cmd[1:]], capture_output=True, text=True)
    rows = []
    for line in r.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s+(\S.*)$", line)
        if m:
            rows.append((int(m.group(2)), m.group(3).strip()))
    print("slowest imports (ms, each including what it imports):")
    for us, name in sorted(rows, reverse=True)[:5]:
        print(f"  {us / 1000:7.1f}  {name}")


if __name__ == "__main__":
    main()
