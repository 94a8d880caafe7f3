"""pipstrack: PIPs point tracking for compositors.

    from pipstrack import Tracker, load_model, open_frames
    tracker = Tracker(load_model(), device="auto")
    result = tracker.track(open_frames("plate.####.exr"), [[0, 512.0, 300.0]])
"""
from .model import Pips, PipsConfig
from .tracker import Tracker, TrackingCancelled, TrackResult
from .weights import WeightsError, load_model

__version__ = "0.1.0"


def open_frames(path, **kwargs):
    from .frames import open_frames as _open

    return _open(path, **kwargs)


__all__ = ["Pips", "PipsConfig", "Tracker", "TrackResult", "TrackingCancelled", "WeightsError", "load_model", "open_frames", "__version__"]
