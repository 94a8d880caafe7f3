"""``pipstrack serve``: a long-running tracking service over ZeroMQ (protocol: pipstrack.wire.protocol).

Why a service: Blender must never freeze while tracking runs, and the GPU may be on another
machine. The model is loaded once; many clients submit many jobs. One ROUTER socket is served
by the main thread (headers checked, frames stored, pings answered, cancels acted on at once),
and one worker thread runs :meth:`Tracker.track` on the queued jobs, round robin between
clients so one artist's long shot does not starve everybody else.

Frames are stored as they arrive already converted to 8-bit and resized to the network's
working size, exactly as the tracker itself would do it, so a 4K float clip costs the server
a few hundred kB per frame and the trajectories equal an in-process ``Tracker.track`` call.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import shutil
import signal
import stat
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from ..conventions import resize_to_working, to_display, working_size
from ..io.frames import FrameReadError, decode_image_bytes
from ..wire import protocol as P
from ..wire.client import LOCAL_USER, local_token_path, read_local_token

log = logging.getLogger("pipstrack.service")
MAX_JOBS_PER_CLIENT = 64  # unfinished jobs (receiving, queued, running) per connection


class ServiceError(RuntimeError):
    """The service cannot start (bad address, missing keys, insecure bind refused)."""


# -- files the server reads ------------------------------------------------------------------
class FileAccess:
    """Which files a ``paths`` or ``video`` job may make the server read: regular files only
    (a FIFO or a device would block the worker), and with ``roots`` only inside those folders.
    A refused path gets the same answer whether it exists or not: no oracle of what is there."""

    def __init__(self, roots=()):
        self.roots = [os.path.realpath(os.path.expanduser(r)) for r in roots]

    def _refused(self, path: str, job: str):
        where = f" inside {', '.join(self.roots)}" if self.roots else ""
        return P.ProtocolError(P.E_NOT_ALLOWED, f"{path}: not a regular file this server may read{where}", job)

    def check_path(self, path: str, job: str) -> str:
        """The resolved path, if a job may name it (nothing is opened)."""
        real = os.path.realpath(path)
        if self.roots and not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots):
            raise self._refused(path, job)
        return real

    def read_bytes(self, path: str, job: str) -> bytes:
        """The file's bytes; never blocks on a FIFO or a device (opened non-blocking, checked)."""
        real = self.check_path(path, job)
        try:
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:  # inside the allowed folders, saying so tells nothing new
            raise P.ProtocolError(P.E_READ_FAILED, f"{path}: no such file on the server", job) from None
        except OSError:
            raise self._refused(path, job) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise self._refused(path, job)
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read()
        finally:
            os.close(fd)

    def check_regular(self, path: str, job: str) -> str:
        real = self.check_path(path, job)
        try:
            mode = os.stat(real).st_mode
        except FileNotFoundError:
            raise P.ProtocolError(P.E_READ_FAILED, f"{path}: no such movie file on the server", job) from None
        except OSError:
            raise self._refused(path, job) from None
        if not stat.S_ISREG(mode):
            raise self._refused(path, job)
        return real


# -- frames --------------------------------------------------------------------------------
class ReceivedFrames:
    """A FrameSource for the tracker: the job's frames, stored at the working size.

    ``size`` is the source size (so positions map as usual) while ``read`` returns frames
    already resized with the tracker's own rule, which it then uses unchanged.
    """

    def __init__(self, spec: P.JobSpec, work: tuple[int, int], files: FileAccess | None = None):
        self.spec = spec
        self.files = files or FileAccess()
        self.size = (spec.height, spec.width)
        self.work = work
        self.frames: dict[int, np.ndarray] = {}
        self.paths: dict[int, str] = {}
        self.video = None  # source "video": opened on the worker thread
        self.frame_numbers = list(range(spec.frame_count))
        self.name = f"job {spec.job}"

    def __len__(self) -> int:
        return self.spec.frame_count

    def _shrink(self, img: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(resize_to_working(img, self.work))

    def put(self, index: int, img: np.ndarray) -> None:
        if self.spec.first <= index <= self.spec.last:
            self.frames[index] = self._shrink(to_display(img, linear=self.spec.colour == "linear"))

    def put_encoded(self, index: int, suffix: str, data) -> None:
        """An image file's bytes: decoded now (on the intake thread), kept at the working size."""
        if self.spec.first <= index <= self.spec.last:
            self.frames[index] = self._decode(data, suffix, f"frame {index} ({suffix} file)")

    def _decode(self, data, suffix: str, what: str) -> np.ndarray:
        """An image file's bytes -> the working-size frame, as a local image sequence decodes it;
        a file that does not decode, or has another size than the job's, fails the job."""
        try:
            img = decode_image_bytes(data, suffix)
        except FrameReadError as e:
            raise P.ProtocolError(P.E_READ_FAILED, f"{what}: {e}", self.spec.job) from None
        if img.shape != (self.spec.height, self.spec.width, 3):
            raise P.ProtocolError(
                P.E_READ_FAILED,
                f"{what} is {img.shape[1]}x{img.shape[0]}, the job says {self.spec.width}x{self.spec.height}",
                self.spec.job,
            )
        return self._shrink(to_display(img))

    def put_path(self, index: int, path: str) -> None:
        if self.spec.first <= index <= self.spec.last:
            self.files.check_path(path, self.spec.job)  # outside the allowed folders: refused now
            self.paths[index] = path

    def _open_video(self):
        if self.video is None:
            from ..io.frames import VideoFrames

            path = self.spec.video
            video = VideoFrames(self.files.check_regular(path, self.spec.job))
            if tuple(video.size) != self.size or len(video) < self.spec.frame_count:
                raise P.ProtocolError(
                    P.E_READ_FAILED,
                    f"{path} is {video.size[1]}x{video.size[0]} with {len(video)} frames; "
                    f"the job says {self.size[1]}x{self.size[0]} with {self.spec.frame_count}",
                    self.spec.job,
                )
            self.video = video
        return self.video

    @property
    def complete(self) -> bool:
        if self.spec.source == "video":
            return True
        need = self.spec.last - self.spec.first + 1
        return len(self.frames) + len(self.paths) >= need

    def read(self, index: int) -> np.ndarray:
        if index in self.frames:
            return self.frames[index]
        if self.spec.source == "video":
            return self._shrink(self._open_video().read(index))
        path = self.paths[index]  # read lazily, on the worker thread
        data = self.files.read_bytes(path, self.spec.job)
        return self._decode(data, os.path.splitext(path)[1], f"frame {index} ({path})")


# -- jobs and the fair queue -----------------------------------------------------------------
class Job:
    def __init__(self, client: bytes, spec: P.JobSpec, frames: ReceivedFrames):
        self.client = client
        self.spec = spec
        self.frames = frames
        self.cancel = threading.Event()
        self.state = "receiving"  # -> queued -> running -> finished; changed only through move()
        self._state_lock = threading.Lock()  # the socket, intake and worker threads all move it
        self.silent = False  # its client is gone: nothing more is sent
        self.memory = 0  # bytes its frames may take at the working size (the budget it holds)
        self.in_intake = 0  # chunks received, not yet stored: the client's credit in use
        self.credit = threading.Lock()  # in_intake is counted on the socket and intake threads
        self.stage = None  # while running: the tracker's stage ("network", "refinement", ...)
        self.beat = 0.0  # while running: when the tracker last reported (monotonic)
        self.stalled = False  # the watchdog has logged it as stuck

    def move(self, frm: tuple, to: str) -> bool:
        """Moves the job to state ``to`` if it is in one of ``frm`` now (atomically): the one
        thread that wins a transition does what follows it (queue, run, finish), never two."""
        with self._state_lock:
            if self.state not in frm:
                return False
            self.state = to
            return True


class FairQueue:
    """Ready jobs, one FIFO per client, served round robin between clients."""

    def __init__(self):
        self.cond = threading.Condition()
        self.queues: collections.OrderedDict[bytes, collections.deque] = collections.OrderedDict()
        self.stopped = False

    def put(self, job: Job) -> None:
        with self.cond:
            self.queues.setdefault(job.client, collections.deque()).append(job)
            self.cond.notify()

    def remove(self, job: Job) -> bool:
        with self.cond:
            q = self.queues.get(job.client)
            if q is not None and job in q:
                q.remove(job)
                return True
            return False

    def get(self) -> Job | None:
        """The next job: the first client in the rotation with a job, which then goes last."""
        with self.cond:
            while not self.stopped:
                for client in list(self.queues):
                    q = self.queues[client]
                    if q:
                        job = q.popleft()
                        self.queues.move_to_end(client)
                        if job.move(("queued",), "running"):
                            return job
                        continue  # finished (cancelled) meanwhile: not run
                    del self.queues[client]
                self.cond.wait(0.5)
            return None

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


# -- the server ----------------------------------------------------------------------------
JOB_MEMORY_MB = 4096  # one job's frames at the working size (a 512x288 frame is 0.44 MB)
MEMORY_MB = 8192  # all jobs' frames together
WATCHDOG_S = 30.0  # a running job that reports nothing this long is logged as stuck, naming its stage
CREDIT_CHUNKS = 3  # the client sends two ahead of acknowledgements; one more for timing


def job_frame_bytes(spec: P.JobSpec, work) -> int:
    """What a job's frames take in the server: working-size RGB for uploaded ones (frames,
    encoded files); paths and movies are read when needed."""
    if spec.source not in ("frames", "encoded"):
        return 0
    return (spec.last - spec.first + 1) * int(work[0]) * int(work[1]) * 3


class Server:
    def __init__(
        self,
        model,
        *,
        bind="tcp://127.0.0.1:5555",
        device="auto",
        keys_dir=None,
        insecure=False,
        client_timeout=None,
        context=None,
        threads=None,
        precision="auto",
        allow_roots=(),
        job_memory_mb=None,
        memory_mb=None,
    ):
        from ..engine.tracker import resolve_device, resolve_precision

        resolve_precision(precision, resolve_device(device))  # a bad choice fails at start, not per job
        self.precision = precision
        self.files = FileAccess(allow_roots)
        # Frame memory: what one job's frames (kept at the working size) may take, and all jobs'
        # together; a job over the first is too large, one over the second must wait (busy).
        env = os.environ
        self.job_budget = int((job_memory_mb or P.env_float(env, "PIPSTRACK_JOB_MEMORY_MB", JOB_MEMORY_MB)) * 2**20)
        self.total_budget = int((memory_mb or P.env_float(env, "PIPSTRACK_MEMORY_MB", MEMORY_MB)) * 2**20)
        self.threads = threads  # for every job's Tracker: None (as torch is), a number, or "auto"
        self.watchdog_s = P.env_float(env, "PIPSTRACK_WATCHDOG_S", WATCHDOG_S)
        self.chunk_bytes = int(P.env_float(env, "PIPSTRACK_CHUNK_BYTES", P.TRAJECTORY_CHUNK_BYTES))
        self.running: Job | None = None  # the worker's job (read by the watchdog)

        if not P.is_loopback(bind) and keys_dir is None and not insecure:
            raise ServiceError(
                f"refusing to bind {bind} without encryption: other machines could reach it. "
                "Make keys with `pipstrack keys DIR` and pass --keys DIR, or pass --insecure on a trusted network"
            )
        self.model = model
        self.device = resolve_device(device)
        self.model.to(self.device).eval()
        self.bind = bind
        self.client_timeout = client_timeout or P.env_float(os.environ, "PIPSTRACK_CLIENT_TIMEOUT", P.CLIENT_TIMEOUT)
        self.ctx = context or zmq.Context.instance()
        self.auth = None
        self._reload_asked = threading.Event()
        self._allowed: Path | None = None  # --keys: the folder of allowed client keys
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 500)
        # libzmq disconnects a peer that sends a bigger frame before it is ever buffered whole;
        # the environment may lower the limit (a small server, or the tests).
        self.max_part = min(
            P.MAX_PART_BYTES, int(P.env_float(os.environ, "PIPSTRACK_MAX_PART_BYTES", P.MAX_PART_BYTES))
        )
        self.sock.setsockopt(zmq.MAXMSGSIZE, self.max_part)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if keys_dir is not None:
            self._secure(Path(keys_dir).expanduser())
        elif P.is_loopback(bind):  # always: --insecure is about other machines
            self._local_auth()
        else:
            log.warning(
                "serving %s WITHOUT encryption or authentication (--insecure): anyone who can reach it can use it", bind
            )
        try:
            self.sock.bind(bind)
        except zmq.ZMQError as e:
            self.close()
            raise ServiceError(f"cannot bind {bind}: {e}") from None
        self.jobs: dict[tuple[bytes, str], Job] = {}
        self.last_seen: dict[bytes, float] = {}
        self.fair = FairQueue()
        self.outbox: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.worker = threading.Thread(target=self._work, name="pipstrack-worker", daemon=True)
        self.intake: queue.Queue = queue.Queue()
        self.converter = threading.Thread(target=self._convert, name="pipstrack-intake", daemon=True)

    def _secure(self, keys: Path) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        secret = keys / "server.key_secret"
        allowed = keys / "authorized_clients"
        if not secret.is_file() or not allowed.is_dir():
            raise ServiceError(
                f"{keys} has no server.key_secret or authorized_clients/: make it with `pipstrack keys {keys}`"
            )
        public, private = zmq.auth.load_certificate(str(secret))
        self.auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("pipstrack.service.auth"))
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(allowed))
        self._allowed = allowed
        self.sock.curve_secretkey = private
        self.sock.curve_publickey = public
        self.sock.curve_server = True
        log.info("CurveZMQ on: clients must hold a key listed in %s", allowed)

    def _local_auth(self) -> None:
        """On loopback, only this user's processes get in: they present the token in this user's
        configuration folder (ZMQ PLAIN, checked by a ZAP authenticator), which only this user
        can read. Other users of a shared machine are refused at the handshake."""
        from zmq.auth.thread import ThreadAuthenticator

        token = ensure_local_token()
        auth_log = logging.getLogger("pipstrack.service.auth")
        auth_log.setLevel(max(auth_log.getEffectiveLevel(), logging.INFO))  # its debug lines print passwords
        self.auth = ThreadAuthenticator(self.ctx, log=auth_log)
        self.auth.start()
        self.auth.configure_plain(domain="*", passwords={LOCAL_USER: token})
        self.sock.plain_server = True
        log.info("local token on: clients must read %s (this user's)", local_token_path())

    # -- main loop ---------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Serves until :meth:`stop` (or SIGINT/SIGTERM via :func:`serve`)."""
        self.worker.start()
        self.converter.start()
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        next_sweep = time.monotonic()
        while not self.stopping.is_set():
            if poller.poll(50):
                burst_end = time.monotonic() + 0.05  # bounded, so worker output goes out between bursts
                while time.monotonic() < burst_end:
                    try:
                        parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._handle(parts)
            self._flush()
            if self._reload_asked.is_set():
                self._reload_keys()
            if time.monotonic() >= next_sweep:
                self._sweep()
                next_sweep = time.monotonic() + 0.25
        self._shutdown()

    def stop(self, *_):
        self.stopping.set()

    def reload(self, *_):
        """SIGHUP: re-reads ``authorized_clients/`` (a key added or removed takes effect without a
        restart; connected clients keep their session). Safe from a signal handler: the main
        loop does the reading."""
        self._reload_asked.set()

    def _reload_keys(self) -> None:
        self._reload_asked.clear()
        if self._allowed is None:
            log.info("SIGHUP: no keys to reload (the server runs without --keys)")
            return
        try:
            self.auth.configure_curve(domain="*", location=str(self._allowed))
        except Exception as e:  # a broken key file must not take the server down
            log.error("SIGHUP: could not reload %s: %s; keeping the keys loaded before", self._allowed, e)
            return
        log.info("SIGHUP: reloaded %d client key(s) from %s", len(list(self._allowed.glob("*.key"))), self._allowed)

    def _send(self, client: bytes, parts: list) -> None:
        try:
            self.sock.send_multipart([client, *parts], copy=False)
        except zmq.ZMQError as e:  # peer gone or HWM: never take the server down
            log.debug("could not send to %s: %s", client.hex(), e)

    def _handle(self, parts) -> None:
        client = bytes(parts[0].buffer)
        self.last_seen[client] = time.monotonic()
        try:
            h, payload = P.parse(parts[1:])
            getattr(self, "_on_" + h["type"])(client, h, payload)
        except P.ProtocolError as e:
            log.info("client %s: %s: %s", client.hex()[:8], e.code, e.message)
            self._send(client, P.error_message(e.code, e.message, e.job))
        except Exception as e:  # a bug here must not take the service down for everybody
            log.exception("client %s: handling a message failed", client.hex()[:8])
            self._send(
                client,
                P.error_message(P.E_BAD_MESSAGE, f"the server could not handle this message: {type(e).__name__}: {e}"),
            )

    def _job(self, client: bytes, h: dict) -> Job:
        job = self.jobs.get((client, h["job"]))
        if job is None:
            raise P.ProtocolError(P.E_UNKNOWN_JOB, f"no job {h['job']!r} from this client", h["job"])
        return job

    # -- message handlers --------------------------------------------------------------------
    def _on_hello(self, client, h, payload):
        from ..engine.tracker import torch_build

        self._send(
            client,
            [
                P.header(
                    P.HELLO_OK,
                    None,
                    protocol=P.PROTOCOL_VERSION,
                    server=_version(),
                    model=str(getattr(self.model, "source", "unknown")),
                    device=str(self.device),
                    torch=torch_build(),
                    client_timeout=self.client_timeout,
                    heartbeat=P.HEARTBEAT_INTERVAL,
                    limits={
                        "max_part_bytes": self.max_part,
                        "max_frames_per_message": P.MAX_FRAMES_PER_MESSAGE,
                        "max_frames": P.MAX_FRAMES,
                        "max_points": P.MAX_POINTS,
                    },
                )
            ],
        )

    def _on_ping(self, client, h, payload):
        asked = h.get("jobs", [])
        if not isinstance(asked, list) or len(asked) > 1000 or not all(isinstance(j, str) for j in asked):
            raise P.ProtocolError(P.E_BAD_FIELD, "'jobs' in a ping must be a list of job ids")
        unknown = [j for j in asked if (client, j) not in self.jobs]
        self._send(client, [P.header(P.PONG, None, unknown=unknown)])

    def _on_submit(self, client, h, payload):
        spec = P.check_submit(h, payload)
        if spec.source == "frames" and spec.frame_bytes > self.max_part:
            raise P.ProtocolError(
                P.E_TOO_LARGE,
                f"one frame is {spec.frame_bytes} bytes; this server accepts at most {self.max_part}",
                spec.job,
            )
        if sum(1 for c, _ in self.jobs if c == client) >= MAX_JOBS_PER_CLIENT:
            raise P.ProtocolError(
                P.E_TOO_LARGE, f"this client already has {MAX_JOBS_PER_CLIENT} unfinished jobs", spec.job
            )
        if (client, spec.job) in self.jobs:
            raise P.ProtocolError(P.E_DUPLICATE_JOB, f"job {spec.job!r} is already in use by this client", spec.job)
        work = working_size(spec.height, spec.width, spec.working_size)
        need = job_frame_bytes(spec, work)
        if need > self.job_budget:
            raise P.ProtocolError(
                P.E_TOO_LARGE,
                f"the job's frames take {need / 2**20:.0f} MB at the working size {work[1]}x{work[0]}; "
                f"this server takes at most {self.job_budget / 2**20:.0f} MB per job (split the range, "
                "or use a smaller working size)",
                spec.job,
            )
        held = sum(j.memory for j in self.jobs.values() if j.state != "finished")
        if held + need > self.total_budget:
            raise P.ProtocolError(
                P.E_BUSY,
                f"the server's frame memory is taken by other jobs ({held / 2**20:.0f} of "
                f"{self.total_budget / 2**20:.0f} MB); try again when they finish",
                spec.job,
            )
        job = Job(client, spec, ReceivedFrames(spec, work, self.files))
        job.memory = need
        self.jobs[(client, spec.job)] = job
        if spec.source == "video" and job.move(("receiving",), "queued"):  # nothing to upload: ready now
            self.fair.put(job)
        log.info(
            "job %s from %s: %d frames %dx%d %s, %d points",
            spec.job,
            client.hex()[:8],
            spec.last - spec.first + 1,
            spec.width,
            spec.height,
            spec.dtype,
            len(spec.queries),
        )
        self._send(client, [P.header(P.ACCEPTED, spec.job, first=spec.first, last=spec.last, working_size=list(work))])

    def _on_frames(self, client, h, payload):
        job = self._receiving(client, h)
        first, images = P.check_frames(h, payload, job.spec)
        self._take_credit(job)
        self.intake.put((job, first, images, None, None))  # converted off the socket thread

    def _on_paths(self, client, h, payload):
        job = self._receiving(client, h)
        first, paths = P.check_paths(h, payload, job.spec)
        self.intake.put((job, first, None, paths, None))

    def _on_encoded(self, client, h, payload):
        job = self._receiving(client, h)
        first, files = P.check_encoded(h, payload, job.spec)
        self._take_credit(job)
        self.intake.put((job, first, None, None, files))  # decoded off the socket thread

    def _take_credit(self, job) -> None:
        """A client may have at most CREDIT_CHUNKS chunks of a job waiting to be stored (it is
        told each one is stored by an upload ``progress``): one that pushes more is refused, so
        a raw client cannot fill the server's memory faster than it converts."""
        with job.credit:
            over = job.in_intake >= CREDIT_CHUNKS
            job.in_intake += 0 if over else 1
        if over:
            job.cancel.set()
            self._finish(job)  # its frames are freed now
            raise P.ProtocolError(
                P.E_TOO_LARGE,
                f"more than {CREDIT_CHUNKS} chunks sent ahead of the server's acknowledgements; the job is dropped",
                job.spec.job,
            )

    def _receiving(self, client, h) -> Job:
        job = self._job(client, h)
        if job.state != "receiving":
            raise P.ProtocolError(P.E_BAD_STATE, f"job {job.spec.job!r} already has all its frames", job.spec.job)
        return job

    def _convert(self) -> None:
        """Intake thread: converts received frames (display transform, resize; a 4K float frame
        takes a second on a small CPU) so the socket thread stays free for pings and cancels.
        Each chunk is acknowledged with an upload ``progress`` once stored: the client sends
        only a few chunks ahead of these acknowledgements, which bounds memory on both sides."""
        while True:
            item = self.intake.get()
            if item is None:
                return
            job, first, images, paths, files = item
            if images or files:
                with job.credit:
                    job.in_intake -= 1
            store = job.frames
            if store is None or job.cancel.is_set():
                continue
            try:
                for k, img in enumerate(images or []):
                    store.put(first + k, img)
                for k, path in enumerate(paths or []):
                    store.put_path(first + k, path)
                for k, (suffix, data) in enumerate(files or []):
                    store.put_encoded(first + k, suffix, data)
            except P.ProtocolError as e:  # a file that does not decode: the error names its frame
                job.cancel.set()
                self.outbox.put((job, P.error_message(e.code, e.message, job.spec.job)))
                self.outbox.put((job, None))
                continue
            except Exception as e:  # e.g. a frame cv2 cannot resize: the job fails, the server stays
                log.exception("job %s: converting frames failed", job.spec.job)
                job.cancel.set()
                self.outbox.put((job, P.error_message(P.E_BAD_PAYLOAD, f"converting frames: {e}", job.spec.job)))
                self.outbox.put((job, None))
                continue
            spec = job.spec
            self.outbox.put(
                (
                    job,
                    [
                        P.header(
                            P.PROGRESS,
                            spec.job,
                            phase="upload",
                            done=len(store.frames) + len(store.paths),
                            total=spec.last - spec.first + 1,
                        )
                    ],
                )
            )
            if store.complete and not job.cancel.is_set() and job.move(("receiving",), "queued"):
                self.fair.put(job)

    def _on_cancel(self, client, h, payload):
        job = self._job(client, h)
        self._cancel(job, reason="cancelled by the client")

    def _cancel(self, job: Job, reason: str, silent: bool = False) -> None:
        """Queued or receiving jobs end now; a running one at the tracker's next window."""
        job.silent = job.silent or silent
        job.cancel.set()
        if not job.move(("receiving",), "finished") and not self.fair.remove(job):
            return  # the worker has it (or is about to): it reports "cancelled" and forgets it
        self._finish(job)
        if not job.silent:
            self._send(job.client, [P.header(P.CANCELLED, job.spec.job, reason=reason)])

    def _finish(self, job: Job) -> None:
        """Forgets ``job`` (socket thread). Only this job: its client may already have reused the
        id for a new one, which a late cleanup of the old one must not drop."""
        job.move(("receiving", "queued", "running"), "finished")
        job.frames = None  # frees the frames now
        key = (job.client, job.spec.job)
        if self.jobs.get(key) is job:
            del self.jobs[key]

    def _sweep(self) -> None:
        """Cancels and drops the jobs of clients that stopped sending heartbeats; logs a running
        job that has reported nothing for ``watchdog_s`` (the stage it is stuck in, once)."""
        now = time.monotonic()
        job = self.running
        if job is not None and job.beat and not job.stalled and now - job.beat > self.watchdog_s:
            job.stalled = True
            log.warning(
                "watchdog: job %s has reported nothing for %.0f s, in stage %r%s",
                job.spec.job,
                now - job.beat,
                job.stage,
                " (cancelled, waiting for the stage to check)" if job.cancel.is_set() else "",
            )
        for client, seen in list(self.last_seen.items()):
            if now - seen > self.client_timeout:
                del self.last_seen[client]
                jobs = [j for (c, _), j in self.jobs.items() if c == client]
                if jobs:
                    log.warning(
                        "client %s silent for %.0f s: dropping its %d job(s)", client.hex()[:8], now - seen, len(jobs)
                    )
                for j in jobs:
                    self._cancel(j, "client timed out", silent=True)

    def _shutdown(self) -> None:
        log.info("stopping: cancelling %d job(s)", len(self.jobs))
        for job in list(self.jobs.values()):
            if not job.silent:
                self._send(
                    job.client,
                    P.error_message(P.E_SHUTDOWN, "the server is shutting down; the job was cancelled", job.spec.job),
                )
            self._cancel(job, "server shutdown", silent=True)
        self.fair.stop()
        self.intake.put(None)
        self.worker.join(timeout=30)
        self.converter.join(timeout=30)
        self.close()

    def close(self) -> None:
        self.sock.close(linger=500)
        if self.auth is not None:
            self.auth.stop()
            self.auth = None

    # -- worker thread -----------------------------------------------------------------------
    def _work(self) -> None:
        from ..engine.tracker import Tracker, TrackingCancelled

        while True:
            job = self.fair.get()
            if job is None:
                return
            spec = job.spec
            if job.cancel.is_set():  # cancelled while it waited (or while it was being queued)
                self.outbox.put((job, [P.header(P.CANCELLED, spec.job, reason="cancelled")]))
                self.outbox.put((job, None))
                continue
            last_sent = [0.0]
            holder = {}

            def progress(done, total, job=job):
                now = time.monotonic()
                stage = getattr(holder.get("tracker"), "stage", None)
                if job.stalled:
                    log.info("watchdog: job %s goes on (stage %r)", job.spec.job, stage)
                job.beat, job.stage, job.stalled = now, stage, False
                if done >= total or now - last_sent[0] > 0.1:
                    last_sent[0] = now
                    self.outbox.put(
                        (
                            job,
                            [
                                P.header(
                                    P.PROGRESS,
                                    job.spec.job,
                                    phase="track",
                                    stage=stage,
                                    done=int(done),
                                    total=int(total),
                                )
                            ],
                        )
                    )

            sent = {}  # the partial trajectories sent last (deltas are against them)

            def partial(res, job=job):
                if job.silent:
                    return
                spec = job.spec
                if not spec.chunked:  # a client that predates chunks: the whole arrays each time
                    msg = P.trajectories_message(P.PARTIAL, spec.job, spec.first, res.xy, res.visible, res.confidence)
                    self.outbox.put((job, msg))
                    return
                rows = P.changed_rows(sent.get("last"), res.xy, res.visible, res.confidence)
                if rows is None:
                    return
                lo, hi = rows
                for msg in P.trajectory_chunks(
                    P.PARTIAL,
                    spec.job,
                    spec.first + lo,
                    res.xy[lo:hi],
                    res.visible[lo:hi],
                    res.confidence[lo:hi],
                    delta=True,
                    chunk_bytes=self.chunk_bytes,
                ):
                    self.outbox.put((job, msg))
                sent["last"] = {"xy": res.xy.copy(), "visible": res.visible.copy(), "confidence": res.confidence.copy()}

            t0 = time.perf_counter()
            try:
                tracker = Tracker(
                    self.model,
                    device=self.device,
                    iters=spec.iters,
                    working_long_side=spec.working_size,
                    refine=spec.refine,
                    comotion=spec.comotion,
                    threads=self.threads,
                    anchored_at="working",  # the server keeps a job's frames at the working size only
                    precision=self.precision,
                )
                holder["tracker"] = tracker
                job.beat, job.stage, self.running = time.monotonic(), "starting", job
                result = tracker.track(
                    job.frames,
                    spec.anchors(),
                    frame_range=(spec.first, spec.last),
                    direction=spec.direction,
                    progress=progress,
                    cancel=job.cancel,
                    partial=partial if spec.partial_interval > 0 else None,
                    partial_interval=spec.partial_interval,
                )
                whole = dict(
                    verified=result.verified if spec.verified else None,
                    working_size=list(result.working_size),
                    seconds=round(time.perf_counter() - t0, 4),
                    # Counts only (docs/protocol.md); the per-stage seconds stay in the library's result.
                    stats={k: int(v) for k, v in result.stats.items() if not isinstance(v, dict)},
                )
                arrays = (P.RESULT, spec.job, spec.first, result.xy, result.visible, result.confidence)
                if spec.chunked:
                    *chunks, msg = P.trajectory_chunks(*arrays, chunk_bytes=self.chunk_bytes, **whole)
                    for chunk in chunks:
                        self.outbox.put((job, chunk))
                else:
                    msg = P.trajectories_message(*arrays, **whole)
                log.info("job %s done in %.2f s", spec.job, time.perf_counter() - t0)
            except TrackingCancelled:
                msg = [P.header(P.CANCELLED, spec.job, reason="cancelled")]
                log.info("job %s cancelled", spec.job)
            except P.ProtocolError as e:
                msg = P.error_message(e.code, e.message, spec.job)
            except Exception as e:  # the job fails, the service stays up
                log.exception("job %s failed", spec.job)
                code = P.E_READ_FAILED if type(e).__name__ == "FrameReadError" else P.E_TRACKING_FAILED
                msg = P.error_message(code, f"{type(e).__name__}: {e}", spec.job)
            self.running = None
            self.outbox.put((job, msg))
            self.outbox.put((job, None))  # marker: forget the job on the socket thread

    def _flush(self) -> None:
        """Sends what the worker produced; a ``None`` marker forgets the job (self.jobs is socket-thread only)."""
        while True:
            try:
                job, parts = self.outbox.get_nowait()
            except queue.Empty:
                return
            if parts is None:
                self._finish(job)
            elif not job.silent:
                self._send(job.client, parts)


def _version() -> str:
    try:
        from .. import __version__

        return __version__
    except Exception:  # pragma: no cover
        return "unknown"


def serve(model, **kwargs) -> None:
    """Runs a :class:`Server` until SIGINT/SIGTERM, then cancels running jobs and exits cleanly."""
    server = Server(model, **kwargs)
    previous = {s: signal.signal(s, server.stop) for s in (signal.SIGINT, signal.SIGTERM)}
    if hasattr(signal, "SIGHUP"):  # not on Windows
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, server.reload)
    log.info(
        "pipstrack %s serving %s (protocol %d, model %s, device %s)",
        _version(),
        server.bind,
        P.PROTOCOL_VERSION,
        getattr(model, "source", "?"),
        server.device,
    )
    try:
        server.serve_forever()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    log.info("stopped")


def ensure_local_token() -> str:
    """This user's local token (see :func:`pipstrack.wire.client.local_token_path`), made on
    first use: 64 hex digits in a file created 0600 in a 0700 folder, linked into place whole
    (two servers starting at once end with one token). One readable by others is refused."""
    import secrets

    path = local_token_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".local-token-{os.getpid()}-{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_hex(32) + "\n")
            try:
                os.link(tmp, path)  # fails if another server made one meanwhile: that one is used
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise ServiceError(f"{path} can be read by other users: `chmod 600 {path}` (or delete it to make a new one)")
    token = read_local_token()
    if token is None:
        raise ServiceError(f"{path} holds no token: delete it to make a new one")
    return token


def make_keys(directory, client_name: str = "client") -> dict:
    """Creates (once) the server key pair and a client key pair, and allows that client. Secret
    keys are written inside a private (0700) temporary folder, made 0600 there and only then moved
    into place: no other user can ever read one, not even while it is being written."""
    import tempfile

    import zmq.auth

    if not client_name or os.sep in client_name or client_name.startswith("."):
        raise ServiceError(f"--name {client_name!r}: a plain name such as 'artist1'")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    allowed = d / "authorized_clients"
    allowed.mkdir(exist_ok=True)
    if (d / f"{client_name}.key_secret").exists():
        raise ServiceError(f"{d / (client_name + '.key_secret')} exists already; choose another --name")
    made = {}
    with tempfile.TemporaryDirectory(dir=d, prefix=".keys-") as tmp:  # mkdtemp: mode 0700
        names = ([] if (d / "server.key_secret").exists() else ["server"]) + [client_name]
        for name in names:
            zmq.auth.create_certificates(tmp, name)
            os.chmod(Path(tmp) / f"{name}.key_secret", 0o600)
        if client_name in names:
            shutil.copy(Path(tmp) / f"{client_name}.key", allowed / f"{client_name}.key")
        for name in names:
            for suffix in (".key", ".key_secret"):
                os.replace(Path(tmp) / f"{name}{suffix}", d / f"{name}{suffix}")
            made["server" if name == "server" else "client"] = d / f"{name}.key_secret"
    return made
