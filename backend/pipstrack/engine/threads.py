"""How many CPU threads to compute with, decided by what the machine has free right now.

Why: torch's thread pool waits for all its threads at every operation, so when another process
(Blender beside a local backend, a render on a render box) holds a core, a pool as wide as the
machine stalls on the thread that does not get its core: on the 2-core development machine the
sample clip took 17.1 s with one core busy against 5.2 s idle, while one thread took 7.2 s either
way (docs/performance.md). So the tracker uses as many threads as there are cores that no other
process is using, measured from /proc/stat (Linux) minus this process's own CPU time, re-checked
between network calls. Elsewhere, or when asked for a fixed count, the count is fixed.

numpy's BLAS (OpenBLAS: the refinement's and co-motion's small matrix products and fits) has a
pool of its own, as wide as the machine, whose threads hand work to each other on every call:
beside another process, even a niced one, each hand-over waits for the scheduler, and the clean
benchmark clip's polish took 39 s instead of 1.2 s (docs/performance.md). Those products are too
small to gain from threads, so wherever the budget is used the BLAS pool gets :data:`BLAS_THREADS`.
"""

from __future__ import annotations

import os
import time

CHECK_EVERY_S = 0.5  # how often the free cores are measured again
BUSY_SHARE = 0.5  # another process using at least half a core takes that core
BLAS_THREADS = 1  # numpy's BLAS pool: its work here is small products (see above)


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, or None where /proc/stat is not there. Time
    spent in niced processes is not busy: low-priority work gives its core up to us."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    free = fields[1] + fields[3] + (fields[4] if len(fields) > 4 else 0)  # nice + idle + iowait
    return sum(fields) - free, sum(fields)


class ThreadBudget:
    """Sets torch's (and OpenCV's) thread count to the cores other processes leave free.

    ``threads``: a fixed count, or None to follow the machine's load (at most ``os.cpu_count()``).
    Call :meth:`adjust` between units of work; it measures at most every ``CHECK_EVERY_S``."""

    def __init__(self, threads: int | None = None):
        self.cores = os.cpu_count() or 1
        self.fixed = None if threads is None else max(1, int(threads))
        self.current = None
        self._last = None  # (wall time, busy jiffies, total jiffies, own CPU seconds)
        limit_blas(BLAS_THREADS)
        self.adjust(force=True)

    def free_cores(self) -> int | None:
        """Cores no other process used since the last call (None until two measurements exist)."""
        now = (time.monotonic(), *(_cpu_jiffies() or (0, 0)), time.process_time())
        last, self._last = self._last, now
        if last is None or now[2] == 0 or now[2] == last[2]:
            return None
        busy_cores = (now[1] - last[1]) / (now[2] - last[2]) * self.cores  # everyone's, in cores
        own_cores = (now[3] - last[3]) / max(now[0] - last[0], 1e-6)
        others = max(0.0, busy_cores - own_cores)
        return max(1, self.cores - int(others + (1.0 - BUSY_SHARE)))

    def adjust(self, force: bool = False) -> int:
        """Sets and returns the thread count to use now."""
        if self.fixed is not None:
            want = self.fixed
        elif not force and self._last is not None and time.monotonic() - self._last[0] < CHECK_EVERY_S:
            return self.current
        else:
            free = self.free_cores()
            # Until a first interval has been measured: one thread. On a loaded machine a pool
            # as wide as the machine stalls from the first operation on (the reading and the
            # classical lead run before any network call), while an idle one loses at most
            # CHECK_EVERY_S of single-threaded work before the next check widens it.
            want = 1 if free is None else free
        if want != self.current:
            import torch

            torch.set_num_threads(want)
            try:
                import cv2

                cv2.setNumThreads(want)
            except ImportError:
                pass
            self.current = want
        return want


def limit_blas(threads: int) -> None:
    """Sets the thread count of numpy's BLAS pool for the rest of the process (OMP_NUM_THREADS,
    OPENBLAS_NUM_THREADS and the like only act before numpy is imported)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")
