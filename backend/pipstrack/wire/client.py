"""Client for ``pipstrack serve``: numpy + pyzmq + the protocol only, so Blender can ship it.

Nothing here blocks unless asked to: a Blender timer calls :meth:`Job.poll` every tenth of a
second, which uploads a little (zero-copy frames, pulled lazily from a callable so a 4K EXR
clip is never in RAM at once; or image files' bytes, read ahead on a helper thread), and
returns whatever arrived. Heartbeats and receiving also go on from the connection's own
thread whenever the owner has not pumped for a heartbeat interval, so a job survives a
minute-long render or save in Blender. Scripts use the blocking :func:`track`::

    from pipstrack.wire.client import Connection
    conn = Connection("tcp://127.0.0.1:5555")
    job = conn.submit(frames, [[0, 120.5, 80.0]])     # (T,H,W,3) array, or a callable + frame_count
    while not job.done:
        for event in job.poll():                        # {"type": "progress"|"result"|"error"|"cancelled", ...}
            ...
    job.result["xy"]                                    # (T,N,2) float32
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zmq

from . import protocol as P


class TrackingError(RuntimeError):
    """A job failed: ``code`` is one of the protocol's ``E_*`` codes."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


LOCAL_USER = "pipstrack"  # the PLAIN user name of the local token


def local_token_path() -> Path:
    """This user's token for backends on this machine: ``$PIPSTRACK_CONFIG_DIR/local-token``, else
    in the user's configuration folder (``~/.config/pipstrack``, ``%APPDATA%\\pipstrack``,
    ``~/Library/Application Support/pipstrack``). A backend on loopback makes it on first use,
    readable by this user only; clients of the same user read it (as Jupyter's token)."""
    d = os.environ.get("PIPSTRACK_CONFIG_DIR")
    if not d:
        if sys.platform == "win32":
            base = os.environ.get("APPDATA") or os.path.expanduser("~")
        elif sys.platform == "darwin":
            base = os.path.expanduser("~/Library/Application Support")
        else:
            base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        d = os.path.join(base, "pipstrack")
    return Path(d).expanduser() / "local-token"


def read_local_token() -> str | None:
    """The local token, or None where no backend of this user has made one yet."""
    try:
        token = local_token_path().read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


def use_local_token(sock, address: str) -> bool:
    """Presents this user's local token on ``sock`` (ZMQ PLAIN: authentication, no encryption,
    which loopback does not need) when ``address`` is on this machine and a token exists."""
    token = read_local_token() if P.is_loopback(address) else None
    if token is None:
        return False
    sock.plain_username = LOCAL_USER.encode()
    sock.plain_password = token.encode()
    return True


def _load_keys(keys_dir, name: str = "client"):
    """(client public, client secret, server public) from a `pipstrack keys` folder."""
    import zmq.auth

    d = Path(keys_dir).expanduser()
    try:
        cpub, csec = zmq.auth.load_certificate(str(d / f"{name}.key_secret"))
        spub, _ = zmq.auth.load_certificate(str(d / "server.key"))
    except (OSError, ValueError) as e:
        raise ValueError(
            f"keys folder {d}: {e}; it needs {name}.key_secret and server.key (made by `pipstrack keys`)"
        ) from None
    if csec is None:
        raise ValueError(f"keys folder {d}: {name}.key_secret holds no secret key")
    return cpub, csec, spub


class Connection:
    """One DEALER socket to a server, shared by any number of jobs; drive it with :meth:`pump`."""

    def __init__(
        self,
        address: str,
        *,
        keys_dir=None,
        key_name: str = "client",
        heartbeat: float | None = None,
        timeout: float | None = None,
        context: zmq.Context | None = None,
        keepalive: bool = True,
    ):
        self.address = address
        self.heartbeat = heartbeat or P.env_float(os.environ, "PIPSTRACK_HEARTBEAT", P.HEARTBEAT_INTERVAL)
        self.timeout = timeout or P.env_float(os.environ, "PIPSTRACK_SERVER_TIMEOUT", P.SERVER_TIMEOUT)
        keys = _load_keys(keys_dir, key_name) if keys_dir is not None else None  # before any socket exists
        self.local_token = False  # whether this connection presents the local token
        self._keys = keys
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, P.MAX_PART_BYTES)
        # The high-water mark counts whole multipart messages: at most two frame chunks wait in
        # the queue (plus the kernel's TCP buffer), so a lazily read clip is never all in RAM.
        self.sock.setsockopt(zmq.SNDHWM, 2)
        if keys is not None:
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = keys
        else:
            self.local_token = use_local_token(self.sock, address)
        try:
            self.sock.connect(address)
        except zmq.ZMQError as e:
            self.sock.close(linger=0)
            raise ValueError(f"{address!r} is not a backend address ({e.strerror}): use tcp://HOST:PORT") from None
        self.jobs: dict[str, Job] = {}
        self.server: dict | None = None  # the hello_ok header, once it arrives
        self.failure: TrackingError | None = None
        self.events: list[dict] = []  # connection-level events (hello_ok, errors without a job)
        self._outq: list[list] = []  # control messages the socket could not take yet
        now = time.monotonic()
        self.last_heard = now
        self.last_ping = 0.0
        self.last_pump = now
        # The socket is used by the owner's thread and the keepalive thread, never at once.
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._send([P.header(P.HELLO, None, client="pipstrack.client")])
        self._keepalive = None
        if keepalive:
            self._keepalive = threading.Thread(target=self._keep_alive, name="pipstrack-heartbeat", daemon=True)
            self._keepalive.start()

    def _keep_alive(self) -> None:
        """Heartbeats and receiving while the owner does not pump (Blender busy rendering or
        saving): never uploads (a frames callable may need the owner's thread, e.g. bpy)."""
        while not self._closed.wait(self.heartbeat / 2):
            if not self._lock.acquire(blocking=False):
                continue  # the owner is pumping right now
            try:
                if not self._closed.is_set() and time.monotonic() - self.last_pump >= self.heartbeat:
                    self._pump(0.0, uploads=False)
            except zmq.ZMQError:
                return  # closed under us
            finally:
                self._lock.release()

    # -- plumbing ----------------------------------------------------------------------------
    def _send(self, parts, queue_if_busy: bool = True) -> bool:
        """Never blocks (a DEALER blocks when its queue is full or no server is there yet):
        control messages wait in ``_outq`` and go out on a later :meth:`pump`."""
        with self._lock:
            if self._outq and queue_if_busy:
                self._outq.append(parts)
                return False
            try:
                self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                if queue_if_busy:
                    self._outq.append(parts)
                return False

    def _flush_out(self) -> None:
        while self._outq:
            try:
                self.sock.send_multipart(self._outq[0], flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._outq.pop(0)

    def pump(self, budget_s: float = 0.02) -> None:
        """Does whatever is due without waiting: heartbeats, uploads (about ``budget_s``), receiving."""
        with self._lock:
            self.last_pump = time.monotonic()
            self._pump(budget_s, uploads=True)

    def _pump(self, budget_s: float, uploads: bool) -> None:
        now = time.monotonic()
        self._flush_out()
        if self.failure is None and now - self.last_ping >= self.heartbeat:
            self.last_ping = now
            active = [j for j, job in self.jobs.items() if not job.done][:1000]
            self._send([P.header(P.PING, None, jobs=active)], queue_if_busy=False)
        deadline = now + budget_s
        for job in list(self.jobs.values()) if uploads else []:
            while job._upload_step() and time.monotonic() < deadline:
                pass
        while True:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self.last_heard = time.monotonic()
            self._dispatch(parts)
        del self.events[:-100]  # connection-level events are only for wait_hello and diagnostics
        if self.failure is None and time.monotonic() - self.last_heard > self.timeout:
            why = f"the server at {self.address} has not answered for {self.timeout:g} s"
            if self.server is None and P.is_loopback(self.address) and not self.local_token and self._keys is None:
                why += (
                    f" (a backend on this machine answers only its own user's clients, which read its token, "
                    f"and there is none at {local_token_path()}: is it another user's backend?)"
                )
            self._fail(TrackingError(P.E_TIMEOUT, why))

    def _fail(self, err: TrackingError) -> None:
        self.failure = err
        self.events.append({"type": P.ERROR, "code": err.code, "message": err.message})
        for job in self.jobs.values():
            job._finish({"type": P.ERROR, "code": err.code, "message": err.message})

    def _dispatch(self, parts) -> None:
        try:
            h, payload = P.parse(parts, allowed=P.SERVER_TYPES)
        except P.ProtocolError as e:
            if e.code == P.E_VERSION:
                self._fail(TrackingError(e.code, e.message))
            else:
                self.events.append(
                    {"type": P.ERROR, "code": e.code, "message": f"bad message from the server: {e.message}"}
                )
            return
        t = h["type"]
        if t == P.HELLO_OK:
            self.server = h
            self.events.append(dict(h))
            return
        if t == P.PONG:
            for j in h.get("unknown", []) if isinstance(h.get("unknown"), list) else []:
                job = self.jobs.get(j)
                if job is not None and job.accepted and not job.done:
                    job._finish(
                        {
                            "type": P.ERROR,
                            "code": P.E_UNKNOWN_JOB,
                            "message": "the server no longer knows this job (restarted?)",
                        }
                    )
            return
        job = self.jobs.get(h.get("job")) if isinstance(h.get("job"), str) else None
        if job is None:
            if t == P.ERROR:
                ev = {"type": P.ERROR, "code": h.get("code"), "message": h.get("message")}
                self.events.append(ev)
                if h.get("code") == P.E_VERSION:
                    self._fail(TrackingError(P.E_VERSION, str(h.get("message"))))
            return
        job._receive(h, payload)

    def wait_hello(self, timeout: float | None = None) -> dict:
        """Blocks until the server has greeted us; raises TrackingError on timeout or refusal."""
        end = time.monotonic() + (timeout or self.timeout)
        while self.server is None:
            if self.failure is not None:
                raise self.failure
            self.pump()
            if self.failure is not None:
                raise self.failure
            for ev in self.events:
                if ev.get("type") == P.ERROR:
                    raise TrackingError(ev["code"], ev["message"])
            if time.monotonic() > end:
                raise TrackingError(P.E_TIMEOUT, f"no answer from {self.address}")
            self.sock.poll(20)
        return self.server

    def submit(
        self,
        frames,
        queries,
        *,
        frame_count: int | None = None,
        frame_shape=None,
        dtype: str | None = None,
        colour: str | None = None,
        frame_range=None,
        direction: str = "both",
        working_size: int | None = 512,
        iters: int = 6,
        chunk: int = 4,
        paths=None,
        video: str | None = None,
        encoded=None,
        partial_interval: float = 1.0,
        refine: bool = True,
        comotion: bool = True,
        job_id: str | None = None,
    ) -> "Job":
        """Starts a job. ``frames``: (T,H,W,3) array, or ``callable(i) -> (H,W,3) array`` with
        ``frame_count``; ``paths``: instead of frames, one file per frame the server can read;
        ``video``: a movie file the server can read (with ``frame_count`` and ``frame_shape``);
        ``encoded``: one image file per frame that this machine reads and the server does not: their
        bytes are sent (read ahead on a helper thread) and the server decodes them as it would the files.
        ``queries``: (N,3) rows [frame, x, y], or a list with one (K,3) array of keyframes per point."""
        return Job(
            self,
            frames,
            queries,
            frame_count=frame_count,
            frame_shape=frame_shape,
            dtype=dtype,
            colour=colour,
            frame_range=frame_range,
            direction=direction,
            working_size=working_size,
            iters=iters,
            chunk=chunk,
            paths=paths,
            video=video,
            encoded=encoded,
            partial_interval=partial_interval,
            refine=refine,
            comotion=comotion,
            job_id=job_id,
        )

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for job in self.jobs.values():
                job._stop_reading()
            self.sock.close(linger=0)


class Job:
    """One tracking job. :meth:`poll` never blocks; ``done``, ``result``, ``error`` tell the outcome."""

    def __init__(
        self,
        conn: Connection,
        frames,
        queries,
        *,
        frame_count,
        frame_shape,
        dtype,
        colour,
        frame_range,
        direction,
        working_size,
        iters,
        chunk,
        paths,
        video=None,
        encoded=None,
        partial_interval=1.0,
        refine=True,
        comotion=True,
        job_id=None,
    ):
        self.conn = conn
        self.id = job_id or uuid.uuid4().hex
        self.events: list[dict] = []
        self.done = False
        self.accepted = False
        self.result: dict | None = None
        self.error: dict | None = None
        self.progress = (0, 0)  # tracking (done, total)
        self.uploaded = (0, 0)  # frames received by the server (done, total)
        self.stage = None  # what the server's tracker is doing ("network", "refinement", ...)
        self._first_frame = None
        self.partial: dict | None = None  # the latest partial trajectories
        self._files = None  # source "encoded": the files whose bytes are sent
        self._reader = None
        self._reads: dict = {}  # frame index -> Future of the file's bytes
        if encoded is not None:
            self._get = None
            self._paths = None
            self._files = [str(p) for p in encoded]
            bad = [p for p in self._files if not P.backend_reads(p)]
            if bad:
                raise ValueError(f"the backend cannot decode {bad[0]}: it reads {', '.join(P.IMAGE_SUFFIXES)}")
            frame_count = len(self._files)
            if frame_shape is None:
                raise ValueError("with encoded files, give frame_shape=(H, W)")
        elif video is not None:
            self._get = None
            self._paths = None
            if frame_count is None or frame_shape is None:
                raise ValueError("with video, give frame_count and frame_shape=(H, W)")
        elif paths is not None:
            self._get = None
            self._paths = [str(p) for p in paths]
            frame_count = len(self._paths)
            if frame_shape is None:
                raise ValueError("with paths, give frame_shape=(H, W)")
        elif isinstance(frames, np.ndarray):
            arr = frames
            if arr.ndim != 4 or arr.shape[-1] != 3:
                raise ValueError(f"frames must have shape (T,H,W,3), got {arr.shape}")
            frame_count = arr.shape[0]
            frame_shape = arr.shape[1:3]
            self._get = arr.__getitem__
        elif callable(frames):
            if frame_count is None:
                raise ValueError("a frames callable needs frame_count")
            self._get = frames
        else:
            raise TypeError("frames must be a (T,H,W,3) array or a callable(i) -> (H,W,3) array")
        if self._get is not None and (frame_shape is None or dtype is None):
            lo = frame_range[0] if frame_range else 0
            self._first_frame = (lo, np.asarray(self._get(lo)))
            frame_shape = frame_shape or self._first_frame[1].shape[:2]
            dtype = dtype or str(self._first_frame[1].dtype)
        dtype = dtype or "uint8"
        if colour is None:
            colour = "srgb" if dtype == "uint8" or paths is not None or video is not None else "linear"
        if isinstance(queries, (list, tuple)) and queries and np.ndim(queries[0]) == 2:
            per_point = [np.asarray(a, dtype=np.float64).reshape(-1, 3) for a in queries]
            q = np.concatenate(per_point)
            point_index = np.concatenate([np.full(len(a), i, np.int64) for i, a in enumerate(per_point)])
        else:
            q = np.asarray(queries, dtype=np.float64).reshape(-1, 3)
            point_index = None
        first, last = (0, int(frame_count) - 1) if frame_range is None else (int(frame_range[0]), int(frame_range[1]))
        source = (
            "video"
            if video is not None
            else "paths"
            if paths is not None
            else "encoded"
            if encoded is not None
            else "frames"
        )
        self.spec = P.JobSpec(
            self.id,
            int(frame_count),
            int(frame_shape[0]),
            int(frame_shape[1]),
            dtype,
            colour,
            q,
            first,
            last,
            direction,
            working_size,
            int(iters),
            source,
            point_index,
            float(partial_interval),
            None if video is None else str(video),
            bool(refine),
            bool(comotion),
        )
        self._assembly = P.TrajectoryAssembly(first, last, self.spec.points)
        self._next = first  # next frame index to upload
        self._chunk = max(1, min(int(chunk), P.MAX_FRAMES_PER_MESSAGE))
        conn.jobs[self.id] = self
        if conn.failure is not None:  # a dead connection: make a new Connection to retry
            self._finish({"type": P.ERROR, "code": conn.failure.code, "message": conn.failure.message})
            return
        conn._send(self.spec.submit_message())

    # -- uploading ---------------------------------------------------------------------------
    def _frame(self, i: int) -> np.ndarray:
        if self._first_frame is not None and self._first_frame[0] == i:
            img = self._first_frame[1]
            self._first_frame = None
        else:
            img = np.asarray(self._get(i))
        want = (self.spec.height, self.spec.width, 3)
        if img.shape != want:
            raise ValueError(f"frame {i} has shape {img.shape}, the job's frames are {want}")
        return np.ascontiguousarray(img, dtype=P.DTYPES[self.spec.dtype])  # no copy when it already fits

    def _upload_step(self) -> bool:
        """Sends one chunk if the socket can take it now; False when nothing (more) can go."""
        if self.done or not self.accepted or self._next > self.spec.last or self.spec.source == "video":
            return False
        if (self._next - self.spec.first) - self.uploaded[0] >= 2 * self._chunk:
            return False  # two chunks ahead of the server's acknowledgements at most
        if self.conn._outq or not (self.conn.sock.getsockopt(zmq.EVENTS) & zmq.POLLOUT):
            return False  # read frames only when the socket can take them now
        lo = self._next
        n = min(self._chunk, self.spec.last - lo + 1)
        if self._files is not None:
            parts = self._encoded_chunk(lo, n)
            if parts is None:
                return False  # still being read
        elif self._get is None:
            parts = [P.header(P.PATHS, self.id, first=lo, paths=self._paths[lo : lo + n])]
        else:
            try:
                images = [self._frame(i) for i in range(lo, lo + n)]
            except Exception as e:  # a bad frame from the caller fails the job, not the Blender session
                self.cancel()
                self._finish({"type": P.ERROR, "code": P.E_BAD_PAYLOAD, "message": f"reading frame: {e}"})
                return False
            parts = [P.header(P.FRAMES, self.id, first=lo, count=n), *images]
        if not self.conn._send(parts, queue_if_busy=False):
            return False
        self._next = lo + n
        return True

    def _encoded_chunk(self, lo: int, n: int):
        """The next ``encoded`` message once its files have been read (None while they are being
        read); keeps reading ahead up to two chunks, on a helper thread, never on the caller's."""
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="pipstrack-read")
        ahead = min(self.spec.last, lo + 3 * n - 1)
        for i in range(lo, ahead + 1):
            if i not in self._reads:
                self._reads[i] = self._reader.submit(_read_bytes, self._files[i])
        if not all(self._reads[i].done() for i in range(lo, lo + n)):
            return None
        try:
            data = [self._reads.pop(i).result() for i in range(lo, lo + n)]
        except OSError as e:  # the file went away or cannot be read: the job fails, the caller goes on
            self.cancel()
            self._finish({"type": P.ERROR, "code": P.E_READ_FAILED, "message": f"reading {e.filename}: {e.strerror}"})
            return None
        suffixes = [os.path.splitext(self._files[i])[1].lower() for i in range(lo, lo + n)]
        return [P.header(P.ENCODED, self.id, first=lo, suffixes=suffixes), *data]

    def _stop_reading(self) -> None:
        if self._reader is not None:
            self._reader.shutdown(wait=False, cancel_futures=True)
            self._reader = None
        self._reads.clear()

    # -- events ------------------------------------------------------------------------------
    def _receive(self, h: dict, payload) -> None:
        if self.done:
            return
        t = h["type"]
        try:
            if t == P.ACCEPTED:
                self.accepted = True
            elif t == P.PROGRESS:
                done, total = P.check_progress(h)
                phase = "upload" if h.get("phase") == "upload" else "track"
                if phase == "track":
                    self.progress = (done, total)
                    stage = h.get("stage")
                    self.stage = stage if isinstance(stage, str) and len(stage) <= 40 else None
                else:
                    self.uploaded = (done, total)
                self.events.append(
                    {"type": P.PROGRESS, "phase": phase, "done": done, "total": total, "stage": self.stage}
                )
            elif t in (P.PARTIAL, P.RESULT):
                if "parts" in h:  # chunks (and partial deltas), put together here
                    whole = self._assembly.add(h, payload)
                    if whole is None:
                        return  # more parts to come
                else:  # a server that predates chunks
                    whole = P.read_trajectories(h, payload)
                if t == P.PARTIAL:
                    self.partial = whole
                    self.events.append({"type": P.PARTIAL, **whole})
                else:
                    self.result = whole
                    self._finish({"type": P.RESULT, **whole})
            elif t == P.CANCELLED:
                self._finish({"type": P.CANCELLED, "reason": h.get("reason")})
            elif t == P.ERROR:
                self._finish({"type": P.ERROR, "code": h.get("code"), "message": h.get("message")})
        except P.ProtocolError as e:
            self._finish({"type": P.ERROR, "code": e.code, "message": f"bad message from the server: {e.message}"})

    def _finish(self, event: dict) -> None:
        if self.done:
            return
        self.done = True
        if event["type"] == P.ERROR:
            self.error = event
        self.events.append(event)
        self._get = None  # drop the caller's frames
        self._stop_reading()

    def poll(self, budget_s: float = 0.02) -> list[dict]:
        """New events since the last call (progress, partial, result, cancelled, error); never
        waits, and uploads for about ``budget_s``."""
        self.conn.pump(budget_s)
        with self.conn._lock:  # the keepalive thread may be receiving
            out, self.events = self.events, []
            if self.done:
                self.conn.jobs.pop(self.id, None)  # its last events are in ``out``
        return out

    def forget(self) -> None:
        """Leaves the connection: nobody polls this job any more, its later events are dropped."""
        with self.conn._lock:  # the keepalive thread may be receiving
            self.conn.jobs.pop(self.id, None)
            self._stop_reading()

    def cancel(self) -> None:
        """Asks the server to stop; a ``cancelled`` event follows (within one tracking window)."""
        if not self.done:
            self.conn._send([P.header(P.CANCEL, self.id)])

    def wait(self, timeout: float | None = None, on_event=None) -> dict:
        """Blocks until the job ends: the result dict, or raises TrackingError."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            for ev in self.poll():
                if on_event is not None:
                    on_event(ev)
            if self.done:
                break
            if end is not None and time.monotonic() > end:
                self.cancel()
                raise TrackingError(P.E_TIMEOUT, f"job {self.id} did not finish within {timeout:g} s")
            self.conn.sock.poll(10)
        if self.result is not None:
            return self.result
        if self.error is not None:
            raise TrackingError(str(self.error["code"]), str(self.error["message"]))
        raise TrackingError("cancelled", "the job was cancelled")


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def track(address: str, frames, queries, *, keys_dir=None, timeout: float | None = None, **options) -> dict:
    """Blocking convenience for scripts: submit, upload, wait, return the result dict."""
    conn = Connection(address, keys_dir=keys_dir)
    try:
        return conn.submit(frames, queries, **options).wait(timeout)
    finally:
        conn.close()


def ping(address: str, timeout: float = 3.0, keys_dir=None) -> dict:
    """The server's hello_ok header (version, protocol, model, device); raises TrackingError."""
    conn = Connection(address, keys_dir=keys_dir, timeout=timeout)
    try:
        return conn.wait_hello(timeout)
    finally:
        conn.close()
