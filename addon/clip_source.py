"""Where a clip's frames come from, and which file or movie frame each clip frame is
(the frame-number rules themselves are in ``_pipstrack.conventions``).

A backend on this machine (or one sharing the storage) reads the files itself: the job sends
file paths (sequences) or the movie's path. A render box elsewhere gets the files' bytes
(read on a helper thread, decoded there exactly as it decodes files), for every format the
backend reads (``_pipstrack.wire.protocol.IMAGE_SUFFIXES``). Other formats (Iris, PSD,
...) are decoded here by Blender and sent as pixels: 8-bit images as sRGB uint8, float images
as linear float16 in the scene's linear space; that decode runs on Blender's own thread, one
frame per timer tick.
"""

from __future__ import annotations

import os

import bpy
import numpy as np

from ._pipstrack import conventions as cv
from ._pipstrack.wire import protocol as P


class ClipSourceError(RuntimeError):
    """The clip's frames cannot be sent as asked (message says why and what to do)."""


def scene_to_clip(clip, scene_frame: int) -> int:
    return cv.scene_to_clip_frame(scene_frame, clip.frame_start)


def clip_to_scene(clip, clip_frame: int) -> int:
    return cv.clip_to_scene_frame(clip_frame, clip.frame_start)


class ClipFrames:
    """The frames of one movie clip, addressed by job index (clip frame - 1)."""

    def __init__(self, clip):
        self.clip = clip
        self.kind = clip.source  # "SEQUENCE" or "MOVIE"
        self.path = bpy.path.abspath(clip.filepath)
        self.width, self.height = int(clip.size[0]), int(clip.size[1])
        self.count = int(clip.frame_duration)
        self.offset = int(clip.frame_offset)
        if self.width <= 0 or self.height <= 0 or self.count <= 0:
            raise ClipSourceError(f"Blender cannot read the clip {clip.name!r} ({self.path}): is the file there?")
        self._name = cv.split_sequence_name(self.path) if self.kind == "SEQUENCE" else None

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width), as everywhere in pipstrack."""
        return self.height, self.width

    def file_for(self, index: int) -> str:
        """The image file shown on clip frame ``index + 1``."""
        if self._name is None:
            return self.path  # a single still image
        return self._name.path(cv.file_number(self._name.number, cv.job_index_to_clip_frame(index), self.offset))

    def frame_number(self, clip_frame: int) -> int:
        """The number a compositor reads for ``clip_frame``: a sequence's file number, or a
        movie's frame counted from 1 (both shifted by the clip's frame offset)."""
        return cv.file_number(self._name.number if self._name is not None else 1, clip_frame, self.offset)

    @property
    def backend_reads(self) -> bool:
        """Whether the backend decodes this clip's files itself (movies: it opens them)."""
        return self.kind == "MOVIE" or P.backend_reads(self.path)

    def missing(self, first: int, last: int) -> list[int]:
        """Job indices in first..last whose file does not exist (sequences only)."""
        if self.kind != "SEQUENCE":
            return []
        return [i for i in range(first, last + 1) if not os.path.isfile(self.file_for(i))]

    # -- what the job sends -----------------------------------------------------------------
    def job_source(self, mode: str, first: int, last: int) -> dict:
        """Keyword arguments for ``Connection.submit``: paths, a movie, or a pixel reader.

        ``mode``: "FILES" (backend reads the files: same machine or shared storage), "UPLOAD" (the
        files' bytes are sent, the backend decodes them) or "PIXELS" (frames decoded here by
        Blender and sent). Only formats the backend reads go as files (check ``backend_reads``)."""
        common = dict(frame_count=self.count, frame_shape=(self.height, self.width))
        if self.kind == "MOVIE":
            if mode != "FILES":
                raise ClipSourceError(
                    "movie clips are read by the backend itself: a render box needs the movie on shared "
                    "storage (Send frames: Files), or convert the clip to an image sequence"
                )
            if self.offset:
                raise ClipSourceError("a movie clip with a frame offset cannot be sent as a file; use 'Send pixels'")
            return dict(video=self.path, **common)
        gone = self.missing(first, last)
        if gone:
            raise ClipSourceError(f"{len(gone)} frame file(s) of the clip are missing, first {self.file_for(gone[0])}")
        if mode in ("FILES", "UPLOAD") and not self.backend_reads:
            raise ClipSourceError(f"the backend cannot decode {os.path.basename(self.path)}: send pixels")
        if mode == "FILES":
            return dict(paths=[self.file_for(i) for i in range(self.count)], **common)
        if mode == "UPLOAD":
            return dict(encoded=[self.file_for(i) for i in range(self.count)], **common)
        # The client decodes the first frame to learn its dtype (uint8 -> sRGB, float16 -> linear)
        # and sends that same decoded frame: no frame is read twice.
        return dict(frames=self.read, chunk=1, **common)  # one Blender decode per timer tick

    def read(self, index: int) -> np.ndarray:
        """Clip frame ``index + 1`` as (H,W,3), top row first: uint8 sRGB, or float16 linear."""
        path = self.file_for(index)
        try:
            image = bpy.data.images.load(path, check_existing=False)
        except RuntimeError as e:
            raise ClipSourceError(f"Blender cannot read {path}: {e}") from None
        try:
            image.colorspace_settings.name = self.clip.colorspace_settings.name
            w, h = image.size
            if (w, h) != (self.width, self.height):
                raise ClipSourceError(f"{path} is {w}x{h}, the clip is {self.width}x{self.height}")
            px = np.empty(w * h * image.channels, np.float32)
            image.pixels.foreach_get(px)
            rgb = px.reshape(h, w, image.channels)[::-1, :, :3]
            if image.is_float:
                return np.ascontiguousarray(rgb, dtype=np.float16)
            return np.ascontiguousarray(np.round(np.clip(rgb, 0.0, 1.0) * 255.0), dtype=np.uint8)
        finally:
            bpy.data.images.remove(image)
