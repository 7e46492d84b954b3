"""The worker's I/O side and its loop: `serve(config, stop)` runs a worker (docs/protocol.md).

Two threads, each owning its sockets (the vLLM engine-core / ZeroMQ-guide split):

- `WorkerIO` owns the ROUTER. It decodes every incoming message into a typed request, answers
  malformed ones with an error and pings with a pong itself, and hands valid requests to the
  compute loop through a bounded queue. It also forwards the compute loop's outgoing messages
  (received on an inproc PAIR) to the ROUTER.
- The compute loop (`WorkerCore` driven by `_compute_loop`) applies requests to sessions, expires
  silent sessions and produces chunks for the sessions whose clients are fewer than their
  session's lookahead (the client's choice, at most `max_unacked`) chunks behind: sessions of one
  model and sampler as one batch, every such session once per round (world/server/batching.py). It never
  touches the ROUTER, so a slow backend cannot stall the socket, and a failing request is
  answered with an error, never raised out of the loop.

Memory is bounded everywhere: the inbound queue has a size (the I/O thread stops reading when it
is full, which pushes back per peer through ZeroMQ's fair queueing), HWMs are finite, action
queues are bounded and each session has at most `max_unacked` unacknowledged chunks.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable

import zmq

from world.server import protocol as P
from world.server import wire
from world.server.auth import secure_server, start_authenticator
from world.server.core import WorkerCore
from world.server.jobs import ThreadPerJobExecutor
from world.server.ratelog import RateLimitedLog
from world.server.worker_config import MAX_PENDING_IMAGES, Inbound, IOStats, Outgoing, WorkerConfig

log = logging.getLogger("world.worker")


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
        heard: dict[bytes, float] | None = None,
        authenticated: bool = False,
    ):
        super().__init__(name="worker-io", daemon=True)
        # identity -> receipt time of its latest message, any message (read by the compute loop's
        # expiry: a loop busy for a while must not count the time as the client's silence).
        self.heard = heard if heard is not None else {}
        self.authenticated = authenticated  # read each message's client key (CURVE User-Id)
        self.log = RateLimitedLog(log)
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
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=not self.authenticated)
            except zmq.Again:
                return
            user = None
            if self.authenticated:  # the key ZAP accepted, for per-key session caps
                user = frames[-1].get("User-Id")
                frames = [f.bytes for f in frames]
            self.stats.received += 1
            self.heard[frames[0]] = time.monotonic()
            self._on_message(frames[0], frames[1:], user)

    def _decode(self, identity: bytes, frames: list[bytes]) -> P.Message | None:
        """The typed request, or None after answering with the error."""
        try:
            return wire.decode_request(frames)
        except P.ProtocolError as exc:
            error = wire.error_for(exc)
        except Exception as exc:  # a validation bug must cost one message, not the I/O thread
            self.log.warning("decoding a request failed: %s: %.200s", type(exc).__name__, exc)
            error = P.Error(code=P.INTERNAL, message=f"{type(exc).__name__} while decoding")
        self.stats.rejected += 1
        self._send(identity, wire.encode(error))
        return None

    def _on_message(self, identity: bytes, frames: list[bytes], user: str | None = None) -> None:
        request = self._decode(identity, frames)
        if request is None:
            return
        if isinstance(request, P.Ping):  # answered here so heartbeats never wait for a chunk
            self._send(identity, wire.encode(P.Pong(worker=self.instance, ref=request.ref)))
        image = carries_image(request)
        if image and not self.image_slots.acquire(blocking=False):
            self._busy(identity, request, "too many start images are waiting to be decoded")
            return
        try:
            self.inbound.put_nowait(Inbound(identity, request, time.monotonic(), user))
        except queue.Full:
            if image:
                self.image_slots.release()
            if not isinstance(request, P.Ping):
                self._busy(identity, request, "worker is busy")

    def _busy(self, identity: bytes, request: P.Message, why: str) -> None:
        self.stats.rejected += 1
        busy = P.Error(code=P.BUSY, message=f"{why}; retry in 1 s", ref=request.ref, request=request.TYPE,
                       retry_after_s=1.0)  # fmt: skip
        self._send(identity, wire.encode(busy))

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
    if config.keys is not None:
        secure_server(router, config.keys)
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
    authenticator = start_authenticator(context, config.keys) if config.keys is not None else None
    router, endpoint = open_router(context, config)
    pair_io, pair_compute = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    address = f"inproc://worker-out-{instance}"
    pair_io.bind(address)
    pair_compute.connect(address)
    stats = IOStats()
    inbound: queue.Queue = queue.Queue(maxsize=config.inbound_queue)
    heard: dict[bytes, float] = {}
    # Jobs (building sessions, first chunks, resets) run here, never on the compute loop. Up to a
    # thread per admitted session (each has at most one job; opening ones count as admitted), so one
    # client's slow jobs never make another's wait for a thread; threads end when idle, so no job
    # thread's OpenMP team outlives its work beside the compute loop's (world/server/jobs.py).
    # Threads still busy when the worker stops do not delay it: `run` exits without waiting for them.
    executor = ThreadPerJobExecutor(max_workers=config.max_sessions, thread_name_prefix="worker-job")
    core = WorkerCore(config, instance, stats, executor=executor, heard=heard)
    core.calibrate("engine")
    io_stop = threading.Event()
    image_slots = threading.BoundedSemaphore(MAX_PENDING_IMAGES)
    io_thread = WorkerIO(router, pair_io, inbound, io_stop, instance, stats, on_failure=stop.set,
                         image_slots=image_slots, heard=heard, authenticated=config.security == "curve")  # fmt: skip
    io_thread.start()
    if on_ready is not None:
        on_ready(endpoint)
    try:
        _compute_loop(core, inbound, pair_compute, stop, image_slots)
    finally:
        _emit(pair_compute, core.close_all("shutdown"), stop)
        io_stop.set()
        io_thread.join(timeout=5.0)
        executor.shutdown(wait=False, cancel_futures=True)
        pair_compute.close(linger=0)
        if authenticator is not None:
            authenticator.stop()
        context.term()
    return not io_thread.failed

