"""DPX and Cineon, the film and VFX plate formats, decoded with numpy (OpenCV reads neither).

Decoding them here lets the backend read a DPX plate itself (file paths on this machine, the
files' bytes from a render-box client) instead of Blender decoding every frame on its UI
thread. A DPX whose transfer characteristic says linear comes out as float32 scene-linear RGB
(shown through the same display transform as an EXR); any other (log, printing density, video)
as its uint16 code values, scaled to the full 16-bit range: tracking needs consistent
intensities, not a colour transform.

Covered: DPX 8, 10, 12 and 16 bits per component, RGB, RGBA, ABGR and luma, both byte orders,
10- and 12-bit data "filled" into words with the padding either side (methods A and B) and
10-bit packed without padding; Cineon 10-bit. Anything else is a FrameReadError that says what
the file holds, never a silently wrong picture.
"""

from __future__ import annotations

import struct

import numpy as np

SUFFIXES = (".dpx", ".cin")
_DPX_MAGIC = {b"SDPX": ">", b"XPDS": "<"}
_CINEON_MAGIC = {b"\x80\x2a\x5f\xd7": ">", b"\xd7\x5f\x2a\x80": "<"}
_LINEAR = 2  # DPX transfer characteristic
_DPX_CHANNELS = {6: 1, 50: 3, 51: 4, 52: 4}  # descriptor -> components: luma, RGB, RGBA, ABGR


class FilmReadError(ValueError):
    """The file is not a DPX/Cineon image this module decodes; the message says why."""


def is_film(suffix: str) -> bool:
    return suffix.lower() in SUFFIXES


def decode(data: bytes | np.ndarray) -> np.ndarray:
    """A DPX or Cineon file's bytes as (H, W, 3) RGB: float32 linear or uint16 code values."""
    buf = memoryview(np.ascontiguousarray(np.frombuffer(data, np.uint8))).cast("B")
    head = bytes(buf[:4])
    if head in _DPX_MAGIC:
        return _dpx(buf, _DPX_MAGIC[head])
    if head in _CINEON_MAGIC:
        return _cineon(buf, _CINEON_MAGIC[head])
    raise FilmReadError("not a DPX or Cineon file (no SDPX / Cineon magic number)")


def _field(buf, order: str, fmt: str, offset: int):
    try:
        return struct.unpack_from(order + fmt, buf, offset)[0]
    except struct.error:
        raise FilmReadError("truncated header") from None


def _dpx(buf, order: str) -> np.ndarray:
    offset = _field(buf, order, "I", 4)
    elements = _field(buf, order, "H", 770)
    width, height = _field(buf, order, "I", 772), _field(buf, order, "I", 776)
    descriptor = _field(buf, order, "B", 800)
    transfer = _field(buf, order, "B", 801)
    bits = _field(buf, order, "B", 803)
    packing = _field(buf, order, "H", 804)
    encoding = _field(buf, order, "H", 806)
    element_offset = _field(buf, order, "I", 808)
    if elements < 1 or not (0 < width <= 65536 and 0 < height <= 65536):
        raise FilmReadError(f"bad image size {width}x{height} ({elements} elements)")
    if encoding != 0:
        raise FilmReadError("run-length encoded DPX is not supported")
    if descriptor not in _DPX_CHANNELS:
        raise FilmReadError(f"DPX descriptor {descriptor} is not supported (RGB, RGBA, ABGR or luma are)")
    start = element_offset if element_offset not in (0, 0xFFFFFFFF) else offset
    channels = _DPX_CHANNELS[descriptor]
    values = _unpack(buf, order, start, width, height, channels, bits, packing)
    if descriptor == 52:
        values = values[..., ::-1]  # ABGR -> RGBA
    rgb = _to_rgb16(values, bits)
    if transfer == _LINEAR:
        return rgb.astype(np.float32) / np.float32(65535)
    return rgb


def _cineon(buf, order: str) -> np.ndarray:
    offset = _field(buf, order, "I", 4)
    channels = _field(buf, order, "B", 193)
    bits = _field(buf, order, "B", 198)
    width, height = _field(buf, order, "I", 200), _field(buf, order, "I", 204)
    interleave, packing = _field(buf, order, "B", 680), _field(buf, order, "B", 681)
    if channels not in (1, 3) or bits != 10 or interleave != 0 or packing not in (5, 0):
        raise FilmReadError(
            f"Cineon with {channels} channels of {bits} bits (interleave {interleave}, packing {packing}) "
            "is not supported (3 channels of 10 bits, pixel-interleaved, are)"
        )
    if not (0 < width <= 65536 and 0 < height <= 65536):
        raise FilmReadError(f"bad image size {width}x{height}")
    values = _unpack(buf, order, offset, width, height, channels, 10, 1)
    return _to_rgb16(values, 10)


def _unpack(buf, order, start, width, height, channels, bits, packing) -> np.ndarray:
    """Component values (H, W, C) as stored, from the element's data."""
    n = width * channels
    if bits == 8:
        row = -(-n // 4) * 4  # lines end on a 32-bit boundary
        raw = _take(buf, start, row * height, np.uint8)
        return raw.reshape(height, row)[:, :n].reshape(height, width, channels)
    if bits == 16:
        raw = _take(buf, start, 2 * n * height, np.dtype(order + "u2"))
        return raw.reshape(height, width, channels)
    if bits == 12 and packing in (1, 2):
        raw = _take(buf, start, 2 * n * height, np.dtype(order + "u2"))
        values = (raw >> 4) if packing == 1 else (raw & 0x0FFF)
        return values.reshape(height, width, channels)
    if bits in (10, 12) and packing == 0:  # a bit stream across 32-bit words, lines end on a word
        words = -(-(n * bits) // 32)
        raw = _take(buf, start, 4 * words * height, np.dtype(order + "u4")).reshape(height, words)
        bitpos = np.arange(n) * bits
        word, shift = bitpos // 32, (bitpos % 32).astype(np.uint64)
        both = (raw[:, np.minimum(word + 1, words - 1)].astype(np.uint64) << np.uint64(32)) | raw[:, word]
        values = (both >> shift) & np.uint64((1 << bits) - 1)
        return values.astype(np.uint16).reshape(height, width, channels)
    if bits == 10 and packing in (1, 2):
        words = -(-n // 3)  # three components to a 32-bit word, lines end on a word
        raw = _take(buf, start, 4 * words * height, np.dtype(order + "u4")).reshape(height, words)
        shifts = (22, 12, 2) if packing == 1 else (20, 10, 0)
        values = np.stack([(raw >> s) & 0x3FF for s in shifts], axis=-1).reshape(height, 3 * words)
        return values[:, :n].astype(np.uint16).reshape(height, width, channels)
    raise FilmReadError(f"{bits}-bit components with packing {packing} are not supported")


def _take(buf, start: int, size: int, dtype) -> np.ndarray:
    if start < 0 or start + size > len(buf):
        raise FilmReadError(f"truncated: the image data needs {start + size} bytes, the file has {len(buf)}")
    return np.frombuffer(buf, dtype=dtype, count=size // np.dtype(dtype).itemsize, offset=start)


def _to_rgb16(values: np.ndarray, bits: int) -> np.ndarray:
    """Components scaled to uint16 (0..65535), luma repeated, alpha dropped."""
    v = values.astype(np.uint32)
    if bits < 16:
        top = (1 << bits) - 1
        v = (v * 65535 + top // 2) // top
    v = v.astype(np.uint16)
    if v.shape[-1] == 1:
        return np.repeat(v, 3, axis=-1)
    return np.ascontiguousarray(v[..., :3])
