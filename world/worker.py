"""`serve`: the ZeroMQ worker that runs worlds for clients (docs/protocol.md).

Two threads, each owning its sockets (the vLLM engine-core / ZeroMQ-guide split):

- `WorkerIO` owns the ROUTER. It decodes every incoming message into a typed request, answers
  malformed ones with an error and pings with a pong itself, and hands valid requests to the
  compute loop through a bounded queue. It also forwards the compute loop's outgoing messages
  (received on an inproc PAIR) to the ROUTER.
- The compute loop (`WorkerCore` driven by `_compute_loop`) applies requests to sessions, expires
  silent sessions and produces chunks for the sessions whose clients are fewer than their
  session's lookahead (the client's choice, at most `max_unacked`) chunks behind: sessions of one
  model and sampler as one batch, every such session once per round (world/batching.py). It never
  touches the ROUTER, so a slow backend cannot stall the socket, and a failing request is
  answered with an error, never raised out of the loop.

Memory is bounded everywhere: the inbound queue has a size (the I/O thread stops reading when it
is full, which pushes back per peer through ZeroMQ's fair queueing), HWMs are finite, action
queues are bounded and each session has at most `max_unacked` unacknowledged chunks.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import queue
import secrets
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from world import protocol as P
from world.backends.model_cache import MODELS
from world.backends.registry import SESSION_DEFAULTS, backend_names, create_backend
from world.batching import BatchScheduler, Made, produce_batch
from world.errors import BackendError, PromptError
from world.session import Session
from world.start import StartImageError, decode_start_image

log = logging.getLogger("world.worker")

DEFAULT_BIND = "tcp://127.0.0.1:5555"
# Options only the operator sets (command line): a client must not pick files or devices. A start
# image reaches the backend from the open request's image frame, never as an option.
WORKER_ONLY_OPTIONS = frozenset({"device", "checkpoint", "start_image"})
# Opens carrying a start image (up to 4 MiB each) that may wait for the compute loop at once; more
# are answered `busy`, so queued images never hold more than this many times the image limit.
MAX_PENDING_IMAGES = 4
# Options that size buffers; range-checked before a backend ever sees them.
SIZE_OPTIONS = {"height": (8, 1024), "width": (8, 1024), "chunk_frames": (1, 16)}


@dataclass
class WorkerConfig:
    bind: str = DEFAULT_BIND
    session_timeout_s: float = 30.0
    max_sessions: int = 8
    # Flow control: the most chunks a session may have generated and not yet acknowledged; the largest
    # lookahead granted (`serve --max-unacked`, also spelled `--window`; `window` in status replies).
    max_unacked: int = 2
    max_batch: int = 8  # sessions of one model and sampler whose chunks run as one batch (1: one at a time)
    max_queued_actions: int = P.MAX_QUEUED_ACTIONS
    inbound_queue: int = 1024  # decoded requests waiting for the compute loop
    hwm: int = 1000  # ZeroMQ send/receive high-water marks (messages)
    backend_options: dict[str, dict] = field(default_factory=dict)  # operator defaults per backend


@dataclass(frozen=True)
class Inbound:
    identity: bytes
    request: P.Message
    received: float


@dataclass(frozen=True)
class Outgoing:
    identity: bytes
    frames: list[bytes]


def _out(identity: bytes, message: P.Message) -> Outgoing:
    return Outgoing(identity, P.encode(message))


@dataclass
class IOStats:
    """Counters written by the I/O thread, read (racily, which is fine for ints) by status."""

    received: int = 0
    rejected: int = 0
    sent: int = 0
    dropped: int = 0


@dataclass
class CoreStats:
    sessions_opened: int = 0
    sessions_closed: int = 0
    sessions_expired: int = 0
    chunks_produced: int = 0
    errors: int = 0


def rss_bytes() -> int | None:
    """Resident set size of this process (Linux /proc), None where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


# -------------------------------------------------------------------------------------------
# Compute side: sessions, requests, production. No sockets in here.


class WorkerCore:
    """All session state and request handling; `handle`/`expire`/`produce_next` return the
    messages to send, so it is testable without sockets."""

    def __init__(self, config: WorkerConfig, instance: str, io_stats: IOStats | None = None):
        self.config = config
        self.instance = instance
        self.sessions: dict[str, Session] = {}
        self.stats = CoreStats()
        self.io_stats = io_stats or IOStats()
        self.started = time.monotonic()
        self.scheduler = BatchScheduler(config.max_batch)
        self._handlers: dict[type, Callable[[Inbound], list[Outgoing]]] = {
            P.Open: self._open,
            P.Input: self._input,
            P.Actions: self._actions,
            P.Prompt: self._prompt,
            P.Reset: self._reset,
            P.Ack: self._ack,
            P.Close: self._close,
            P.Ping: self._ping,
            P.Status: self._status,
        }

    # -- entry points ----------------------------------------------------------------------------

    def handle(self, item: Inbound) -> list[Outgoing]:
        """Apply one request. Never raises: failures become error replies."""
        self._touch(item.identity, item.received)
        request = item.request
        try:
            return self._handlers[type(request)](item)
        except P.ProtocolError as exc:
            exc.ref, exc.extra["request"] = request.ref, request.TYPE
            return [self._error(item.identity, P.error_for(exc, getattr(request, "session", None)))]
        except Exception as exc:  # a backend bug must not take the worker down
            log.exception("request %s failed", request.TYPE)
            error = P.Error(
                code=P.INTERNAL,
                message=f"{type(exc).__name__}: {exc}"[:500],
                ref=request.ref,
                session=getattr(request, "session", None),
                request=request.TYPE,
            )
            return [self._error(item.identity, error)]

    def expire(self, now: float) -> list[Outgoing]:
        """Close sessions whose client has been silent for longer than the session timeout."""
        limit = self.config.session_timeout_s
        stale = [s for s in self.sessions.values() if now - s.last_seen > limit]
        out = []
        for session in stale:
            log.info("session %s silent for %.1f s: closing", session.sid, now - session.last_seen)
            self.stats.sessions_expired += 1
            out.append(self._drop(session, "timeout"))
        return out

    def produce_next(self) -> list[Outgoing]:
        """Generate the next batch (world/batching.py: due sessions of one model and sampler, every due
        session once per round); [] if none is due."""
        batch = self.scheduler.next_batch(list(self.sessions.values()))
        out: list[Outgoing] = []
        for session, made in produce_batch(batch, self.scheduler.rounds):
            out += self._produced(session, made)
        return out

    def close_all(self, reason: str = "shutdown") -> list[Outgoing]:
        return [self._drop(s, reason) for s in list(self.sessions.values())]

    # -- helpers ---------------------------------------------------------------------------------

    def _touch(self, identity: bytes, now: float) -> None:
        # Any message from a client keeps all of its sessions alive (pings included).
        for session in self.sessions.values():
            if session.owner == identity:
                session.last_seen = max(session.last_seen, now)

    def _error(self, identity: bytes, error: P.Error) -> Outgoing:
        self.stats.errors += 1
        return _out(identity, error)

    def _session(self, item: Inbound) -> Session:
        sid = item.request.session
        session = self.sessions.get(sid)
        if session is None or session.owner != item.identity:
            raise P.ProtocolError(P.UNKNOWN_SESSION, f"no open session {sid!r} for this client")
        return session

    def _drop(self, session: Session, reason: str, ref: P.Ref = None) -> Outgoing:
        del self.sessions[session.sid]
        self.stats.sessions_closed += 1
        try:
            session.close()
        except Exception:
            log.exception("closing backend of session %s failed", session.sid)
        return _out(session.owner, P.Closed(session=session.sid, reason=reason, ref=ref))

    def _produced(self, session: Session, made: Made) -> list[Outgoing]:
        """A session's chunk from a batch, or its own failure (an error, and the session ends)."""
        try:
            if isinstance(made, Exception):
                raise made
            out = [Outgoing(session.owner, P.encode_chunk(*made))]
        except Exception as exc:
            log.exception("session %s: backend failed", session.sid)
            error = P.Error(code=P.BACKEND_ERROR, message=f"generation failed: {exc}"[:500], session=session.sid)
            return [self._error(session.owner, error), self._drop(session, "error")]
        self.stats.chunks_produced += 1
        return out

    # -- request handlers ------------------------------------------------------------------------

    def _open(self, item: Inbound) -> list[Outgoing]:
        req: P.Open = item.request
        if len(self.sessions) >= self.config.max_sessions:
            raise P.ProtocolError(P.TOO_MANY_SESSIONS, f"the worker serves at most {self.config.max_sessions} sessions")
        lookahead = self._lookahead(req.lookahead)  # checked before a backend is built
        self._check_backend_name(req.backend)
        options, worker_set = self._start_options(req)
        backend = self._create_backend(req.backend, options, worker_set)
        try:
            self._check_info(backend.info)
            start = time.perf_counter()
            backend.reset(req.seed, req.prompt)
            reset_ms = (time.perf_counter() - start) * 1000.0  # the reset view's gen_ms, if it has one
        except PromptError as exc:
            backend.close()
            raise P.ProtocolError(P.BAD_PROMPT, str(exc)) from None
        except BaseException:
            backend.close()
            raise
        sid = secrets.token_hex(8)
        session = Session(
            sid,
            item.identity,
            req.backend,
            backend,
            req.prompt,
            req.seed,
            self.config.max_queued_actions,
            item.received,
            lookahead,
            reset_ms=reset_ms,
        )
        self.sessions[sid] = session
        self.stats.sessions_opened += 1
        info = session.info
        opened = P.Opened(
            session=sid,
            backend=req.backend,
            height=info.height,
            width=info.width,
            chunk_frames=info.chunk_frames,
            fps=info.fps,
            description=info.description,
            prompt=req.prompt,
            seed=req.seed,
            window=session.lookahead,
            worker=self.instance,
            ref=req.ref,
            start=session.start,
            start_notice=session.start_notice,
        )
        return [_out(item.identity, opened)]

    @staticmethod
    def _start_options(req: P.Open) -> tuple[dict, dict]:
        """(client options, worker-set backend arguments) for the world's start. An open with an
        image frame starts from that image (options.start is "image" or absent); its bytes are
        decoded here, untrusted, so a bad image is a `bad_image` error and never reaches a backend."""
        options = dict(req.options)
        if req.start_image is None:
            if options.get("start") == "image":
                raise P.ProtocolError(P.BAD_OPTION, "start 'image' needs the image: send the PNG or JPEG file's bytes "
                                      "as the open request's second frame (header field start_image)")  # fmt: skip
            return options, {}
        start = options.setdefault("start", "image")
        if start != "image":
            raise P.ProtocolError(P.BAD_OPTION, f"the open carries a start image but asks for start {start!r:.40}; "
                                  "an image comes with start 'image'")  # fmt: skip
        try:
            image = decode_start_image(req.start_image)
        except StartImageError as exc:
            raise P.ProtocolError(P.BAD_IMAGE, str(exc)) from None
        return options, {"start_image": image}

    def _lookahead(self, requested: int | None) -> int:
        """The session's lookahead: the client's, at most the operator's --max-unacked (which bounds
        every session's memory and the worker's run-ahead work)."""
        most = self.config.max_unacked
        if requested is None:
            return most
        if requested > most:
            raise P.ProtocolError(P.BAD_LOOKAHEAD, f"lookahead {requested} is above this worker's window of {most}")
        return requested

    @staticmethod
    def _check_backend_name(name: str) -> None:
        if name not in backend_names():
            raise P.ProtocolError(
                P.UNKNOWN_BACKEND, f"unknown backend {name!r}; available: {', '.join(backend_names())}"
            )

    def _create_backend(self, name: str, options: dict, worker_set: dict | None = None):
        """Build the backend: session defaults (world.backends.registry.SESSION_DEFAULTS), then the operator's
        defaults, then the client's options, then what the worker sets itself (a start image)."""
        self._check_backend_name(name)
        check_client_options(options)
        merged = {**SESSION_DEFAULTS.get(name, {}), **self.config.backend_options.get(name, {}), **options,
                  **(worker_set or {})}  # fmt: skip
        try:
            return create_backend(name, **merged)
        except TypeError as exc:  # unexpected keyword: an option this backend does not have
            raise P.ProtocolError(P.BAD_OPTION, f"backend {name!r} rejected the options: {exc}") from None
        except BackendError as exc:
            # A backend refusing the client's options says so with BackendError; without client
            # options the failure is the backend's own (missing checkpoint, bad device, ...).
            raise P.ProtocolError(P.BAD_OPTION if options else P.BACKEND_ERROR, str(exc)) from None
        except ValueError as exc:
            raise P.ProtocolError(P.BAD_OPTION, f"backend {name!r} rejected the options: {exc}") from None

    @staticmethod
    def _check_info(info) -> None:
        size = info.chunk_frames * info.height * info.width * 3
        if not (info.chunk_frames > 0 and info.height > 0 and info.width > 0 and info.fps > 0):
            raise P.ProtocolError(P.BACKEND_ERROR, f"backend reports an unusable geometry: {info}")
        if size > P.MAX_PAYLOAD_BYTES:
            raise P.ProtocolError(P.TOO_LARGE, f"a chunk would be {size} bytes; the limit is {P.MAX_PAYLOAD_BYTES}")

    def _input(self, item: Inbound) -> list[Outgoing]:
        self._session(item).set_held(item.request.action)
        return []

    def _actions(self, item: Inbound) -> list[Outgoing]:
        self._session(item).queue_actions(item.request.actions)
        return []

    def _prompt(self, item: Inbound) -> list[Outgoing]:
        session = self._session(item)
        session.set_prompt(item.request.prompt)
        return [self._ok(item, session)]

    def _reset(self, item: Inbound) -> list[Outgoing]:
        session = self._session(item)
        try:
            session.reset(item.request.seed)
        except Exception as exc:  # the world is half reset: end the session rather than stream garbage
            log.exception("session %s: reset failed", session.sid)
            error = P.Error(
                code=P.BACKEND_ERROR,
                message=f"reset failed: {exc}"[:500],
                ref=item.request.ref,
                session=session.sid,
                request="reset",
            )
            return [self._error(item.identity, error), self._drop(session, "error")]
        return [self._ok(item, session)]

    def _ok(self, item: Inbound, session: Session) -> Outgoing:
        ok = P.Ok(
            request=item.request.TYPE,
            session=session.sid,
            seq=session.next_seq,
            epoch=session.epoch,
            ref=item.request.ref,
        )
        return _out(item.identity, ok)

    def _ack(self, item: Inbound) -> list[Outgoing]:
        self._session(item).ack(item.request.seq)
        return []

    def _close(self, item: Inbound) -> list[Outgoing]:
        return [self._drop(self._session(item), "client", item.request.ref)]

    def _ping(self, item: Inbound) -> list[Outgoing]:
        return []  # the I/O thread already answered; arriving here refreshed liveness

    def _status(self, item: Inbound) -> list[Outgoing]:
        now = time.monotonic()
        detail = self._session(item).describe(now) if item.request.session is not None else None
        return [
            _out(item.identity, P.StatusReply(worker=self.worker_status(now), session=detail, ref=item.request.ref))
        ]

    def worker_status(self, now: float) -> dict:
        io, core = self.io_stats, self.stats
        return {
            "version": P.PROTOCOL_VERSION,
            "instance": self.instance,
            "uptime_s": round(now - self.started, 3),
            "sessions": len(self.sessions),
            "max_sessions": self.config.max_sessions,
            "window": self.config.max_unacked,  # wire name: the largest lookahead granted
            "chunks_produced": core.chunks_produced,
            "sessions_opened": core.sessions_opened,
            "sessions_closed": core.sessions_closed,
            "sessions_expired": core.sessions_expired,
            "errors": core.errors + io.rejected,
            "messages_received": io.received,
            "messages_sent": io.sent,
            "dropped_sends": io.dropped,
            "rss_bytes": rss_bytes(),
            **MODELS.stats(),  # shared world models: loaded, held, reused
        }


def check_client_options(options: dict) -> None:
    """Refuse options clients may not set and sizes that would exhaust memory."""
    for key, value in options.items():
        if key == "start_image":
            raise P.ProtocolError(P.BAD_OPTION, "a start image is not an option: send the file's bytes as the open "
                                  "request's second frame (header field start_image)")  # fmt: skip
        if key in WORKER_ONLY_OPTIONS:
            raise P.ProtocolError(P.BAD_OPTION, f"option {key!r} is set by the worker operator, not clients")
        if key in SIZE_OPTIONS:
            lo, hi = SIZE_OPTIONS[key]
            if not P.is_int(value) or not lo <= value <= hi:
                raise P.ProtocolError(P.BAD_OPTION, f"option {key!r} must be an integer in [{lo}, {hi}]")


# -------------------------------------------------------------------------------------------
# I/O side: the only code that touches the ROUTER.


class WorkerIO(threading.Thread):
    """Owns the ROUTER and the I/O end of the outbound PAIR (see module docstring)."""

    BATCH = 256  # messages moved per poll round in each direction, so neither starves the other

    def __init__(
        self,
        router: zmq.Socket,
        pair: zmq.Socket,
        inbound: queue.Queue,
        stop: threading.Event,
        instance: str,
        stats: IOStats,
        on_failure: Callable[[], None] = lambda: None,
        image_slots: threading.Semaphore | None = None,
    ):
        super().__init__(name="worker-io", daemon=True)
        self.router, self.pair, self.inbound, self.stop = router, pair, inbound, stop
        self.instance = instance
        self.stats = stats
        # Taken for each open with a start image handed to the compute loop, which gives it back.
        self.image_slots = image_slots or threading.BoundedSemaphore(MAX_PENDING_IMAGES)
        self.on_failure = on_failure  # a deaf worker is worse than a dead one: stop it all
        self.failed = False

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self._poll_once(timeout_ms=100)
            self._forward_outbound()  # best effort: shutdown notices already queued
        except Exception:
            log.exception("I/O thread failed")
            self.failed = True
            self.on_failure()
        finally:
            self.router.close(linger=0)
            self.pair.close(linger=0)

    def _poll_once(self, timeout_ms: int) -> None:
        poller = zmq.Poller()
        poller.register(self.pair, zmq.POLLIN)
        if not self.inbound.full():  # stop reading while the compute loop is behind: back-pressure
            poller.register(self.router, zmq.POLLIN)
        ready = dict(poller.poll(timeout_ms))
        if self.pair in ready:
            self._forward_outbound()
        if self.router in ready:
            self._receive_inbound()

    def _forward_outbound(self) -> None:
        for _ in range(self.BATCH):
            try:
                frames = self.pair.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._send(frames[0], frames[1:])

    def _receive_inbound(self) -> None:
        for _ in range(self.BATCH):
            if self.inbound.full():
                return
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.stats.received += 1
            self._on_message(frames[0], frames[1:])

    def _decode(self, identity: bytes, frames: list[bytes]) -> P.Message | None:
        """The typed request, or None after answering with the error."""
        try:
            return P.decode_request(frames)
        except P.ProtocolError as exc:
            error = P.error_for(exc)
        except Exception as exc:  # a validation bug must cost one message, not the I/O thread
            log.exception("decoding a request failed")
            error = P.Error(code=P.INTERNAL, message=f"{type(exc).__name__} while decoding")
        self.stats.rejected += 1
        self._send(identity, P.encode(error))
        return None

    def _on_message(self, identity: bytes, frames: list[bytes]) -> None:
        request = self._decode(identity, frames)
        if request is None:
            return
        if isinstance(request, P.Ping):  # answered here so heartbeats never wait for a chunk
            self._send(identity, P.encode(P.Pong(worker=self.instance, ref=request.ref)))
        image = carries_image(request)
        if image and not self.image_slots.acquire(blocking=False):
            self._busy(identity, request, "too many start images are waiting to be decoded")
            return
        try:
            self.inbound.put_nowait(Inbound(identity, request, time.monotonic()))
        except queue.Full:
            if image:
                self.image_slots.release()
            if not isinstance(request, P.Ping):
                self._busy(identity, request, "worker is busy")

    def _busy(self, identity: bytes, request: P.Message, why: str) -> None:
        self.stats.rejected += 1
        busy = P.Error(code=P.BUSY, message=f"{why}; retry", ref=request.ref, request=request.TYPE)
        self._send(identity, P.encode(busy))

    def _send(self, identity: bytes, frames: list[bytes]) -> None:
        # NOBLOCK + ROUTER_MANDATORY: a peer that is gone or not reading loses this message instead
        # of blocking the worker or growing a queue.
        try:
            self.router.send_multipart([identity, *frames], zmq.NOBLOCK)
            self.stats.sent += 1
        except zmq.ZMQError:
            self.stats.dropped += 1


def open_router(context: zmq.Context, config: WorkerConfig) -> tuple[zmq.Socket, str]:
    """Bind the ROUTER; returns it and the actual endpoint (the port is filled in for :0 / :*)."""
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.SNDHWM, config.hwm)
    router.setsockopt(zmq.RCVHWM, config.hwm)
    router.setsockopt(zmq.MAXMSGSIZE, P.MAX_TRANSPORT_FRAME_BYTES)
    try:
        router.bind(config.bind)
    except zmq.ZMQError:
        router.close(linger=0)
        raise
    return router, router.getsockopt(zmq.LAST_ENDPOINT).decode()


def carries_image(request: P.Message) -> bool:
    return isinstance(request, P.Open) and request.start_image is not None


def _compute_loop(core: WorkerCore, inbound: queue.Queue, pair: zmq.Socket, stop: threading.Event,
                  image_slots: threading.Semaphore | None = None) -> None:  # fmt: skip
    """Apply requests, expire sessions, produce one chunk per round; block briefly when idle."""
    waiting: list[Inbound] = []
    while not stop.is_set():
        out: list[Outgoing] = []
        for item in waiting + _drain(inbound, limit=1024):
            out += core.handle(item)
            if image_slots is not None and carries_image(item.request):
                image_slots.release()  # its bytes are decoded (or refused) and dropped
        out += core.expire(time.monotonic())
        produced = core.produce_next()
        _emit(pair, out + produced, stop)
        waiting = []
        if not out and not produced:
            try:
                waiting = [inbound.get(timeout=0.05)]
            except queue.Empty:
                pass


def _emit(pair: zmq.Socket, messages: list[Outgoing], stop: threading.Event) -> None:
    """Hand messages to the I/O thread; waits while its queue is full, gives up once stopping."""
    for message in messages:
        while not pair.poll(100, zmq.POLLOUT):
            if stop.is_set():
                return
        pair.send_multipart([message.identity, *message.frames], zmq.NOBLOCK)


def _drain(inbound: queue.Queue, limit: int) -> list[Inbound]:
    items = []
    for _ in range(limit):
        try:
            items.append(inbound.get_nowait())
        except queue.Empty:
            break
    return items


def serve(config: WorkerConfig, stop: threading.Event, on_ready: Callable[[str], None] | None = None) -> bool:
    """Run the worker until `stop` is set; `on_ready(endpoint)` is called once it is listening.
    Returns False if it stopped because the I/O thread failed."""
    context = zmq.Context()
    instance = secrets.token_hex(8)
    router, endpoint = open_router(context, config)
    pair_io, pair_compute = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    address = f"inproc://worker-out-{instance}"
    pair_io.bind(address)
    pair_compute.connect(address)
    stats = IOStats()
    inbound: queue.Queue = queue.Queue(maxsize=config.inbound_queue)
    core = WorkerCore(config, instance, stats)
    io_stop = threading.Event()
    image_slots = threading.BoundedSemaphore(MAX_PENDING_IMAGES)
    io_thread = WorkerIO(router, pair_io, inbound, io_stop, instance, stats, on_failure=stop.set,
                         image_slots=image_slots)  # fmt: skip
    io_thread.start()
    if on_ready is not None:
        on_ready(endpoint)
    try:
        _compute_loop(core, inbound, pair_compute, stop, image_slots)
    finally:
        _emit(pair_compute, core.close_all("shutdown"), stop)
        io_stop.set()
        io_thread.join(timeout=5.0)
        pair_compute.close(linger=0)
        context.term()
    return not io_thread.failed


# -------------------------------------------------------------------------------------------
# Command line and subprocess helpers.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bind",
        default=DEFAULT_BIND,
        help="ZeroMQ endpoint to bind (port 0 or * picks a free port); default %(default)s",
    )
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="close sessions silent for S seconds (default %(default)s)",
    )
    parser.add_argument("--max-sessions", type=int, default=8, help="concurrent sessions (default %(default)s)")
    parser.add_argument(
        "--max-unacked",
        "--window",
        dest="max_unacked",
        metavar="N",
        type=int,
        default=2,
        help="chunks generated ahead of a client's last ack; the most a session's lookahead may ask for "
        "(default %(default)s)",
    )
    parser.add_argument("--max-batch", type=int, default=8, metavar="N",
                        help="chunks of sessions sharing a model and sampler made in one batch, at most N "
                        "(1: one chunk at a time, round robin) (default %(default)s)")  # fmt: skip
    parser.add_argument("--device", default=None, help="device for the generated backend (cpu, cuda, auto)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint directory for the generated backend")
    parser.add_argument(
        "--backend-module",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first so it can register extra backends (repeatable)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level on stderr (default %(default)s)")


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    if args.session_timeout <= 0 or args.max_sessions < 1 or args.max_unacked < 1 or args.max_batch < 1:
        raise SystemExit("serve: --session-timeout must be > 0, --max-sessions, --max-unacked and --max-batch >= 1")
    generated = {k: v for k, v in (("device", args.device), ("checkpoint", args.checkpoint)) if v is not None}
    return WorkerConfig(
        bind=args.bind,
        session_timeout_s=args.session_timeout,
        max_sessions=args.max_sessions,
        max_unacked=args.max_unacked,
        max_batch=args.max_batch,
        backend_options={"generated": generated} if generated else {},
    )


def _warn_if_exposed(bind: str) -> None:
    host = bind.split("://", 1)[-1].rsplit(":", 1)[0]
    if not bind.startswith(("inproc://", "ipc://")) and host not in ("127.0.0.1", "localhost", "[::1]", "::1"):
        log.warning("binding %s: the worker is reachable from other machines and has no authentication", bind)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for module in args.backend_module:
        importlib.import_module(module)
    config = config_from_args(args)
    _warn_if_exposed(config.bind)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def ready(endpoint: str) -> None:
        log.info("serving on %s (backends: %s)", endpoint, ", ".join(backend_names()))
        print(f"READY {endpoint}", flush=True)  # the one stdout line; parents read the port from it

    try:
        clean = serve(config, stop, ready)
    except zmq.ZMQError as exc:
        log.error("cannot bind %s: %s", config.bind, exc)
        return 1
    log.info("worker stopped")
    return 0 if clean else 1


class WorkerStartError(RuntimeError):
    """The worker subprocess exited or stayed silent before printing READY."""


REPO_ROOT = Path(__file__).resolve().parents[1]


def start_worker_process(
    bind: str = "tcp://127.0.0.1:0", extra_args: Sequence[str] = (), timeout_s: float = 30.0,
    env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """Launch `python run_world.py serve --bind BIND ...` and wait (bounded) for its READY line.

    Returns (process, endpoint). stderr is inherited so the worker's log shows up with ours; `env`
    replaces the environment it starts with (default: ours).
    """
    cmd = [sys.executable, str(REPO_ROOT / "run_world.py"), "serve", "--bind", bind, *extra_args]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, env=env)
    try:
        endpoint = _wait_ready(proc, timeout_s)
    except BaseException:
        stop_worker_process(proc)
        raise
    # Keep draining stdout so a chatty worker can never block on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, endpoint


def _wait_ready(proc: subprocess.Popen, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(timeout=min(left, 0.5)):
                continue
            line = proc.stdout.readline()
            if line.startswith("READY "):
                return line.split(None, 1)[1].strip()
            if not line and proc.poll() is not None:
                raise WorkerStartError(f"worker exited with code {proc.returncode} before READY")
    raise WorkerStartError(f"worker printed no READY line within {timeout_s} s")


def stop_worker_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> int:
    """SIGTERM, wait up to timeout_s, then SIGKILL. Returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
    return proc.returncode
