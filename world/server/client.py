"""`WorldClient`: the client side of the worker protocol (docs/protocol.md).

One client drives one session over a DEALER socket. It is single-threaded and never blocks
except in `open`, `reconnect`, `status` and `close` (each bounded by `timeout_s`); everything the
worker sends arrives through `poll`, which also sends the heartbeat. Typical loop:

    client = WorldClient("tcp://127.0.0.1:5555")
    info = client.open("engine", "green hills at noon", seed=1)
    while running:
        client.send_input(current_action)          # only when the held keys change
        for event in client.poll(timeout_ms=10):
            if isinstance(event, ChunkEvent):
                show(event.frames)                  # [F, H, W, 3] uint8
                client.ack(event.seq)               # lets the worker generate the next chunk
        if not client.connected:
            client.reconnect()
    client.close()
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import zmq

from world.actions import Action
from world.procedural.themes import EXAMPLE_PROMPTS
from world.server import protocol as P
from world.server import wire
from world.server.auth import ClientKeys, secure_client

DEFAULT_PROMPT = EXAMPLE_PROMPTS[0]
INFO_FIELDS = (
    "session",
    "backend",
    "height",
    "width",
    "chunk_frames",
    "fps",
    "description",
    "prompt",
    "seed",
    "window",
    "start",  # what the world's first chunk starts from (generated backend), else None
    "start_notice",  # why the start is not the one asked for (e.g. "start: text (the engine does not know ...)")
    "security",  # "curve" (authenticated, encrypted) or "none"
    "notice",  # what the worker tells every client, e.g. that it runs --insecure beyond loopback
    "resumed",  # after a resuming reconnect: {seq, chunk, frame, epoch} the world went on from, else None
)
RESUME_HISTORY = 64  # received, unacknowledged chunks whose resume points are kept


class WorldConnectionError(ConnectionError):
    """The worker did not answer within the timeout (down, restarted, unreachable)."""


class WorldRequestError(RuntimeError):
    """The worker refused a blocking request (open, status); `code` is the protocol error code."""

    def __init__(self, code: str, message: str, retry_after_s: float | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s  # on "busy": when trying again may succeed


@dataclass(frozen=True)
class ChunkEvent:
    """One chunk of frames. records: one dataset-form dict per frame (docs/dataset.md)."""

    seq: int
    frames: np.ndarray  # [F, H, W, 3] uint8
    records: list[dict]
    gen_ms: float
    steps: int
    nfe: int
    epoch: int = 0  # resets so far
    chunk: int = 0  # chunk index since open/reset
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ErrorEvent:
    """A request failed (code from docs/protocol.md), or "session_closed" when the worker ended it."""

    code: str
    message: str
    ref: P.Ref = None
    request: str | None = None


@dataclass(frozen=True)
class StatusEvent:
    worker: dict
    session: dict | None = None


Event = ChunkEvent | ErrorEvent | StatusEvent


@dataclass
class _OpenSpec:
    """What `reconnect` re-opens: the last backend/options/lookahead, current prompt and seed."""

    backend: str
    prompt: str
    seed: int
    options: dict
    lookahead: int | None = None
    start_image: bytes | None = None


@dataclass(frozen=True)
class ResumePoint:
    """Where the world goes on after the last acknowledged chunk: the counters of the chunk after it,
    the backend's resume state from its `extra.resume`, and its last frame (a generated world
    resumes from that picture)."""

    seq: int
    chunk: int
    frame: int
    epoch: int
    state: dict
    last_frame: np.ndarray = field(repr=False)

    def request(self) -> dict:
        """The open request's `resume` field."""
        return {"seq": self.seq, "chunk": self.chunk, "frame": self.frame, "epoch": self.epoch,
                "state": dict(self.state)}  # fmt: skip


def png_bytes(frame: np.ndarray) -> bytes:
    """[H, W, 3] uint8 -> the bytes of a PNG file (lossless: a resumed world sees the exact pixels)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buffer, format="PNG")
    return buffer.getvalue()


class WorldClient:
    """Client of one world session. Attributes: `session` (id or None), `info` (dict from open:
    session, backend, height, width, chunk_frames, fps, description, prompt, seed, window)."""

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 5.0,
        heartbeat_s: float = 1.0,
        liveness_s: float = 3.0,
        context: zmq.Context | None = None,
        keys: ClientKeys | None = None,
    ):
        """`keys`: this client's CURVE key pair and the worker's public key, for a worker that
        authenticates its clients (world/server/auth.py); None for a loopback or --insecure worker."""
        self.address = address
        self.keys = keys
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s
        self.liveness_s = liveness_s  # no message from the worker for this long -> not connected
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._ref = 0
        self.session: str | None = None
        self.info: dict | None = None
        self._spec: _OpenSpec | None = None
        self._held: Action | None = None
        self._worker: str | None = None  # instance id of the worker that holds our session
        self._lost = False
        self._pending: deque[Event] = deque(maxlen=1024)  # events seen during blocking calls
        self._prompts: dict[int, str] = {}  # prompt-switch ref -> prompt, until answered
        self._reset_ref: int | None = None  # while set, chunks of the old world are dropped
        self._reset_seeds: dict[int, int | None] = {}
        self._last_heard = time.monotonic()
        self._last_ping = 0.0
        self._points: dict[int, ResumePoint] = {}  # seq of a received chunk -> where the world is after it
        self.resume_point: ResumePoint | None = None  # after the last acknowledged chunk
        self.delivered_point: ResumePoint | None = None  # after the newest chunk handed out (reconnect(keep_delivered))
        self.closed_reason: str | None = None  # why the worker closed our session ("shutdown", "timeout", ...)

    # -- connection ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the worker answers heartbeats and still serves our session (if any)."""
        return not self._lost and time.monotonic() - self._last_heard < self.liveness_s

    def _new_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.RCVHWM, 1000)
        if self.keys is not None:
            secure_client(sock, self.keys)
        sock.connect(self.address)
        self._socket = sock
        self._last_heard = time.monotonic()
        self._pending.clear()

    def _send(self, message: P.Message, required: bool = False) -> None:
        if self._socket is None:
            self._new_socket()
        try:
            self._socket.send_multipart(wire.encode(message), zmq.NOBLOCK)
        except zmq.Again:
            # The send queue is full: the worker has not been reading for a long time.
            self._lost = True
            if required:
                raise WorldConnectionError(f"cannot send to {self.address}: worker not reading") from None

    def _next_ref(self) -> int:
        self._ref += 1
        return self._ref

    def _require_session(self) -> str:
        if self.session is None:
            raise RuntimeError("no open session: call open() first")
        return self.session

    # -- session ---------------------------------------------------------------------------------

    def open(
        self,
        backend: str = "engine",
        prompt: str = DEFAULT_PROMPT,
        seed: int = 0,
        options: dict | None = None,
        lookahead: int | None = None,
        start_image: bytes | None = None,
        resume: ResumePoint | None = None,
    ) -> dict:
        """Open a session; returns its info. `resume`: go on from that point of a world whose worker was lost (its
        counters continue; `reconnect` passes the last acknowledged one). `lookahead`: chunks the worker may
        generate ahead of our last ack (1..the worker's window; None: the worker's window); info["window"] is
        the value in force. `start_image`: the bytes of a PNG or JPEG file to start a generated world from
        (session option start "image"; at most protocol.MAX_START_IMAGE_BYTES); info["start"] says what the
        world started from and info["start_notice"] why, when it is not what was asked. Raises WorldRequestError
        if refused (bad prompt, unknown backend, bad lookahead, an image over the limit (checked here, before
        sending) or one the worker cannot decode, ...) and WorldConnectionError if the worker does not answer in
        timeout_s."""
        if start_image is not None:
            start_image = bytes(start_image)
            if len(start_image) > P.MAX_START_IMAGE_BYTES:
                raise WorldRequestError(P.TOO_LARGE, P.image_too_large(len(start_image)))
        if self.session is not None:
            self._send(P.Close(session=self.session))  # the old session's chunks are then ignored
            self.session = None
        ref = self._next_ref()
        request = P.Open(
            backend=backend, prompt=prompt, seed=seed, options=dict(options or {}), lookahead=lookahead, ref=ref,
            start_image=start_image, resume=None if resume is None else resume.request(),
        )
        self._send(request, required=True)
        try:
            reply = self._wait_for(ref, self.timeout_s)
        except WorldConnectionError:
            self._socket.close(linger=0)  # drops the unsent open, so a late worker never gets it
            self._socket = None
            raise
        if isinstance(reply, P.Error):
            raise WorldRequestError(reply.code, reply.message, reply.retry_after_s)
        if not isinstance(reply, P.Opened):
            raise WorldRequestError(P.BAD_MESSAGE, f"unexpected reply {reply.TYPE} to open")
        self._spec = _OpenSpec(backend, prompt, seed, dict(options or {}), lookahead, start_image)
        self.session, self._worker, self._lost = reply.session, reply.worker, False
        self._reset_ref = None
        self._points, self.resume_point, self.delivered_point = {}, resume, resume
        self.closed_reason = None
        self.info = {k: getattr(reply, k) for k in INFO_FIELDS}
        return dict(self.info)

    def reconnect(self, address: str | None = None, resume: bool = True, keep_delivered: bool = False) -> dict:
        """New socket (to `address` if given, e.g. a restarted worker on a new port), then re-open
        a session with the last backend, options, lookahead, start image, prompt and seed, re-send
        the held input and the newest prompt switch the lost worker never answered.

        With `resume` and a chunk acknowledged since the world began, the world goes on after that
        chunk (docs/protocol.md, "Resuming"): seq, chunk and frame counters continue, the engine is
        put back to its camera, and a generated world (one whose info says how it started) starts
        from that chunk's last frame as its start image. Otherwise it restarts from its first frame.
        info["resumed"] says which. The chunks received after the last acknowledged one come again:
        right for a front end that drops what it has not shown (the window). `keep_delivered`: the
        caller keeps every chunk poll() handed out (a buffer it goes on showing, a headless run that
        consumed them), so the world goes on after the newest of those instead, and none is made or
        delivered twice. Raises like open()."""
        if self._spec is None:
            raise RuntimeError("nothing to reconnect: open() was never successful")
        self.session = None
        self.address = address or self.address
        self._new_socket()
        spec, unanswered = self._spec, list(self._prompts.values())[-1:]
        point = (self.delivered_point if keep_delivered else self.resume_point) if resume else None
        options, image = spec.options, spec.start_image
        if point is not None and (self.info or {}).get("start") is not None:
            options, image = {**spec.options, "start": "image"}, png_bytes(point.last_frame)
        info = self.open(spec.backend, spec.prompt, spec.seed, options, spec.lookahead, image, resume=point)
        self._spec = replace(self._spec, options=spec.options, start_image=spec.start_image)
        self._prompts = {}  # the lost worker answers none of them
        if self._held is not None:
            self.send_input(self._held)
        if unanswered and unanswered[0] != spec.prompt:
            self.set_prompt(unanswered[0])  # it may have been lost with the worker: the world would forget it
        return info

    def send_input(self, action: Action) -> None:
        """Set the held action: used for every frame generated from now on (after queued actions)."""
        self._held = action
        self._send(P.Input(session=self._require_session(), action=action))

    def queue_actions(self, actions: Sequence[Action]) -> None:
        """Queue exact per-frame actions (at most protocol.MAX_QUEUED_ACTIONS waiting); overflow
        comes back as an ErrorEvent with code "queue_full" and nothing of that call is queued."""
        self._send(P.Actions(session=self._require_session(), actions=tuple(actions), ref=self._next_ref()))

    def set_prompt(self, prompt: str) -> None:
        """Switch the prompt; chunks whose records carry the new prompt follow. A refusal arrives as
        an ErrorEvent with code "bad_prompt"."""
        ref = self._next_ref()
        self._prompts = {**dict(list(self._prompts.items())[-32:]), ref: prompt}  # bounded bookkeeping
        self._send(P.Prompt(session=self._require_session(), prompt=prompt, ref=ref))

    def reset(self, seed: int | None = None) -> None:
        """Restart the world (same seed if None). Chunks of the old world still in flight are
        acknowledged and dropped by poll(); the next ChunkEvent has epoch+1 and records from i=0."""
        ref = self._next_ref()
        self._reset_ref = ref
        self._reset_seeds = {ref: seed}
        self._points, self.resume_point = {}, None  # a lost world restarts until the new one is acknowledged
        self.delivered_point = None
        self._send(P.Reset(session=self._require_session(), seed=seed, ref=ref))

    def ack(self, chunk_seq: int) -> None:
        """Acknowledge every chunk up to chunk_seq; the worker stays <= info["window"] chunks ahead.
        The world resumes after the newest acknowledged chunk if its worker is lost."""
        self._send(P.Ack(session=self._require_session(), seq=chunk_seq))
        point = self._points.get(chunk_seq)
        if point is not None:
            self.resume_point = point
            self._points = {seq: p for seq, p in self._points.items() if seq > chunk_seq}

    def status(self, timeout_s: float | None = None) -> StatusEvent:
        """Blocking status request; other events that arrive meanwhile are kept for poll()."""
        ref = self._next_ref()
        self._send(P.Status(session=self.session, ref=ref), required=True)
        reply = self._wait_for(ref, self.timeout_s if timeout_s is None else timeout_s)
        if isinstance(reply, P.Error):
            raise WorldRequestError(reply.code, reply.message)
        return StatusEvent(reply.worker, reply.session)

    def close(self) -> None:
        """Close the session (waiting up to 1 s for the worker to confirm) and the socket."""
        if self.session is not None and self._socket is not None:
            ref = self._next_ref()
            self._send(P.Close(session=self.session, ref=ref))
            try:
                self._wait_for(ref, min(self.timeout_s, 1.0))
            except WorldConnectionError:
                pass  # the worker will expire the session on its own
        self.session = None
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def __enter__(self) -> WorldClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- receiving -------------------------------------------------------------------------------

    def poll(self, timeout_ms: int) -> list[Event]:
        """Events that arrived, waiting up to timeout_ms for the first one. Sends the heartbeat
        ping when due, so call it at least every heartbeat_s while a session is open."""
        events = list(self._pending)
        self._pending.clear()
        if self._socket is None:  # closed (or open() timed out): nothing can arrive
            return events
        deadline = time.monotonic() + max(timeout_ms, 0) / 1000.0
        while True:
            self._heartbeat()
            events += self._receive_available()
            left_ms = (deadline - time.monotonic()) * 1000.0
            if events or left_ms <= 0:
                return events
            self._socket.poll(max(1, int(min(left_ms, self.heartbeat_s * 1000.0))), zmq.POLLIN)

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if self._socket is not None and now - self._last_ping >= self.heartbeat_s:
            self._last_ping = now
            self._send(P.Ping(session=self.session))

    def _receive_available(self, limit: int = 256) -> list[Event]:
        events = []
        # Ask the socket whether a message waits before receiving: a window calls this ~100 times a
        # second, and a refused non-blocking receive (zmq.Again) costs far more than the question.
        for _ in range(limit):
            if not self._socket.get(zmq.EVENTS) & zmq.POLLIN:
                break
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            event = self._dispatch(frames)[1]
            if event is not None:
                events.append(event)
        return events

    def _wait_for(self, ref: int, timeout_s: float) -> P.Message:
        """Receive until the reply with this ref arrives; everything else is handled as usual."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self._socket.poll(max(1, int(min(left, 0.1) * 1000.0)), zmq.POLLIN):
                continue
            reply, event = self._dispatch(self._socket.recv_multipart())
            if reply is not None and reply.TYPE != "pong" and getattr(reply, "ref", None) == ref:
                return reply
            if event is not None:
                self._pending.append(event)
        raise WorldConnectionError(f"no reply from the worker at {self.address} within {timeout_s} s")

    def _dispatch(self, frames: list[bytes]) -> tuple[P.Message | None, Event | None]:
        """Decode one worker message and update client state; returns (reply, event for poll)."""
        try:
            reply, pixels = wire.decode_reply(frames)
        except P.ProtocolError as exc:
            return None, ErrorEvent(exc.code, f"undecodable message from the worker: {exc.message}")
        self._last_heard = time.monotonic()
        handler = {
            P.Chunk: self._on_chunk,
            P.Pong: self._on_pong,
            P.Ok: self._on_ok,
            P.Closed: self._on_closed,
            P.Error: self._on_error,
            P.StatusReply: self._on_status,
        }.get(type(reply))
        return reply, handler(reply, pixels) if handler else None

    def _on_chunk(self, msg: P.Chunk, pixels: np.ndarray) -> Event | None:
        if msg.session != self.session:
            return None  # a chunk of a session we already closed
        if self._reset_ref is not None:
            self.ack(msg.seq)  # old world: free the worker's window, show nothing
            return None
        if msg.records:
            self.delivered_point = ResumePoint(
                msg.seq + 1, msg.chunk + 1, int(msg.records[-1].get("i", 0)) + 1, msg.epoch,
                dict(msg.extra.get("resume") or {}), pixels[-1].copy(),
            )  # fmt: skip
            if len(self._points) < RESUME_HISTORY:
                self._points[msg.seq] = self.delivered_point
        return ChunkEvent(
            msg.seq, pixels, list(msg.records), msg.gen_ms, msg.steps, msg.nfe, msg.epoch, msg.chunk, dict(msg.extra)
        )

    def _on_pong(self, msg: P.Pong, _: object) -> None:
        if self.session is not None and self._worker is not None and msg.worker != self._worker:
            self._lost = True  # a restarted worker answers, but our session died with the old one

    def _on_ok(self, msg: P.Ok, _: object) -> None:
        if msg.request == "prompt" and msg.ref in self._prompts and self._spec is not None:
            self._spec.prompt = self._prompts.pop(msg.ref)
        if msg.request == "reset" and msg.ref == self._reset_ref:
            self._reset_ref = None
            seed = self._reset_seeds.pop(msg.ref, None)
            if seed is not None and self._spec is not None:
                self._spec.seed = seed

    def _on_closed(self, msg: P.Closed, _: object) -> Event | None:
        if msg.session != self.session or msg.reason == "client":
            return None
        self._lost, self.closed_reason = True, msg.reason
        return ErrorEvent("session_closed", f"the worker closed the session ({msg.reason})", msg.ref)

    def _on_error(self, msg: P.Error, _: object) -> Event:
        if msg.ref is not None and msg.ref == self._reset_ref:
            self._reset_ref = None  # the reset was refused: the old world goes on
        if msg.code != P.UNKNOWN_SESSION:  # a prompt that reached a worker which lost our session is sent again
            self._prompts.pop(msg.ref, None)
        if msg.code == P.UNKNOWN_SESSION and msg.session is not None and msg.session == self.session:
            self._lost = True
        return ErrorEvent(msg.code, msg.message, msg.ref, msg.request)

    def _on_status(self, msg: P.StatusReply, _: object) -> Event:
        return StatusEvent(msg.worker, msg.session)
