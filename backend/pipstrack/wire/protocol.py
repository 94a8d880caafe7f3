"""The pipstrack wire protocol: one source of truth for server, client and the Blender add-on.

This module imports only the standard library, numpy and pyzmq (never torch or the rest of
pipstrack) because the Blender add-on ships a copy of it. docs/protocol.md describes it in prose.

Transport: ZeroMQ, ROUTER on the server, DEALER on each client. A message is multipart:
frame 0 (as the client sends and receives it) is a small UTF-8 JSON object, the *header*
``{"v": PROTOCOL_VERSION, "type": ..., "job": ..., ...}``; binary frames follow (images,
query arrays, trajectories). JSON and raw little-endian arrays only: no pickle anywhere, so a
message can never run code.

Every header is validated here (:func:`parse`, :func:`check_submit`, ...). A problem raises
:class:`ProtocolError` carrying one of the ``E_*`` codes and a message that names the field;
the server turns it into an ``error`` reply and keeps serving.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from ..conventions import DIRECTIONS

PROTOCOL_VERSION = 1

# -- limits --------------------------------------------------------------------------------
MAX_HEADER_BYTES = 64 * 1024  # a header is small; anything bigger is a mistake or an attack
MAX_PART_BYTES = 256 * 2**20  # one binary frame: a 4K float32 RGB image is 99.5 MB
# Trajectories go out in messages of about this many xy bytes each (a 1000-frame x 1024-point
# result is one 8 MB message; a 100,000-frame one is a hundred), to clients that asked ("chunked").
TRAJECTORY_CHUNK_BYTES = 8 * 2**20
MAX_PARTS = 66  # header + up to 64 images + slack per message
MAX_FRAMES_PER_MESSAGE = 64
MAX_FRAMES = 100_000  # frames in one job
MAX_POINTS = 20_000  # query points in one job
MAX_ANCHORS = 200_000  # keyframe rows over all points of one job
MAX_SIDE = 16_384  # pixels, height or width
MAX_ITERS = 32
MAX_JOB_ID = 64  # characters
MAX_PATH = 4096

# -- message types -------------------------------------------------------------------------
HELLO, HELLO_OK = "hello", "hello_ok"
SUBMIT, ACCEPTED = "submit", "accepted"
FRAMES, PATHS, ENCODED = "frames", "paths", "encoded"
CANCEL, CANCELLED = "cancel", "cancelled"
PROGRESS, PARTIAL, RESULT, ERROR = "progress", "partial", "result", "error"
PING, PONG = "ping", "pong"
CLIENT_TYPES = (HELLO, SUBMIT, FRAMES, PATHS, ENCODED, CANCEL, PING)
SERVER_TYPES = (HELLO_OK, ACCEPTED, CANCELLED, PROGRESS, PARTIAL, RESULT, ERROR, PONG)
JOB_TYPES = (SUBMIT, FRAMES, PATHS, ENCODED, CANCEL, ACCEPTED, CANCELLED, PROGRESS, PARTIAL, RESULT)

# -- error codes (stable strings: clients switch on them) ------------------------------------
E_BAD_MESSAGE = "bad_message"  # not a multipart message with a JSON object header
E_VERSION = "version_mismatch"  # protocol versions differ
E_BAD_TYPE = "bad_type"  # unknown message type
E_BAD_FIELD = "bad_field"  # a header field is missing, of the wrong type or out of range
E_BAD_PAYLOAD = "bad_payload"  # binary frames inconsistent with the header (count, byte length)
E_TOO_LARGE = "too_large"  # over one of the limits above
E_UNKNOWN_JOB = "unknown_job"  # no such job for this client
E_DUPLICATE_JOB = "duplicate_job"  # a job id this client already uses
E_BAD_STATE = "bad_state"  # e.g. frames for a job that already has all its frames
E_READ_FAILED = "read_failed"  # a `paths` file could not be read
E_TRACKING_FAILED = "tracking_failed"  # the tracker raised
E_TIMEOUT = "timeout"  # the other side stopped answering (raised on the client side)
E_SHUTDOWN = "shutdown"  # the server is stopping; running jobs are cancelled
E_BUSY = "busy"  # the server's frame memory is taken by other jobs: try again later
E_NOT_ALLOWED = "not_allowed"  # a file outside the server's allowed folders, or not a regular file
ERROR_CODES = (
    E_BAD_MESSAGE,
    E_VERSION,
    E_BAD_TYPE,
    E_BAD_FIELD,
    E_BAD_PAYLOAD,
    E_TOO_LARGE,
    E_UNKNOWN_JOB,
    E_DUPLICATE_JOB,
    E_BAD_STATE,
    E_READ_FAILED,
    E_TRACKING_FAILED,
    E_TIMEOUT,
    E_SHUTDOWN,
    E_BUSY,
    E_NOT_ALLOWED,
)

DTYPES = {"uint8": np.dtype("<u1"), "float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
COLOURS = ("srgb", "linear")
SOURCES = ("frames", "paths", "video", "encoded")
# Image files the backend decodes itself (source "paths", or their bytes as source "encoded"):
# the one list the add-on checks before it sends a clip's files instead of decoded pixels.
IMAGE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".jp2", ".dpx", ".cin", ".tga", ".bmp", ".webp", ".hdr",
)  # fmt: skip


def backend_reads(path: str) -> bool:
    """Whether the backend decodes this image file itself (by its extension)."""
    return str(path).lower().endswith(IMAGE_SUFFIXES)


# Defaults, overridable by the environment (tests use short ones).
HEARTBEAT_INTERVAL = 1.0  # seconds between client pings
SERVER_TIMEOUT = 5.0  # client gives up on a silent server after this
CLIENT_TIMEOUT = 10.0  # server drops a silent client after this


class ProtocolError(ValueError):
    """A message that breaks the protocol; ``code`` is one of the ``E_*`` constants."""

    def __init__(self, code: str, message: str, job: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.job = job


# -- encoding ------------------------------------------------------------------------------
def header(type_: str, job: str | None = None, **fields) -> bytes:
    """Encodes a header frame (JSON, finite numbers only)."""
    h = {"v": PROTOCOL_VERSION, "type": type_}
    if job is not None:
        h["job"] = job
    h.update(fields)
    return json.dumps(h, separators=(",", ":"), allow_nan=False).encode()


def error_message(code: str, message: str, job: str | None = None) -> list[bytes]:
    return [header(ERROR, job, code=code, message=message)]


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def parse(parts, allowed=CLIENT_TYPES) -> tuple[dict, list]:
    """Splits and checks a received message: (header dict, binary frames).

    Checks the header's size, JSON, protocol version, type, and the job id of job messages.
    """
    if not parts:
        raise ProtocolError(E_BAD_MESSAGE, "empty message")
    if len(parts) > MAX_PARTS:
        raise ProtocolError(E_TOO_LARGE, f"message has {len(parts)} frames; the limit is {MAX_PARTS}")
    raw = bytes(parts[0].buffer if hasattr(parts[0], "buffer") else parts[0])
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(E_TOO_LARGE, f"header is {len(raw)} bytes; the limit is {MAX_HEADER_BYTES}")
    try:
        h = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(E_BAD_MESSAGE, f"frame 0 is not a JSON header: {e}") from None
    if not isinstance(h, dict):
        raise ProtocolError(E_BAD_MESSAGE, "frame 0 must be a JSON object")
    job = h.get("job") if isinstance(h.get("job"), str) else None
    v = h.get("v")
    if not _is_int(v):
        raise ProtocolError(E_BAD_FIELD, "header field 'v' (protocol version) must be an integer", job)
    if v != PROTOCOL_VERSION:
        raise ProtocolError(
            E_VERSION,
            f"protocol version mismatch: this side speaks {PROTOCOL_VERSION}, the other side {v}; "
            "update the older of the add-on and the backend",
            job,
        )
    t = h.get("type")
    if not isinstance(t, str) or t not in allowed:
        raise ProtocolError(E_BAD_TYPE, f"unknown message type {t!r}; expected one of {', '.join(allowed)}", job)
    if t in JOB_TYPES or (t == ERROR and "job" in h and h["job"] is not None):
        check_job_id(h.get("job"))
    return h, list(parts[1:])


def check_job_id(job) -> str:
    if not isinstance(job, str) or not (1 <= len(job) <= MAX_JOB_ID) or not job.isprintable():
        raise ProtocolError(
            E_BAD_FIELD, f"'job' must be a printable string of 1..{MAX_JOB_ID} characters, got {job!r:.80}"
        )
    return job


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int_field(h, name, lo, hi, default=None):
    x = h.get(name, default)
    if not _is_int(x) or not (lo <= x <= hi):
        raise ProtocolError(E_BAD_FIELD, f"'{name}' must be an integer in {lo}..{hi}, got {x!r:.80}", h.get("job"))
    return x


def _buffer_len(part) -> int:
    if hasattr(part, "buffer"):  # a zmq.Frame
        return part.buffer.nbytes
    return part.nbytes if hasattr(part, "nbytes") else memoryview(part).nbytes


# -- submit --------------------------------------------------------------------------------
@dataclass
class JobSpec:
    """A checked ``submit``: everything the server needs to run a job."""

    job: str
    frame_count: int
    height: int
    width: int
    dtype: str
    colour: str
    queries: np.ndarray  # (M,3) float64 rows [frame, x, y], 0-based frame indices
    first: int
    last: int
    direction: str
    working_size: int | None
    iters: int
    # "frames" (decoded pixels over the socket), "encoded" (image files' bytes over the socket, decoded
    # by the server), "paths" or "video" (files on a filesystem the server shares)
    source: str
    point_index: np.ndarray | None = None  # (M,) point of each query row; None: one row per point
    partial_interval: float = 1.0  # seconds between partial results; 0 = none
    video: str | None = None  # source "video": a movie file the server opens itself
    refine: bool = True  # sub-pixel Lucas-Kanade polish of visible frames (pipstrack.engine.refine)
    comotion: bool = True  # with refine: fill and recover points from co-moving ones (pipstrack.engine.comotion)
    # The client reads a result's fourth frame: which frames the tracker verified. A top-level
    # header field, so that a server that predates it ignores it and sends three frames.
    verified: bool = True
    # The client assembles trajectories sent in row chunks ("part" of "parts"), partials as deltas
    # (only the frames that changed). A server that predates it sends whole messages.
    chunked: bool = True

    @property
    def frame_bytes(self) -> int:
        return self.height * self.width * 3 * DTYPES[self.dtype].itemsize

    @property
    def points(self) -> int:
        return len(self.queries) if self.point_index is None else int(self.point_index.max()) + 1

    def anchors(self):
        """What ``Tracker.track`` takes: (N,3) rows, or one (K,3) array of keyframes per point."""
        if self.point_index is None:
            return self.queries
        return [self.queries[self.point_index == i] for i in range(self.points)]

    def submit_message(self) -> list:
        """The message that submits this job (queries as a binary float64 frame)."""
        opts = {
            "frame_range": [self.first, self.last],
            "direction": self.direction,
            "working_size": self.working_size,
            "iters": self.iters,
            "partial_interval": self.partial_interval,
            "refine": self.refine,
            "comotion": self.comotion,
        }
        common = dict(
            frame_count=self.frame_count,
            frame_shape=[self.height, self.width, 3],
            dtype=self.dtype,
            colour=self.colour,
            queries="binary",
            points=self.points,
            source=self.source,
            options=opts,
            verified=self.verified,
            chunked=self.chunked,
        )
        if self.video is not None:
            common["video"] = self.video
        if self.point_index is None:
            return [header(SUBMIT, self.job, **common), np.ascontiguousarray(self.queries, dtype="<f8").tobytes()]
        rows = np.column_stack([self.point_index.astype(np.float64), self.queries])
        return [
            header(SUBMIT, self.job, anchors=int(len(rows)), **common),
            np.ascontiguousarray(rows, dtype="<f8").tobytes(),
        ]


def check_submit(h: dict, payload: list) -> JobSpec:
    """Validates a ``submit`` header and its optional binary queries frame."""
    job = check_job_id(h.get("job"))
    T, H, W, dtype, colour = _check_frame_format(h, job)
    source, video = _check_source(h, job)
    queries, point_index = _check_queries(h, payload, job)
    first, last, direction, ws, iters, refine, comotion, pint = _check_options(h.get("options", {}), T, job)
    _check_query_positions(queries, point_index, first, last, H, W, job)
    verified, chunked = h.get("verified", False), h.get("chunked", False)
    for name, value in (("verified", verified), ("chunked", chunked)):
        if not isinstance(value, bool):
            raise ProtocolError(E_BAD_FIELD, f"{name!r} must be true or false, got {value!r:.40}", job)
    return JobSpec(
        job,
        T,
        H,
        W,
        dtype,
        colour,
        queries,
        first,
        last,
        direction,
        ws,
        iters,
        source,
        point_index,
        float(pint),
        video,
        refine,
        comotion,
        verified,
        chunked,
    )


def _check_frame_format(h: dict, job: str):
    """(frame count, height, width, dtype, colour) of a submit."""
    T = _int_field(h, "frame_count", 1, MAX_FRAMES)
    shape = h.get("frame_shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(_is_int(s) for s in shape)
        or shape[2] != 3
        or not (1 <= shape[0] <= MAX_SIDE and 1 <= shape[1] <= MAX_SIDE)
    ):
        raise ProtocolError(
            E_BAD_FIELD, f"'frame_shape' must be [height, width, 3] with sides 1..{MAX_SIDE}, got {shape!r:.80}", job
        )
    H, W = shape[0], shape[1]
    dtype = h.get("dtype", "uint8")
    if dtype not in DTYPES:
        raise ProtocolError(E_BAD_FIELD, f"'dtype' must be one of {', '.join(DTYPES)}, got {dtype!r:.40}", job)
    colour = h.get("colour", "srgb")
    if colour not in COLOURS:
        raise ProtocolError(E_BAD_FIELD, f"'colour' must be 'srgb' or 'linear', got {colour!r:.40}", job)
    if dtype == "uint8" and colour != "srgb":
        raise ProtocolError(E_BAD_FIELD, "uint8 frames must be 'srgb' (linear light needs float16 or float32)", job)
    if H * W * 3 * DTYPES[dtype].itemsize > MAX_PART_BYTES:
        raise ProtocolError(E_TOO_LARGE, f"one {W}x{H} {dtype} frame exceeds the {MAX_PART_BYTES} byte limit", job)
    return T, H, W, dtype, colour


def _check_source(h: dict, job: str):
    """(source, movie path or None) of a submit."""
    source = h.get("source", "frames")
    if source not in SOURCES:
        raise ProtocolError(E_BAD_FIELD, f"'source' must be one of {', '.join(SOURCES)}, got {source!r:.40}", job)
    video = h.get("video")
    if source == "video" and not (isinstance(video, str) and 0 < len(video) <= MAX_PATH):
        raise ProtocolError(E_BAD_FIELD, "source 'video' needs 'video': the movie's path on the server", job)
    if source != "video" and video is not None:
        raise ProtocolError(E_BAD_FIELD, "'video' is only for source 'video'", job)
    return source, video


def _check_queries(h: dict, payload: list, job: str):
    """(queries (M,3) [frame, x, y], each row's point index or None): JSON triples, binary
    queries, or binary anchor rows [point, frame, x, y]."""
    q = h.get("queries")
    point_index = None
    if q == "binary" and "anchors" in h:
        n = _int_field(h, "points", 1, MAX_POINTS)
        m = _int_field(h, "anchors", n, MAX_ANCHORS)
        rows = _binary_rows(payload, m, 4, "anchors", f"{m} rows x 4 float64", job)
        pi = rows[:, 0]
        if not np.all(np.isfinite(pi)) or np.any(pi != np.round(pi)) or np.any(pi < 0) or np.any(pi >= n):
            raise ProtocolError(E_BAD_FIELD, f"anchor rows must start with a point index 0..{n - 1}", job)
        point_index = pi.astype(np.int64)
        if len(np.unique(point_index)) != n:
            raise ProtocolError(E_BAD_FIELD, f"every one of the {n} points needs at least one anchor", job)
        queries = rows[:, 1:]
    elif q == "binary":
        n = _int_field(h, "points", 1, MAX_POINTS)
        queries = _binary_rows(payload, n, 3, "queries", f"{n} points x 3 float64", job)
    elif isinstance(q, list):
        if payload:
            raise ProtocolError(E_BAD_PAYLOAD, "JSON queries take no binary frames", job)
        if not (1 <= len(q) <= MAX_POINTS):
            raise ProtocolError(E_BAD_FIELD, f"'queries' must hold 1..{MAX_POINTS} points, got {len(q)}", job)
        if not all(
            isinstance(r, list)
            and len(r) == 3
            and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in r)
            for r in q
        ):
            raise ProtocolError(E_BAD_FIELD, "'queries' must be a list of [frame, x, y] number triples", job)
        queries = np.asarray(q, dtype=np.float64).reshape(-1, 3)
    else:
        raise ProtocolError(E_BAD_FIELD, "'queries' must be a list of [frame, x, y] or \"binary\" (with 'points')", job)
    return queries, point_index


def _binary_rows(payload: list, rows: int, cols: int, what: str, shape: str, job: str) -> np.ndarray:
    """The one binary frame of a submit as (rows, cols) float64."""
    if len(payload) != 1:
        raise ProtocolError(E_BAD_PAYLOAD, f"binary {what} need exactly 1 binary frame, got {len(payload)}", job)
    if _buffer_len(payload[0]) != rows * cols * 8:
        raise ProtocolError(
            E_BAD_PAYLOAD, f"{what} frame is {_buffer_len(payload[0])} bytes; {shape} need {rows * cols * 8}", job
        )
    return np.frombuffer(payload[0], dtype="<f8").reshape(rows, cols).astype(np.float64)


def _check_options(opts, T: int, job: str):
    """(first, last, direction, working size, iterations, refine, comotion, partial interval)."""
    if not isinstance(opts, dict):
        raise ProtocolError(E_BAD_FIELD, "'options' must be an object", job)
    unknown = set(opts) - {
        "frame_range",
        "direction",
        "working_size",
        "iters",
        "partial_interval",
        "refine",
        "comotion",
    }
    if unknown:
        raise ProtocolError(E_BAD_FIELD, f"unknown option(s): {', '.join(sorted(unknown))}", job)
    fr = opts.get("frame_range")
    if fr is None:
        first, last = 0, T - 1
    elif isinstance(fr, list) and len(fr) == 2 and all(_is_int(x) for x in fr) and 0 <= fr[0] <= fr[1] < T:
        first, last = fr
    else:
        raise ProtocolError(
            E_BAD_FIELD,
            f"'options.frame_range' must be [first, last] with 0 <= first <= last < {T}, got {fr!r:.80}",
            job,
        )
    direction = opts.get("direction", "both")
    if direction not in DIRECTIONS:
        raise ProtocolError(
            E_BAD_FIELD, f"'options.direction' must be one of {', '.join(DIRECTIONS)}, got {direction!r:.40}", job
        )
    ws = opts.get("working_size", 512)
    if ws is not None and (not _is_int(ws) or not (32 <= ws <= MAX_SIDE)):
        raise ProtocolError(
            E_BAD_FIELD, f"'options.working_size' must be null or an integer in 32..{MAX_SIDE}, got {ws!r:.40}", job
        )
    iters = _int_field(opts, "iters", 1, MAX_ITERS, default=6)
    refine = opts.get("refine", True)
    if not isinstance(refine, bool):
        raise ProtocolError(E_BAD_FIELD, f"'options.refine' must be true or false, got {refine!r:.40}", job)
    comotion = opts.get("comotion", True)
    if not isinstance(comotion, bool):
        raise ProtocolError(E_BAD_FIELD, f"'options.comotion' must be true or false, got {comotion!r:.40}", job)
    pint = opts.get("partial_interval", 1.0)
    if not isinstance(pint, (int, float)) or isinstance(pint, bool) or not (0 <= pint <= 3600):
        raise ProtocolError(
            E_BAD_FIELD,
            f"'options.partial_interval' must be seconds in 0..3600 (0: no partial results), got {pint!r:.40}",
            job,
        )
    return first, last, direction, ws, iters, refine, comotion, pint


def _check_query_positions(queries, point_index, first: int, last: int, H: int, W: int, job: str) -> None:
    """Finite, on whole frames inside the tracked range, inside the image; one anchor per point and frame."""
    if not np.all(np.isfinite(queries)):
        raise ProtocolError(E_BAD_FIELD, "query coordinates must be finite (found NaN or infinity)", job)
    f = queries[:, 0]
    if np.any(f != np.round(f)) or np.any(f < first) or np.any(f > last):
        raise ProtocolError(
            E_BAD_FIELD, f"query frames must be whole numbers in the tracked range {first}..{last}", job
        )
    if point_index is not None and len(np.unique(point_index * (MAX_FRAMES + 1) + f.astype(np.int64))) != len(f):
        raise ProtocolError(E_BAD_FIELD, "a point has two anchors on the same frame", job)
    x, y = queries[:, 1], queries[:, 2]
    if np.any(x < -0.5) or np.any(x > W - 0.5) or np.any(y < -0.5) or np.any(y > H - 0.5):
        raise ProtocolError(
            E_BAD_FIELD, f"query positions must lie inside the {W}x{H} image (-0.5..W-0.5, -0.5..H-0.5)", job
        )


# -- frames / paths ------------------------------------------------------------------------
def check_frames(h: dict, payload: list, spec: JobSpec) -> tuple[int, list[np.ndarray]]:
    """Validates a ``frames`` chunk against its job: (first index, list of (H,W,3) arrays, zero-copy)."""
    job = spec.job
    if spec.source != "frames":
        raise ProtocolError(
            E_BAD_STATE, f"this job reads its frames from {spec.source}; it takes no 'frames' messages", job
        )
    first = _int_field(h, "first", 0, spec.frame_count - 1)
    count = _int_field(h, "count", 1, MAX_FRAMES_PER_MESSAGE)
    if first + count > spec.frame_count:
        raise ProtocolError(
            E_BAD_FIELD, f"frames {first}..{first + count - 1} run past the job's {spec.frame_count} frames", job
        )
    if len(payload) != count:
        raise ProtocolError(E_BAD_PAYLOAD, f"header says {count} frames but {len(payload)} binary frames follow", job)
    out = []
    for k, part in enumerate(payload):
        n = _buffer_len(part)
        if n != spec.frame_bytes:
            raise ProtocolError(
                E_BAD_PAYLOAD,
                f"frame {first + k} is {n} bytes; "
                f"a {spec.width}x{spec.height}x3 {spec.dtype} image is {spec.frame_bytes}",
                job,
            )
        buf = part.buffer if hasattr(part, "buffer") else part
        out.append(np.frombuffer(buf, dtype=DTYPES[spec.dtype]).reshape(spec.height, spec.width, 3))
    return first, out


def check_paths(h: dict, payload: list, spec: JobSpec) -> tuple[int, list[str]]:
    """Validates a ``paths`` chunk: (first index, list of file paths on the server's filesystem)."""
    job = spec.job
    if spec.source != "paths":
        raise ProtocolError(
            E_BAD_STATE, f"this job's frames come from {spec.source}; it takes no 'paths' messages", job
        )
    if payload:
        raise ProtocolError(E_BAD_PAYLOAD, "'paths' takes no binary frames", job)
    first = _int_field(h, "first", 0, spec.frame_count - 1)
    paths = h.get("paths")
    if (
        not isinstance(paths, list)
        or not paths
        or not all(isinstance(p, str) and 0 < len(p) <= MAX_PATH for p in paths)
    ):
        raise ProtocolError(E_BAD_FIELD, "'paths' must be a non-empty list of file path strings", job)
    if first + len(paths) > spec.frame_count:
        raise ProtocolError(
            E_BAD_FIELD,
            f"paths for frames {first}..{first + len(paths) - 1} run past the job's {spec.frame_count} frames",
            job,
        )
    return first, paths


def check_encoded(h: dict, payload: list, spec: JobSpec) -> tuple[int, list[tuple[str, object]]]:
    """Validates an ``encoded`` chunk: (first index, [(file suffix, file bytes)]); the server
    decodes the bytes as it would the file (``suffixes`` say the format, one per binary frame)."""
    job = spec.job
    if spec.source != "encoded":
        raise ProtocolError(
            E_BAD_STATE, f"this job's frames come from {spec.source}; it takes no 'encoded' messages", job
        )
    first = _int_field(h, "first", 0, spec.frame_count - 1)
    suffixes = h.get("suffixes")
    if (
        not isinstance(suffixes, list)
        or not (1 <= len(suffixes) <= MAX_FRAMES_PER_MESSAGE)
        or not all(isinstance(x, str) and x.lower() in IMAGE_SUFFIXES for x in suffixes)
    ):
        raise ProtocolError(
            E_BAD_FIELD, f"'suffixes' must list 1..{MAX_FRAMES_PER_MESSAGE} of {', '.join(IMAGE_SUFFIXES)}", job
        )
    if first + len(suffixes) > spec.frame_count:
        raise ProtocolError(
            E_BAD_FIELD,
            f"files for frames {first}..{first + len(suffixes) - 1} run past the job's {spec.frame_count} frames",
            job,
        )
    if len(payload) != len(suffixes):
        raise ProtocolError(
            E_BAD_PAYLOAD, f"header names {len(suffixes)} files but {len(payload)} binary frames follow", job
        )
    out = []
    for x, part in zip(suffixes, payload):
        if _buffer_len(part) == 0:
            raise ProtocolError(E_BAD_PAYLOAD, "an empty image file", job)
        out.append((x.lower(), part.buffer if hasattr(part, "buffer") else part))
    return first, out


# -- results -------------------------------------------------------------------------------
def trajectories_message(
    type_: str,
    job: str,
    first: int,
    xy: np.ndarray,
    visible: np.ndarray,
    confidence: np.ndarray,
    verified: np.ndarray | None = None,
    **fields,
) -> list:
    """``partial`` or ``result``: xy float32 (T,N,2), visible uint8 (T,N), confidence float32 (T,N),
    and, for a client that asked (``verified`` in its submit), verified uint8 (T,N): the frames
    where the tracker found the point's own patch (the rest are estimates)."""
    xy = np.ascontiguousarray(xy, dtype="<f4")
    T, N = xy.shape[:2]
    if verified is not None:
        fields["verified"] = True
    h = header(type_, job, first=int(first), frames=int(T), points=int(N), **fields)
    msg = [h, xy, np.ascontiguousarray(visible, dtype="u1"), np.ascontiguousarray(confidence, dtype="<f4")]
    if verified is not None:
        msg.append(np.ascontiguousarray(verified, dtype="u1"))
    return msg


def trajectory_chunks(
    type_: str,
    job: str,
    first: int,
    xy: np.ndarray,
    visible: np.ndarray,
    confidence: np.ndarray,
    verified: np.ndarray | None = None,
    *,
    delta: bool = False,
    chunk_bytes: int = TRAJECTORY_CHUNK_BYTES,
    **fields,
) -> list[list]:
    """``partial``/``result`` trajectories as messages of consecutive frames (rows), each about
    ``chunk_bytes`` of xy and under any message limit: ``part`` k of ``parts``, ``first`` its
    first frame. ``delta``: a partial holding only the frames that changed since the last one.
    ``fields`` (seconds, stats, ...) go with the last part."""
    T, N = xy.shape[:2]
    per = max(1, int(chunk_bytes) // max(1, N * 8))
    starts = list(range(0, T, per)) or [0]
    msgs = []
    for k, lo in enumerate(starts):
        hi = min(T, lo + per)
        extra = dict(fields) if k == len(starts) - 1 else {}
        if delta:
            extra["delta"] = True
        msgs.append(
            trajectories_message(
                type_,
                job,
                first + lo,
                xy[lo:hi],
                visible[lo:hi],
                confidence[lo:hi],
                None if verified is None else verified[lo:hi],
                part=k,
                parts=len(starts),
                **extra,
            )
        )
    return msgs


class TrajectoryAssembly:
    """A client's view of one job's trajectories, put together from chunks (``part`` of
    ``parts``) and partial deltas; checks that every chunk fits the job."""

    def __init__(self, first: int, last: int, points: int):
        self.first, self.T, self.N = int(first), int(last) - int(first) + 1, int(points)
        self.arrays = None  # the latest complete partial (deltas apply to it)
        self._building = {}  # message type -> (arrays being filled, next part expected)

    def _blank(self, with_verified: bool) -> dict:
        return {
            "xy": np.full((self.T, self.N, 2), np.nan, np.float32),
            "visible": np.zeros((self.T, self.N), bool),
            "confidence": np.zeros((self.T, self.N), np.float32),
            "verified": np.zeros((self.T, self.N), bool) if with_verified else None,
        }

    def add(self, h: dict, payload: list) -> dict | None:
        """One chunk; the complete trajectories (a dict as :func:`read_trajectories` gives, over
        the job's frames) once its last part is in, else None."""
        job = h.get("job")
        piece = read_trajectories(h, payload)
        parts = _int_field(h, "parts", 1, MAX_FRAMES)
        part = _int_field(h, "part", 0, parts - 1)
        lo = piece["first"] - self.first
        hi = lo + len(piece["xy"])
        if not (0 <= lo <= hi <= self.T) or piece["xy"].shape[1] != self.N:
            raise ProtocolError(
                E_BAD_PAYLOAD,
                f"trajectory chunk frames {lo}..{hi} x {piece['xy'].shape[1]} points do not fit the job",
                job,
            )
        kind = h["type"]
        arrays, expected = self._building.get(kind, (None, 0))
        if part != expected:
            raise ProtocolError(E_BAD_PAYLOAD, f"trajectory chunk {part} of {parts} came instead of {expected}", job)
        if part == 0:
            base = self.arrays if (h.get("delta") is True and self.arrays is not None) else None
            arrays = (
                self._blank(piece["verified"] is not None)
                if base is None
                else {k: (None if v is None else v.copy()) for k, v in base.items()}
            )
        for k in ("xy", "visible", "confidence", "verified"):
            if arrays.get(k) is not None and piece[k] is not None:
                arrays[k][lo:hi] = piece[k]
        if part < parts - 1:
            self._building[kind] = (arrays, part + 1)
            return None
        self._building.pop(kind, None)
        if kind == PARTIAL:
            self.arrays = arrays
        extra = {
            k: v for k, v in piece.items() if k not in ("first", "frame_indices", "part", "parts", "delta", *arrays)
        }
        return {
            "first": self.first,
            "frame_indices": np.arange(self.first, self.first + self.T),
            **{k: (None if v is None else v.copy()) for k, v in arrays.items()},
            **extra,
        }


def changed_rows(before: dict | None, xy, visible, confidence) -> tuple[int, int] | None:
    """The frames (rows lo..hi-1) that hold every difference from ``before`` (the trajectories
    sent last: xy, visible, confidence; None: nothing sent yet, so every tracked frame), or None
    when nothing changed."""
    if before is None:
        diff = np.isfinite(xy[..., 0]).any(axis=1)
    else:
        a, b = before["xy"], xy
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        diff = ~same.all(axis=(1, 2)) | (before["visible"] != visible).any(axis=1)
        diff |= (before["confidence"] != confidence).any(axis=1)
    rows = np.flatnonzero(diff)
    if not len(rows):
        return None
    return int(rows[0]), int(rows[-1]) + 1


def read_trajectories(h: dict, payload: list) -> dict:
    """Checks and decodes a ``partial``/``result`` message into arrays (copies, safe to keep)."""
    T = _int_field(h, "frames", 0, MAX_FRAMES)
    N = _int_field(h, "points", 0, MAX_POINTS)
    first = _int_field(h, "first", 0, MAX_FRAMES)
    with_verified = h.get("verified") is True
    if len(payload) != 3 + with_verified:
        raise ProtocolError(
            E_BAD_PAYLOAD,
            f"trajectories need {3 + with_verified} binary frames (xy, visible, confidence"
            f"{', verified' if with_verified else ''}), got {len(payload)}",
            h.get("job"),
        )
    sizes = (T * N * 8, T * N, T * N * 4, T * N)
    for name, part, n in zip(("xy", "visible", "confidence", "verified"), payload, sizes):
        if _buffer_len(part) != n:
            raise ProtocolError(E_BAD_PAYLOAD, f"{name} frame is {_buffer_len(part)} bytes, expected {n}", h.get("job"))
    buf = [p.buffer if hasattr(p, "buffer") else p for p in payload]
    return {
        "first": first,
        "xy": np.frombuffer(buf[0], dtype="<f4").reshape(T, N, 2).copy(),
        "visible": np.frombuffer(buf[1], dtype="u1").reshape(T, N).astype(bool),
        "confidence": np.frombuffer(buf[2], dtype="<f4").reshape(T, N).copy(),
        "frame_indices": np.arange(first, first + T),
        # None from a server that predates it, or for a job tracked without refinement
        "verified": np.frombuffer(buf[3], dtype="u1").reshape(T, N).astype(bool) if with_verified else None,
        **{k: v for k, v in h.items() if k not in ("v", "type", "job", "first", "frames", "points", "verified")},
    }


def check_progress(h: dict) -> tuple[int, int]:
    total = _int_field(h, "total", 0, 2**62)
    done = _int_field(h, "done", 0, total)
    return done, total


def is_loopback(address: str) -> bool:
    """True for endpoints only this machine can reach (tcp on 127.x/localhost/::1, ipc, inproc)."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    if not address.startswith("tcp://"):
        return False
    host = address[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


def env_float(environ, name: str, default: float) -> float:
    """A positive float from the environment (tests shorten timeouts this way)."""
    try:
        value = float(environ.get(name, default))
    except (TypeError, ValueError):
        return default
    return value if math.isfinite(value) and value > 0 else default
