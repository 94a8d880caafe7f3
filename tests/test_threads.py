"""The thread budget: a fixed count is kept; 'auto' gives up the cores another process uses."""

import json
import subprocess
import sys
import time

import pytest
import torch

from pipstrack.engine.threads import ThreadBudget


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_fixed_count_is_set_and_kept(restore_threads):
    budget = ThreadBudget(1)
    assert torch.get_num_threads() == 1 and budget.adjust(force=True) == 1


@pytest.mark.skipif(not __import__("os").path.exists("/proc/stat"), reason="the load is read from /proc/stat")
def test_auto_leaves_a_core_to_a_process_that_keeps_it_busy(restore_threads):
    budget = ThreadBudget(None)
    cores = budget.cores
    if cores < 2:
        pytest.skip("one core: nothing to give up")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # the busy loop is running
        budget.adjust(force=True)  # starts a measurement interval
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # this process works too, as while tracking
            torch.ones(256, 256) @ torch.ones(256, 256)
        assert budget.adjust(force=True) == cores - 1
        assert torch.get_num_threads() == cores - 1
    finally:
        hog.kill()
        hog.wait()


def test_the_budget_also_narrows_numpys_blas_pool():
    # In a child process: the limit holds for the rest of the process it is set in.
    code = (
        "import json, numpy, threadpoolctl\n"
        "from pipstrack.engine.threads import ThreadBudget, BLAS_THREADS\n"
        "def pool():\n"
        "    return [d['num_threads'] for d in threadpoolctl.threadpool_info()\n"
        "            if d['user_api'] == 'blas' and 'numpy' in d['filepath']]\n"
        "before = pool()\n"
        "ThreadBudget(None)\n"
        "print(json.dumps([before, pool(), BLAS_THREADS]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after, want = json.loads(out)
    assert before and after == [want] * len(before)
