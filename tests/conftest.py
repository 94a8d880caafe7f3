import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).parent
# The local token of loopback backends (and every process the tests start: servers, Blender)
# lives in a folder of the test run's own, never in the user's configuration folder.
os.environ.setdefault("PIPSTRACK_CONFIG_DIR", tempfile.mkdtemp(prefix="pipstrack-config-"))
FIXTURE = HERE / "pips_reference_seed7.npz"


def seeded_state_dict(seed: int = 7) -> dict:
    """The fixture's deterministic weights (procedure in shared/docs/pips-model.md)."""
    with np.load(FIXTURE, allow_pickle=False) as z:
        keys = json.loads(str(z["state_dict_keys"]))
    rs = np.random.RandomState(seed)
    state = {}
    for name, shape in keys:
        d = rs.standard_normal(shape)
        if len(shape) >= 2:
            d = d / np.sqrt(np.prod(shape[1:]))
        elif name.endswith(".weight"):
            d = 1 + 0.1 * d
        else:
            d = 0.1 * d
        state[name] = torch.from_numpy(d.astype(np.float32))
    return state


@pytest.fixture(scope="session")
def reference():
    with np.load(FIXTURE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def official_state():
    return seeded_state_dict()


@pytest.fixture(scope="session")
def default_model():
    from pipstrack import load_model

    return load_model()


@pytest.fixture(scope="session")
def sample_clip():
    from pipstrack.datasets.sample import load_ground_truth, sample_clip_dir
    from pipstrack.io.frames import open_frames

    src = open_frames(sample_clip_dir())
    frames = np.stack([src.read(i) for i in range(len(src))])
    return frames, load_ground_truth()


@pytest.fixture(scope="module")
def extension_zip(tmp_path_factory):
    """The Blender extension as users get it (tools/build_extension.py), without wheels: the
    test Python already has pyzmq."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, str(HERE.parent / "tools" / "build_extension.py"), "--out", str(out), "--wheels", "none"],
        check=True,
        capture_output=True,
    )
    (zip_path,) = out.glob("*.zip")
    return zip_path


class Backend:
    """`python -m pipstrack serve` in a subprocess on a free loopback port (or ``bind``), ready
    when returned (unless ``wait=False``). One torch thread, as the tests' in-process references:
    PIPs amplifies the last-bit differences of another thread count's reductions (docs/tracking.md)."""

    def __init__(self, tmp, *extra, model=None, bind=None, wait=True, keys=None, env=None, client_timeout="3"):
        import os
        import subprocess
        import sys
        import time

        from pipstrack.wire.client import TrackingError, ping
        from test_service import free_port

        self.address = bind or f"tcp://127.0.0.1:{free_port()}"
        self.log = Path(tmp) / f"serve-{time.monotonic_ns()}.log"
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            PIPSTRACK_CLIENT_TIMEOUT=client_timeout,
            PYTHONUNBUFFERED="1",
            **(env or {}),
        )
        cmd = [sys.executable, "-m", "pipstrack", "serve", "--bind", self.address, "--device", "cpu", *extra]
        if model is not None:
            cmd += ["--model", str(model)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), env=env)
        end = time.monotonic() + 60
        while wait:
            try:
                ping(self.address, timeout=1.0, keys_dir=keys)
                return
            except TrackingError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"backend did not start: {self.text()}") from None

    def text(self) -> str:
        return self.log.read_text()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """A real `pipstrack serve` on loopback with the shipped default model."""
    b = Backend(tmp_path_factory.mktemp("backend"))
    yield b
    b.kill()
