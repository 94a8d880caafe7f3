"""Finding, checking and loading model weights.

Three kinds of file load through :func:`load_model`:
- pipstrack's own files: ``{"format": "pipstrack-model", "config": {...}, "state_dict": {...}, "meta": {...}}``;
  the config carries the network sizes (the shipped default model is narrower than the official one);
- the authors' checkpoint ``model-000200000.pth`` (weights under ``model_state_dict``);
- a bare state dict, with or without DataParallel's ``module.`` prefixes.

Nothing is ever unpickled: every file goes through ``torch.load(weights_only=True)``.

Where the official checkpoint is looked for, first hit wins:
1. ``$PIPSTRACK_WEIGHTS`` (a file path);
2. ``$PIPSTRACK_HOME/weights/`` (default ``$XDG_DATA_HOME/pipstrack`` or ``~/.local/share/pipstrack``),
   any of :data:`OFFICIAL_NAMES`.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .model import Pips, PipsConfig

FORMAT = "pipstrack-model"
OFFICIAL_NAMES = ("model-000200000.pth", "pips_reference.pth")
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "data" / "default_model.pt"
# SHA-256 of files whose content we know. The authors publish no checksum for their
# checkpoint; add its digest here once verified on a machine that has it.
KNOWN_SHA256: dict[str, str] = {}


class WeightsError(ValueError):
    """A weights file that cannot be used; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def pipstrack_home() -> Path:
    if os.environ.get("PIPSTRACK_HOME"):
        return Path(os.environ["PIPSTRACK_HOME"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "pipstrack"


def official_candidates() -> list[Path]:
    paths = []
    if os.environ.get("PIPSTRACK_WEIGHTS"):
        paths.append(Path(os.environ["PIPSTRACK_WEIGHTS"]).expanduser())
    paths += [pipstrack_home() / "weights" / name for name in OFFICIAL_NAMES]
    return paths


def find_official() -> Path | None:
    return next((p for p in official_candidates() if p.is_file()), None)


def sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Checkpoint:
    path: Path
    kind: str  # "pipstrack", "official" or "state-dict"
    config: PipsConfig
    state_dict: dict
    meta: dict


def read_checkpoint(path) -> Checkpoint:
    """Reads and validates a weights file without building a model."""
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(path, "no such file")
    if path.is_dir():
        raise WeightsError(path, "is a folder, not a weights file")
    if not zipfile.is_zipfile(path):
        raise WeightsError(
            path,
            "not a PyTorch checkpoint (expected a torch.save zip archive; the file is truncated or of another kind)",
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types; the caller needs one with the file name
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(path, f"cannot be read safely ({first[:300]})") from None
    if not isinstance(obj, dict):
        raise WeightsError(path, f"holds a {type(obj).__name__}, not a dict of weights")

    meta: dict = {}
    if obj.get("format") == FORMAT:
        kind = "pipstrack"
        try:
            config = PipsConfig.from_dict(dict(obj.get("config") or {}))
        except (TypeError, ValueError) as e:
            raise WeightsError(path, f"bad model config: {e}") from None
        state = obj.get("state_dict")
        meta = dict(obj.get("meta") or {})
    elif "model_state_dict" in obj:
        kind, config, state = "official", PipsConfig(), obj["model_state_dict"]
    else:
        kind, config, state = "state-dict", PipsConfig(), obj
    if not isinstance(state, dict) or not state:
        raise WeightsError(path, "holds no weights")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(path, f"is not a PIPs checkpoint (non-tensor entries such as {bad[0]!r})")
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    if kind == "state-dict" and not any(k.startswith("fnet.") for k in state):
        raise WeightsError(path, "is not a PIPs checkpoint (no fnet.* encoder weights)")
    return Checkpoint(path, kind, config, state, meta)


def check_state_dict(model: Pips, state: dict, path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:2])})")
    if problems:
        raise WeightsError(path, "does not fit the PIPs network: " + "; ".join(problems))


def load_model(path=None, device="cpu", stride: int | None = None) -> Pips:
    """A ready (eval mode) network.

    ``path``: a weights file; ``None`` or ``"default"`` for the model shipped with
    pipstrack; ``"official"`` for the authors' checkpoint where :func:`find_official` finds it.
    """
    if path is None or str(path) == "default":
        path = DEFAULT_MODEL
        if not path.is_file():
            raise WeightsError(path, "the default model is missing from this installation (reinstall pipstrack)")
    elif str(path) == "official":
        found = find_official()
        if found is None:
            where = ", ".join(str(p) for p in official_candidates())
            raise WeightsError(
                "official", f"the authors' checkpoint was not found; looked in: {where}. See docs/weights.md"
            )
        path = found
    ckpt = read_checkpoint(path)
    config = ckpt.config
    if stride is not None:
        config = PipsConfig.from_dict({**config.to_dict(), "stride": stride})
    model = Pips(config=config)
    check_state_dict(model, ckpt.state_dict, ckpt.path)
    model.load_state_dict(ckpt.state_dict, strict=True)
    model.source = str(ckpt.path)
    model.meta = ckpt.meta
    return model.to(device).eval()


def save_model(model: Pips, path, meta: dict | None = None, half: bool = False) -> None:
    """Writes a pipstrack weights file atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
        for k, v in model.state_dict().items()
    }
    obj = {"format": FORMAT, "config": model.config.to_dict(), "state_dict": state, "meta": dict(meta or {})}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
