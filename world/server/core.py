"""The worker's compute side: all session state and request handling, no sockets (docs/protocol.md).

`WorkerCore` applies typed requests to sessions (open, input, actions, prompt, reset, ack, close,
status), admits sessions (world/server/admission.py) and builds them off the loop
(world/server/session_builder.py), expires silent sessions, produces chunks for the sessions whose
clients are fewer than their lookahead chunks behind (sessions of one model and sampler as one batch,
shared by work, world/server/batching.py; a large session's chunks off the loop) and closes sessions
whose chunks take more work than allowed or longer than their budget. Every entry
point returns the messages to send, so it is tested without sockets; the I/O loop
(world/server/io_loop.py) feeds it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from world.backends.model_cache import MODELS
from world.server import protocol as P
from world.server import wire
from world.server.admission import Admission, AdmissionConfig, CostModel, Holder
from world.server.batching import BatchScheduler, Made, produce_batch
from world.server.jobs import InlineExecutor, Job
from world.server.ratelog import RateLimitedLog
from world.server.session import Session
from world.server.session_builder import SessionBuilder, check_backend_name, check_start
from world.server.worker_config import (
    BUDGET_STRIKES,
    MAX_DEFERRED,
    CoreStats,
    Inbound,
    IOStats,
    Outgoing,
    WorkerConfig,
    check_client_options,
    outgoing,
    rss_bytes,
)

log = logging.getLogger("world.worker")


class WorkerCore:
    """All session state and request handling; `handle`/`expire`/`produce_next` return the
    messages to send, so it is testable without sockets.

    Work whose cost a client picks runs off the compute loop on `executor` (world/server/jobs.py):
    building a session (a session is "opening" until it is built and reset), its first chunk made
    by `step_chunk` (timed against the session's budget before any of its chunks runs on the
    loop), resets, and every chunk of a large session (more work than `round_work`: one at a time,
    so a player beside it waits for small chunks only). Requests for a session with a job in flight
    wait for it, in order."""

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
                                                   config.memory_budget_mb * 1024 * 1024,
                                                   max_chunk_work=config.max_chunk_work))  # fmt: skip
        self.log = RateLimitedLog(log)
        self.costs = CostModel()
        self.builder = SessionBuilder(config, self.costs)
        self._pruned = 0.0
        self.scheduler = BatchScheduler(config.max_batch, config.round_work)  # chunks made on the loop
        self.lane = BatchScheduler(1, config.round_work)  # large chunks, made off the loop one at a time
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
            return [self._error(item.identity, wire.error_for(exc, getattr(request, "session", None)))]
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
        loop), and so does the next chunk of a large session (more work than `round_work`), one at a
        time; then generate the next batch of the others (world/server/batching.py: due sessions of
        one model and sampler, shared by work)."""
        out = self.collect()
        ready = []
        for session in list(self.sessions.values()):
            if session.job is not None or session.sid not in self.sessions:
                continue
            if session.trial:
                if session.can_produce():
                    out += self._produce_off_loop(session, "produce")
                    if out:
                        return out  # an inline executor made it already: one session's chunk per call
                continue
            ready.append(session)
        out += self._produce_large([s for s in ready if self._large(s)])
        small = [s for s in ready if not self._large(s) and s.sid in self.sessions]
        batch = self.scheduler.next_batch(small)
        for session, made in produce_batch(batch, self.scheduler.rounds):
            out += self._produced(session, made, len(batch))
        return out

    def _large(self, session: Session) -> bool:
        return session.work > self.config.round_work

    def _produce_large(self, large: list[Session]) -> list[Outgoing]:
        """The next chunk of one large session, chosen fairly among them, off the loop: however large,
        it never holds the loop, and the large sessions together take one thread at a time."""
        if any(job.kind == "large" for job in self.jobs):
            return []
        batch = self.lane.next_batch(large)
        return self._produce_off_loop(batch[0], "large") if batch else []

    def _produce_off_loop(self, session: Session, kind: str) -> list[Outgoing]:
        return self._start_job(Job(kind, self.executor.submit(self._timed_produce, session), session.owner,
                                   session=session))  # fmt: skip

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
        out = self._reset_done(job) if job.kind == "reset" else self._chunk_done(job)
        if session.sid in self.sessions:
            deferred, session.deferred = session.deferred, []
            for item in deferred:
                out += self.handle(item)
        return out

    def calibrate(self, backend: str = "engine", options: dict | None = None) -> None:
        """Time one chunk of a small session before serving (SessionBuilder.calibrate)."""
        self.builder.calibrate(backend, options)

    @staticmethod
    def _timed_produce(session: Session) -> tuple[P.Chunk, object, float]:
        start = time.perf_counter()
        header, frames = session.produce()
        return header, frames, time.perf_counter() - start

    def _chunk_done(self, job: Job) -> list[Outgoing]:
        """A chunk made off the loop: a session's first (timed against its budget before any of its
        chunks runs on the loop, which teaches the cost model) or a large session's."""
        session = job.session
        try:
            header, frames, seconds = job.future.result()
            out = [Outgoing(session.owner, wire.encode_chunk(header, frames))]
        except Exception as exc:
            return self._backend_failed(session, exc)
        self.stats.chunks_produced += 1
        if header.extra.get("reset_view"):
            return out  # made by the reset; the next chunk is the first step_chunk, timed the same way
        first, session.trial = session.trial, False
        if first:
            self.costs.learn(session.backend_name, session.work, seconds)
        strikes = BUDGET_STRIKES if first else 1
        return out + (self._check_work(session) or self._check_budget(session, seconds, strikes=strikes))

    def _check_work(self, session: Session) -> list[Outgoing]:
        """Close a session whose latest chunk took more work than the worker allows (a sampler left
        at the checkpoint's own says what it costs only once it made a chunk), even alone."""
        info = session.info
        why = self.admission.over_work(info.height, info.width, info.chunk_frames, session.evaluations)
        if why is None:
            return []
        log.info("session %s: %s: closing", session.sid, why)
        error = P.Error(code=P.OVER_BUDGET, session=session.sid, message=why)
        return [self._error(session.owner, error), self._drop(session, "over_budget")]

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
            "(serve --chunk-budget), whatever the fps: open a smaller session (height, width, chunk_frames, steps)"))
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
        return outgoing(identity, error)

    def _session(self, item: Inbound) -> Session:
        sid = item.request.session
        session = self.sessions.get(sid)
        if session is None or session.owner != item.identity:
            raise P.ProtocolError(P.UNKNOWN_SESSION, f"no open session {sid!r} for this client")
        return session

    def _drop(self, session: Session, reason: str, ref: P.Ref = None) -> Outgoing:
        del self.sessions[session.sid]
        self.scheduler.forget(session.sid)
        self.lane.forget(session.sid)
        self.stats.sessions_closed += 1
        if session.job is not None:
            session.dropped = True  # the job still uses the backend; its end frees it
        else:
            self._close_backend(session)
        return outgoing(session.owner, P.Closed(session=session.sid, reason=reason, ref=ref))

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
            out = [Outgoing(session.owner, wire.encode_chunk(header, frames))]
            # A batch's gen_ms is the whole batch's time; each session's share is what its budget sees.
            seconds = header.gen_ms / 1000.0 / max(1, batch_size)
        except Exception as exc:
            return self._backend_failed(session, exc)
        self.stats.chunks_produced += 1
        return out + (self._check_work(session) or self._check_budget(session, seconds))

    # -- request handlers ------------------------------------------------------------------------

    def _holders(self) -> list[Holder]:
        return [s.holder for s in self.sessions.values()] + [j.holder for j in self.jobs if j.kind == "open"]

    def _open(self, item: Inbound) -> list[Outgoing]:
        """Check everything that is cheap to check, admit, then build the session off the loop."""
        req: P.Open = item.request
        lookahead = self.builder.lookahead(req.lookahead)  # checked before a backend is built
        check_backend_name(req.backend)
        check_start(req)
        check_client_options(req.options)
        self.admission.check_work(*self.costs.work(req.backend, req.options))
        holder = Holder(item.identity, item.user, *self.builder.estimate(req.backend, req.options, lookahead))
        self.admission.check(self._holders(), holder)
        self.builder.check_predicted_cost(req)
        future = self.executor.submit(self.builder.build, item, lookahead, holder)
        return self._start_job(Job("open", future, item.identity, request=item, holder=holder))

    def _opened(self, job: Job) -> list[Outgoing]:
        item, req = job.request, job.request.request
        try:
            session = job.future.result()
        except P.ProtocolError as exc:
            exc.ref, exc.extra["request"] = req.ref, req.TYPE
            return [self._error(item.identity, wire.error_for(exc))]
        except Exception as exc:
            return [self._error(item.identity, self._internal(exc, req))]
        # The clock of a session that took long to build starts when it was built, not at the open.
        session.last_seen = item.received + session.build_s
        self.sessions[session.sid] = session
        self.stats.sessions_opened += 1
        info = session.info
        self.costs.learn_defaults(session.backend_name, req.options,
                                  {"height": info.height, "width": info.width, "chunk_frames": info.chunk_frames})
        return [outgoing(item.identity, self.builder.opened(session, req, self.instance))]

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
                return [self._error(item.identity, wire.error_for(exc, session.sid))]
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
        return outgoing(item.identity, ok)

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
            outgoing(item.identity, P.StatusReply(worker=self.worker_status(now), session=detail, ref=item.request.ref))
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
