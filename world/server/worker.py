"""`serve`: the ZeroMQ worker that runs worlds for clients (docs/protocol.md).

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from world.actions import IDLE
from world.backends.model_cache import MODELS
from world.backends.registry import SESSION_DEFAULTS, backend_names, create_backend
from world.errors import BackendError, PromptError
from world.server import protocol as P
from world.server.admission import Admission, AdmissionConfig, CostModel, Holder, directory_bytes, estimate_bytes
from world.server.auth import AuthError, ServerKeys, check_bind, secure_server, server_keys, start_authenticator
from world.server.batching import BatchScheduler, Made, produce_batch
from world.server.jobs import InlineExecutor, Job
from world.server.ratelog import RateLimitedLog
from world.server.session import Session
from world.start import StartImageError, decode_start_image

log = logging.getLogger("world.server.worker")

DEFAULT_BIND = "tcp://127.0.0.1:5555"
# Options only the operator sets (command line): a client must not pick files or devices. A start
# image reaches the backend from the open request's image frame, never as an option.
WORKER_ONLY_OPTIONS = frozenset({"device", "checkpoint", "start_image"})
# Opens carrying a start image (up to 4 MiB each) that may wait for the compute loop at once; more
# are answered `busy`, so queued images never hold more than this many times the image limit.
MAX_PENDING_IMAGES = 4
# Numeric options range-checked before a backend ever sees them: (low, high, integers only).
# The sizes bound buffers; steps and fps bound the work one chunk may ask for.
NUMBER_OPTIONS = {
    "height": (8, 1024, True), "width": (8, 1024, True), "chunk_frames": (1, 16, True), "fps": (1, 240, False),
    "steps": (1, 1000, True), "guidance": (0, 100, False), "context_noise": (0, 1000, False),
}  # fmt: skip
GEOMETRY_OPTIONS = ("height", "width", "chunk_frames", "fps")  # never null: they size every buffer
# Requests for a session whose job (first chunk, reset) runs off the loop wait for it, in order;
# at most this many, then `busy`.
MAX_DEFERRED = 64
# A worker times one chunk of this engine session before it serves (world/server/admission.py CostModel).
DEFAULT_CALIBRATION = {"height": 64, "width": 64, "chunk_frames": 3}
CALIBRATION_PROMPT = "green hills at noon"
# Consecutive chunks over budget before a session is closed (one slow chunk may be the machine's).
BUDGET_STRIKES = 2


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
    per_client: int = 2  # sessions one client (routing identity, or client key) may hold
    memory_budget_mb: int = 0  # estimated memory of all sessions; 0: half the machine's (world/server/admission.py)
    # The longest one chunk of a session may hold the compute loop (every other session waits that
    # long): a session's budget is the larger of this and its chunk's play time (F / fps). Enforced
    # while other clients' sessions share the worker.
    chunk_budget_s: float = 1.0
    keys: ServerKeys | None = None  # CURVE keys: clients authenticate and frames are encrypted (world/server/auth.py)
    notice: str | None = None  # told to every client in `opened` (an --insecure remote worker)

    @property
    def security(self) -> str:
        return "curve" if self.keys is not None else "none"


@dataclass(frozen=True)
class Inbound:
    identity: bytes
    request: P.Message
    received: float
    user: str | None = None  # the client's public key (z85) on an authenticated worker


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
    messages to send, so it is testable without sockets.

    Work whose cost a client picks runs off the compute loop on `executor` (world/server/jobs.py):
    building a session (a session is "opening" until it is built and reset), its first chunk made
    by `step_chunk` (timed against the session's budget before any of its chunks runs on the
    loop) and resets. Requests for a session with a job in flight wait for it, in order."""

    def __init__(self, config: WorkerConfig, instance: str, io_stats: IOStats | None = None,
                 executor: object | None = None, heard: dict[bytes, float] | None = None):  # fmt: skip
        self.config = config
        self.instance = instance
        self.sessions: dict[str, Session] = {}
        self.stats = CoreStats()
        self.io_stats = io_stats or IOStats()
        self.started = time.monotonic()
        self.executor = executor or InlineExecutor()
        # identity -> when the I/O thread last received anything from it (liveness from receipt,
        # not from when this loop got round to the message).
        self.heard = heard if heard is not None else {}
        self.jobs: list[Job] = []
        self.admission = Admission(AdmissionConfig(config.max_sessions, config.per_client,
                                                   config.memory_budget_mb * 1024 * 1024))  # fmt: skip
        self.log = RateLimitedLog(log)
        self.costs = CostModel()
        self._weights: dict[str, int] = {}  # checkpoint path -> bytes on disk (memory estimates)
        self._pruned = 0.0
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
            waiting = self._defer(item)
            if waiting is not None:
                return waiting
            return self._handlers[type(request)](item)
        except P.ProtocolError as exc:
            exc.ref, exc.extra["request"] = request.ref, request.TYPE
            return [self._error(item.identity, P.error_for(exc, getattr(request, "session", None)))]
        except Exception as exc:  # a backend bug must not take the worker down
            return [self._error(item.identity, self._internal(exc, request))]

    def _internal(self, exc: Exception, request: P.Message) -> P.Error:
        self.log.warning("request %s failed: %s: %.200s", request.TYPE, type(exc).__name__, exc)
        return P.Error(code=P.INTERNAL, message=f"{type(exc).__name__}: {exc}"[:500], ref=request.ref,
                       session=getattr(request, "session", None), request=request.TYPE)  # fmt: skip

    def _defer(self, item: Inbound) -> list[Outgoing] | None:
        """Requests for a session whose job is running wait for it ([] then); None: handle now."""
        if not isinstance(item.request, (P.Input, P.Actions, P.Prompt, P.Reset, P.Ack)):
            return None
        session = self.sessions.get(item.request.session)
        if session is None or session.owner != item.identity or session.job is None:
            return None
        if len(session.deferred) >= MAX_DEFERRED:
            raise P.ProtocolError(P.BUSY, "the session is busy (resetting or timing its first chunk); retry in 1 s",
                                  retry_after_s=1.0)  # fmt: skip
        session.deferred.append(item)
        return []

    def expire(self, now: float) -> list[Outgoing]:
        """Close sessions whose client has been silent for longer than the session timeout."""
        limit = self.config.session_timeout_s
        stale = [s for s in self.sessions.values() if now - self._last_heard(s) > limit]
        out = []
        for session in stale:
            log.info("session %s silent for %.1f s: closing", session.sid, now - self._last_heard(session))
            self.stats.sessions_expired += 1
            out.append(self._drop(session, "timeout"))
        self._prune_heard(now)
        return out

    def _last_heard(self, session: Session) -> float:
        return max(session.last_seen, self.heard.get(session.owner, 0.0))

    def _prune_heard(self, now: float) -> None:
        """Forget clients that hold nothing and have been silent a while (bounds `heard`)."""
        if now - self._pruned < 1.0:
            return
        self._pruned = now
        owners = {s.owner for s in self.sessions.values()} | {j.identity for j in self.jobs}
        for identity, when in list(self.heard.items()):
            if identity not in owners and now - when > self.config.session_timeout_s:
                self.heard.pop(identity, None)

    def produce_next(self) -> list[Outgoing]:
        """Finish the jobs that are done; a session's first chunk goes to the executor (timed off the
        loop); then generate the next batch (world/server/batching.py: due sessions of one model and sampler,
        every due session once per round)."""
        out = self.collect()
        ready = []
        for session in list(self.sessions.values()):
            if session.job is not None or session.sid not in self.sessions:
                continue
            if session.trial:
                if session.can_produce():
                    out += self._start_job(Job("produce", self.executor.submit(self._timed_produce, session),
                                               session.owner, session=session))  # fmt: skip
                    if out:
                        return out  # an inline executor made it already: one session's chunk per call
                continue
            ready.append(session)
        batch = self.scheduler.next_batch(ready)
        for session, made in produce_batch(batch, self.scheduler.rounds):
            out += self._produced(session, made, len(batch))
        return out

    def collect(self) -> list[Outgoing]:
        """Replies for the jobs that have finished."""
        done = [job for job in self.jobs if job.future.done()]
        out: list[Outgoing] = []
        for job in done:
            out += self._finish(job)
        return out

    def close_all(self, reason: str = "shutdown") -> list[Outgoing]:
        return [self._drop(s, reason) for s in list(self.sessions.values())]

    # -- jobs --------------------------------------------------------------------------------------

    def _start_job(self, job: Job) -> list[Outgoing]:
        """Track a submitted job; one that already finished (InlineExecutor) is answered now."""
        self.jobs.append(job)
        if job.session is not None:
            job.session.job = job
        return self._finish(job) if job.future.done() else []

    def _finish(self, job: Job) -> list[Outgoing]:
        if job not in self.jobs:
            return []
        self.jobs.remove(job)
        if job.kind == "open":
            return self._opened(job)
        session = job.session
        session.job = None
        if session.dropped:  # closed while the job ran: only its backend is left to free
            self._close_backend(session)
            return []
        out = self._reset_done(job) if job.kind == "reset" else self._trial_done(job)
        if session.sid in self.sessions:
            deferred, session.deferred = session.deferred, []
            for item in deferred:
                out += self.handle(item)
        return out

    def calibrate(self, backend: str = "engine", options: dict | None = None) -> None:
        """Time one chunk of a small session before serving, so the cost model can refuse a session
        far over budget from the first client on (about 0.2 s for the engine at 64x64)."""
        options = dict(DEFAULT_CALIBRATION if options is None else options)
        try:
            world = self._create_backend(backend, {}, options)
            try:
                world.reset(0, CALIBRATION_PROMPT)
                info = world.info
                start = time.perf_counter()
                world.step_chunk([IDLE] * info.chunk_frames)
                seconds = time.perf_counter() - start
            finally:
                world.close()
        except Exception as exc:  # a worker without that backend simply has no calibration
            log.info("calibrating %s failed: %s: %.200s", backend, type(exc).__name__, exc)
            return
        self.costs.learn(backend, info.height, info.width, info.chunk_frames, seconds)

    @staticmethod
    def _timed_produce(session: Session) -> tuple[P.Chunk, object, float]:
        start = time.perf_counter()
        header, frames = session.produce()
        return header, frames, time.perf_counter() - start

    def _trial_done(self, job: Job) -> list[Outgoing]:
        session = job.session
        try:
            header, frames, seconds = job.future.result()
            out = [Outgoing(session.owner, P.encode_chunk(header, frames))]
        except Exception as exc:
            return self._backend_failed(session, exc)
        self.stats.chunks_produced += 1
        if header.extra.get("reset_view"):
            return out  # made by the reset; the next chunk is the first step_chunk, timed the same way
        session.trial = False
        info = session.info
        self.costs.learn(session.backend_name, info.height, info.width, info.chunk_frames, seconds)
        return out + self._check_budget(session, seconds, strikes=BUDGET_STRIKES)

    def _check_budget(self, session: Session, seconds: float, strikes: int = 1) -> list[Outgoing]:
        """Close a session whose chunks take longer than its budget (`strikes` at once: its first)
        while other clients' sessions share the loop: alone, a slow session delays nobody."""
        if seconds <= session.budget_s or not self._shared(session):
            session.strikes = 0
            return []
        session.strikes += strikes
        if session.strikes < BUDGET_STRIKES:
            return []
        error = P.Error(code=P.OVER_BUDGET, session=session.sid, message=(
            f"a chunk of this session takes {seconds:.2f} s; this worker allows {session.budget_s:.2f} s per chunk "
            f"(the larger of the chunk's play time and serve --chunk-budget {self.config.chunk_budget_s:g}): open "
            "a smaller session (height, width, chunk_frames, steps)"))  # fmt: skip
        log.info("session %s: chunk %.2f s over its budget of %.2f s: closing", session.sid, seconds, session.budget_s)
        return [self._error(session.owner, error), self._drop(session, "over_budget")]

    def _shared(self, session: Session) -> bool:
        """True when another client has a session open or opening on this worker."""
        return any(s.owner != session.owner for s in self.sessions.values()) or any(
            j.kind == "open" and j.identity != session.owner for j in self.jobs)  # fmt: skip

    def _backend_failed(self, session: Session, exc: Exception) -> list[Outgoing]:
        self.log.warning("session %s: backend failed: %s: %.200s", session.sid, type(exc).__name__, exc)
        error = P.Error(code=P.BACKEND_ERROR, message=f"generation failed: {exc}"[:500], session=session.sid)
        return [self._error(session.owner, error), self._drop(session, "error")]

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
        if session.job is not None:
            session.dropped = True  # the job still uses the backend; its end frees it
        else:
            self._close_backend(session)
        return _out(session.owner, P.Closed(session=session.sid, reason=reason, ref=ref))

    def _close_backend(self, session: Session) -> None:
        try:
            session.close()
        except Exception as exc:
            self.log.warning("closing backend of session %s failed: %s: %.200s", session.sid, type(exc).__name__, exc)

    def _produced(self, session: Session, made: Made, batch_size: int = 1) -> list[Outgoing]:
        """A session's chunk from a batch, or its own failure (an error, and the session ends)."""
        try:
            if isinstance(made, Exception):
                raise made
            header, frames = made
            out = [Outgoing(session.owner, P.encode_chunk(header, frames))]
            # A batch's gen_ms is the whole batch's time; each session's share is what its budget sees.
            seconds = header.gen_ms / 1000.0 / max(1, batch_size)
        except Exception as exc:
            return self._backend_failed(session, exc)
        self.stats.chunks_produced += 1
        return out + self._check_budget(session, seconds)

    # -- request handlers ------------------------------------------------------------------------

    def _holders(self) -> list[Holder]:
        return [s.holder for s in self.sessions.values()] + [j.holder for j in self.jobs if j.kind == "open"]

    def _open(self, item: Inbound) -> list[Outgoing]:
        """Check everything that is cheap to check, admit, then build the session off the loop."""
        req: P.Open = item.request
        lookahead = self._lookahead(req.lookahead)  # checked before a backend is built
        self._check_backend_name(req.backend)
        self._check_start(req)
        check_client_options(req.options)
        holder = Holder(item.identity, item.user, *self._estimate(req.backend, req.options, lookahead))
        self.admission.check(self._holders(), holder)
        self._check_predicted_cost(req, item.identity)
        future = self.executor.submit(self._build, item, lookahead, holder)
        return self._start_job(Job("open", future, item.identity, request=item, holder=holder))

    def _check_predicted_cost(self, req: P.Open, identity: bytes) -> None:
        """Refuse, before building it, a session whose chunks would take over twice its budget
        (world/server/admission.py CostModel). Also on an empty worker: others may come, and building
        such a session alone costs a minute of CPU; sessions nearer the budget are timed instead."""
        frames, fps = req.options.get("chunk_frames") or 3, req.options.get("fps") or 30.0
        budget = max(frames / fps, self.config.chunk_budget_s)
        predicted = self.costs.too_costly(req.backend, req.options, budget)
        if predicted is not None:
            raise P.ProtocolError(P.OVER_BUDGET, f"a chunk of this session would take about {predicted:.1f} s (from "
                                  f"what this worker's {req.backend} sessions took); the budget is {budget:.2f} s "
                                  "per chunk: open a smaller session")  # fmt: skip

    def _estimate(self, backend: str, options: dict, lookahead: int) -> tuple[int, tuple[str, int] | None]:
        """(the session's own bytes, (checkpoint, weight bytes) that its checkpoint's sessions share)."""
        own = estimate_bytes(backend, options, lookahead)
        if backend == "generated":
            checkpoint = self.config.backend_options.get("generated", {}).get("checkpoint")
            if checkpoint is None:
                from world.bundled import bundled_checkpoint

                checkpoint = bundled_checkpoint()
            key = str(checkpoint)
            if key not in self._weights:
                self._weights[key] = directory_bytes(checkpoint)
            return own, (key, self._weights[key])
        return own, None

    def _build(self, item: Inbound, lookahead: int, holder: Holder) -> Session:
        """Off the loop: the backend, reset with the seed and prompt, as a Session."""
        req: P.Open = item.request
        began = time.perf_counter()
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
        session = Session(secrets.token_hex(8), item.identity, req.backend, backend, req.prompt, req.seed,
                          self.config.max_queued_actions, item.received, lookahead, reset_ms=reset_ms)  # fmt: skip
        info = session.info
        session.budget_s = max(info.chunk_frames / info.fps, self.config.chunk_budget_s)
        session.holder = holder
        session.build_s = time.perf_counter() - began
        return session

    def _opened(self, job: Job) -> list[Outgoing]:
        item, req = job.request, job.request.request
        try:
            session = job.future.result()
        except P.ProtocolError as exc:
            exc.ref, exc.extra["request"] = req.ref, req.TYPE
            return [self._error(item.identity, P.error_for(exc))]
        except Exception as exc:
            return [self._error(item.identity, self._internal(exc, req))]
        # The clock of a session that took long to build starts when it was built, not at the open.
        session.last_seen = item.received + session.build_s
        self.sessions[session.sid] = session
        self.stats.sessions_opened += 1
        info = session.info
        opened = P.Opened(
            session=session.sid,
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
            security=self.config.security,
            notice=self.config.notice,
        )
        return [_out(item.identity, opened)]

    @staticmethod
    def _check_start(req: P.Open) -> None:
        """The start option against the image frame (cheap, before admission)."""
        start = req.options.get("start")
        if req.start_image is None and start == "image":
            raise P.ProtocolError(P.BAD_OPTION, "start 'image' needs the image: send the PNG or JPEG file's bytes "
                                  "as the open request's second frame (header field start_image)")  # fmt: skip
        if req.start_image is not None and start not in (None, "image"):
            raise P.ProtocolError(P.BAD_OPTION, f"the open carries a start image but asks for start {start!r:.40}; "
                                  "an image comes with start 'image'")  # fmt: skip

    @staticmethod
    def _start_options(req: P.Open) -> tuple[dict, dict]:
        """(client options, worker-set backend arguments) for the world's start. An open with an
        image frame starts from that image (options.start is "image" or absent); its bytes are
        decoded here, untrusted, so a bad image is a `bad_image` error and never reaches a backend."""
        options = dict(req.options)
        if req.start_image is None:
            return options, {}
        options.setdefault("start", "image")
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
        dims = (info.chunk_frames, info.height, info.width)
        fps_ok = isinstance(info.fps, (int, float)) and not isinstance(info.fps, bool) and 0 < info.fps <= 1000
        if not (all(P.is_int(d) and 0 < d <= 1 << 20 for d in dims) and fps_ok):
            raise P.ProtocolError(P.BACKEND_ERROR, f"backend reports an unusable geometry: {info}")
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
        """Reset off the loop (a large world's terrain takes seconds); `ok` once it is done."""
        session = self._session(item)
        future = self.executor.submit(session.reset, item.request.seed)
        return self._start_job(Job("reset", future, item.identity, request=item, session=session))

    def _reset_done(self, job: Job) -> list[Outgoing]:
        session, item = job.session, job.request
        try:
            job.future.result()
        except Exception as exc:  # the world is half reset: end the session rather than stream garbage
            if isinstance(exc, P.ProtocolError):  # a refused prompt: the old world goes on
                exc.ref, exc.extra["request"] = item.request.ref, "reset"
                return [self._error(item.identity, P.error_for(exc, session.sid))]
            self.log.warning("session %s: reset failed: %s: %.200s", session.sid, type(exc).__name__, exc)
            error = P.Error(code=P.BACKEND_ERROR, message=f"reset failed: {exc}"[:500], ref=item.request.ref,
                            session=session.sid, request="reset")  # fmt: skip
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
            "opening": sum(1 for j in self.jobs if j.kind == "open"),
            "per_client": self.config.per_client,
            "security": self.config.security,
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
        if key in NUMBER_OPTIONS and (value is not None or key in GEOMETRY_OPTIONS):
            lo, hi, whole = NUMBER_OPTIONS[key]
            number = P.is_int(value) or (not whole and isinstance(value, float))
            if not number or not lo <= value <= hi:
                kind = "an integer" if whole else "a number"
                raise P.ProtocolError(P.BAD_OPTION, f"option {key!r} must be {kind} in [{lo}, {hi}]")


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
            return P.decode_request(frames)
        except P.ProtocolError as exc:
            error = P.error_for(exc)
        except Exception as exc:  # a validation bug must cost one message, not the I/O thread
            self.log.warning("decoding a request failed: %s: %.200s", type(exc).__name__, exc)
            error = P.Error(code=P.INTERNAL, message=f"{type(exc).__name__} while decoding")
        self.stats.rejected += 1
        self._send(identity, P.encode(error))
        return None

    def _on_message(self, identity: bytes, frames: list[bytes], user: str | None = None) -> None:
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
    # Jobs (building sessions, first chunks, resets) run here, never on the compute loop. A thread
    # per admitted session (each has at most one job; opening ones count as admitted), so one
    # client's slow jobs never make another's wait for a thread. Threads still busy when the
    # worker stops do not delay it: `run` exits without waiting for them.
    executor = ThreadPoolExecutor(max_workers=config.max_sessions, thread_name_prefix="worker-job")
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
    parser.add_argument(
        "--per-client",
        type=int,
        default=2,
        metavar="N",
        help="sessions one client (socket, or client key) may hold (default %(default)s)",
    )
    parser.add_argument(
        "--memory-budget-mb",
        type=int,
        default=0,
        metavar="MB",
        help="estimated memory all sessions may take; 0: half the machine's (default)",
    )
    parser.add_argument(
        "--chunk-budget",
        type=float,
        default=1.0,
        metavar="S",
        help="the longest one chunk of a session may take, unless its play time is longer; a "
        "session over it is closed (default %(default)s)",
    )
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when stdin reaches end of file: the parent that owns this worker died",
    )
    parser.add_argument(
        "--server-key",
        metavar="FILE",
        help="this worker's secret key (NAME.key_secret from "
        "`run_world.py keys`): clients must authenticate (CURVE) and frames are encrypted",
    )
    parser.add_argument(
        "--authorized-keys",
        metavar="DIR",
        help="directory of the client public keys (*.key) this worker accepts; goes with --server-key",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow binding beyond loopback without keys "
        "(anyone who reaches the port plays; frames in clear); said in the log and to every client",
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
    if args.session_timeout <= 0 or args.max_sessions < 1 or args.max_unacked < 1 or args.per_client < 1:
        raise SystemExit("serve: --session-timeout must be > 0, --max-sessions, --max-unacked and --per-client >= 1")
    if not args.chunk_budget > 0 or args.memory_budget_mb < 0:
        raise SystemExit("serve: --chunk-budget must be > 0 and --memory-budget-mb >= 0")
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
        per_client=args.per_client,
        memory_budget_mb=args.memory_budget_mb,
        chunk_budget_s=args.chunk_budget,
        keys=server_keys(args.server_key, args.authorized_keys),
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for module in args.backend_module:
        importlib.import_module(module)
    try:
        config = config_from_args(args)
        config.notice = check_bind(config.bind, config.keys, args.insecure)
    except AuthError as exc:
        log.error("serve: %s", exc)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.exit_with_parent:
        watch_parent(stop)

    def ready(endpoint: str) -> None:
        log.info("serving on %s (backends: %s)", endpoint, ", ".join(backend_names()))
        print(f"READY {endpoint}", flush=True)  # the one stdout line; parents read the port from it

    try:
        clean = serve(config, stop, ready)
    except zmq.ZMQError as exc:
        log.error("cannot bind %s: %s", config.bind, exc)
        return 1
    log.info("worker stopped")
    code = 0 if clean else 1
    # Jobs still running (a world being built) would keep the interpreter alive until they end;
    # everything that matters is closed, so leave now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def watch_parent(stop: threading.Event, grace_s: float = 1.0) -> None:
    """Stop when stdin reaches end of file, and exit `grace_s` later whatever is still running.

    The parent that started this worker (`play`, world.server.worker.start_worker_process) holds the
    other end of stdin: when it dies, by any signal including SIGKILL, the kernel closes it and
    this read returns. A pipe, not PR_SET_PDEATHSIG: that fires when the parent *thread* that
    forked ends, and `play` restarts its worker from a short-lived reconnect thread."""

    def watch() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        log.info("the parent process is gone: stopping")
        stop.set()
        time.sleep(grace_s)
        os._exit(0)  # a chunk or a build that outlives the grace does not keep an orphan alive

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class WorkerStartError(RuntimeError):
    """The worker subprocess exited or stayed silent before printing READY."""


REPO_ROOT = Path(__file__).resolve().parents[2]


def start_worker_process(
    bind: str = "tcp://127.0.0.1:0",
    extra_args: Sequence[str] = (),
    timeout_s: float = 30.0,
    env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """Launch `python run_world.py serve --bind BIND --exit-with-parent ...` and wait (bounded) for
    its READY line.

    Returns (process, endpoint). stderr is inherited so the worker's log shows up with ours; `env`
    replaces the environment it starts with (default: ours). The worker's stdin is a pipe only
    this process holds: however this process dies, the worker sees end of file and exits.
    """
    cmd = [sys.executable, str(REPO_ROOT / "run_world.py"), "serve", "--bind", bind, "--exit-with-parent",
           *extra_args]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
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
