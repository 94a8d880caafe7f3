"""pipstrack: PIPs point tracking for compositors.

    from pipstrack import Tracker, load_model, open_frames
    tracker = Tracker(load_model(), device="auto")
    result = tracker.track(open_frames("plate.####.exr"), [[0, 512.0, 300.0]])

Layers, each importing only those before it (tests/test_layout.py holds the rule):
``conventions`` (coordinates, frame numbers, sizes, display), ``wire`` (protocol and client),
``io`` (files), ``engine`` (network and tracker), ``datasets``, ``evaluation``, ``training``,
``service``, ``cli``. The public API below is imported lazily, so ``pipstrack.wire`` and the
command line's ``--help`` do not pay for torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

_PUBLIC = {
    "Pips": "engine.model",
    "PipsConfig": "engine.model",
    "Tracker": "engine.tracker",
    "TrackResult": "engine.tracker",
    "TrackingCancelled": "engine.tracker",
    "WeightsError": "engine.weights",
    "load_model": "engine.weights",
}


def open_frames(path, **kwargs):
    """A clip (movie, image sequence, EXR) as a FrameSource: see :func:`pipstrack.io.frames.open_frames`."""
    from .io.frames import open_frames as _open

    return _open(path, **kwargs)


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pipstrack' has no attribute {name!r}")


__all__ = [
    "Pips",
    "PipsConfig",
    "Tracker",
    "TrackResult",
    "TrackingCancelled",
    "WeightsError",
    "load_model",
    "open_frames",
    "__version__",
]
