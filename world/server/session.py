"""One client's world inside the worker: a backend plus the input, flow-control and index state.

A `Session` knows nothing about sockets. The worker's compute loop calls `produce()` when
`can_produce()` says the client is less than the session's lookahead behind, and applies
requests through the small methods below; every refusal is a `ProtocolError` carrying the code
the client will see.

Reset view: when a backend's reset already produced a whole chunk (`Backend.take_reset_chunk`,
the generated world's chunk 0), the first chunk after open/reset is that chunk, not a new
`step_chunk`: its records carry the idle action (what generated it) and `"reset_view": true`, its
header `extra["reset_view"] = True`, and its `gen_ms` is the wall time of the reset that made it.
It consumes no queued or held action: those start with the next chunk. A backend that says what
its world started from (the generated world's `start`, world/start.py) puts it in the chunk's
extra (`start`, `start_source`, and on a fallback `start_requested`, `start_notice`); the reset
view's records then carry `"start": MODE` too, marking them as the world's start frames.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from world.actions import IDLE, Action
from world.backend import Backend, BackendInfo, ChunkResult, PromptError
from world.server.admission import chunk_work
from world.server.protocol import (
    BAD_ACK,
    BAD_PROMPT,
    QUEUE_FULL,
    Chunk,
    ProtocolError,
    frame_record,
    is_int,
)


@dataclass(frozen=True)
class ResetView:
    """A chunk the backend's reset already produced, waiting to be sent as the world's chunk 0."""

    result: ChunkResult
    prompt: str  # the prompt it was generated with (a switch before it is sent does not change it)
    gen_ms: float  # wall time of the reset that generated it


@dataclass(frozen=True)
class PendingChunk:
    """A chunk begun by `Session.begin_chunk`: the actions that make it and the prompt it is made with,
    or the reset view it sends (then nothing is generated)."""

    actions: list[Action]
    prompt: str
    view: ResetView | None


class Session:
    """State of one open session. `seq` counts chunks for flow control and never resets;
    `chunk` and `i` (frame index) restart at 0 on reset, like a new dataset episode."""

    def __init__(
        self,
        sid: str,
        owner: bytes,
        backend_name: str,
        backend: Backend,
        prompt: str,
        seed: int,
        max_queued: int,
        now: float,
        lookahead: int,
        reset_ms: float = 0.0,
    ):
        self.sid = sid
        self.owner = owner  # ROUTER identity of the client that opened it; only it may drive it
        self.backend_name = backend_name
        self.backend = backend
        self.info: BackendInfo = backend.info
        self.prompt = prompt
        self.seed = seed
        self.max_queued = max_queued
        self.lookahead = lookahead  # chunks generated ahead of the last ack (flow-control window)
        self.held: Action = IDLE
        self.queue: deque[Action] = deque()
        self.next_seq = 0
        self.acked = -1
        self.epoch = 0
        self.chunk_index = 0
        self.frame_index = 0
        self.chunks_produced = 0
        self.last_seen = now
        # Worker-side life cycle (world/server/core.py): a job running off the compute loop on this
        # session's backend (its first chunk, a reset), the requests that wait for it, and the
        # cost limit its chunks are held to.
        self.job: object | None = None
        self.deferred: list = []
        self.trial = True  # the first chunk made by step_chunk is timed off the loop before any inline one
        self.budget_s = float("inf")
        # What its chunks ask of the loop (world/server/admission.py chunk_work): network evaluations
        # per chunk as the open asked (1 when it did not say), then as its latest chunk reported.
        self.evaluations = 1
        # Whom its share of the loop counts against (world/server/batching.py): its client's key on an
        # authenticated worker, else its socket.
        self.client: object = owner
        self.strikes = 0  # consecutive chunks over budget
        self.dropped = False  # closed while a job ran: the job's end frees the backend
        self.holder: object | None = None  # what it counts against in admission (world/server/admission.py)
        self.build_s = 0.0  # how long building and resetting it took
        self.start: str | None = None  # what the current world started from, when the backend says
        self.start_notice: str | None = None  # why that is not the start that was asked for
        # The worker reset the backend before building the session (reset_ms: how long that took).
        self.reset_view: ResetView | None = self._take_reset_view(reset_ms)

    # -- requests ------------------------------------------------------------------------------

    def in_flight(self) -> int:
        """Chunks sent but not yet acknowledged."""
        return self.next_seq - 1 - self.acked

    def can_produce(self) -> bool:
        return self.in_flight() < self.lookahead

    @property
    def work(self) -> int:
        """Pixel-frame evaluations of its next chunk (as many as its latest one took)."""
        info = self.info
        return chunk_work(info.height, info.width, info.chunk_frames, self.evaluations)

    def set_held(self, action: Action) -> None:
        self.held = action

    def queue_actions(self, actions: Sequence[Action]) -> None:
        # All or nothing: a half-queued sequence would desynchronise a scripted client.
        if len(self.queue) + len(actions) > self.max_queued:
            raise ProtocolError(
                QUEUE_FULL, f"{len(actions)} actions do not fit: {len(self.queue)} of {self.max_queued} queued"
            )
        self.queue.extend(actions)

    def ack(self, seq: int) -> None:
        if seq >= self.next_seq:
            raise ProtocolError(BAD_ACK, f"ack {seq} for a chunk not yet sent (next seq {self.next_seq})")
        self.acked = max(self.acked, seq)  # acks are cumulative; an old one changes nothing

    def set_prompt(self, prompt: str) -> None:
        try:
            self.backend.set_prompt(prompt)
        except PromptError as exc:
            raise ProtocolError(BAD_PROMPT, str(exc)) from None
        self.prompt = prompt

    def reset(self, seed: int | None) -> None:
        seed = self.seed if seed is None else seed
        self.reset_view = None
        start = time.perf_counter()
        self.backend.reset(seed, self.prompt)
        self.reset_view = self._take_reset_view((time.perf_counter() - start) * 1000.0)
        self.seed = seed
        self.epoch += 1
        self.chunk_index = 0
        self.frame_index = 0
        self.queue.clear()  # queued actions belonged to the old world; the held input stays

    # -- generation ----------------------------------------------------------------------------

    def _take_actions(self, count: int) -> list[Action]:
        return [self.queue.popleft() if self.queue else self.held for _ in range(count)]

    def _take_reset_view(self, reset_ms: float) -> ResetView | None:
        result = self.backend.take_reset_chunk()
        if result is None:
            return None
        self.start, self.start_notice = result.extra.get("start"), result.extra.get("start_notice")
        return ResetView(result, self.prompt, round(reset_ms, 3))

    def produce(self) -> tuple[Chunk, np.ndarray]:
        """Generate the next chunk: [F, H, W, 3] uint8 frames and the header describing them.

        Right after open/reset, a pending reset view is sent instead (see the module docstring)."""
        pending = self.begin_chunk()
        if pending.view is not None:
            return self.finish_chunk(pending)
        start = time.perf_counter()
        result = self.backend.step_chunk(pending.actions)
        return self.finish_chunk(pending, result, (time.perf_counter() - start) * 1000.0)

    def begin_chunk(self) -> PendingChunk:
        """Take what the next chunk is made of: the pending reset view, or the next F actions (queued
        first, then the held input). The worker batches several sessions' steps between this and
        `finish_chunk` (world/server/batching.py)."""
        view, self.reset_view = self.reset_view, None
        if view is not None:
            return PendingChunk([IDLE] * self.info.chunk_frames, view.prompt, view)
        return PendingChunk(self._take_actions(self.info.chunk_frames), self.prompt, None)

    def finish_chunk(self, pending: PendingChunk, result: ChunkResult | None = None,
                     gen_ms: float = 0.0) -> tuple[Chunk, np.ndarray]:
        """The chunk's header and frames from the backend's result for `pending` (none for a reset view)."""
        info = self.info
        F, H, W = info.chunk_frames, info.height, info.width
        view, actions, prompt = pending.view, pending.actions, pending.prompt
        if view is not None:
            result, gen_ms = view.result, view.gen_ms
        frames = np.asarray(result.frames)
        if frames.shape != (F, H, W, 3) or frames.dtype != np.uint8:
            raise RuntimeError(f"backend returned {frames.shape} {frames.dtype}, expected [{F},{H},{W},3] uint8")
        records = tuple(
            frame_record(
                self.frame_index + k,
                self.chunk_index,
                a,
                prompt,
                result.steps,
                result.nfe,
                round((self.frame_index + k) / info.fps, 6),
            )
            for k, a in enumerate(actions)
        )
        extra = dict(result.extra)
        state = self.backend.resume_state()
        if state is not None:  # where this chunk leaves the world, for a client to resume from
            extra["resume"] = state
        if view is not None:
            start = {"start": extra["start"]} if isinstance(extra.get("start"), str) else {}
            records = tuple({**r, "reset_view": True, **start} for r in records)
            extra["reset_view"] = True
        elif is_int(result.nfe) and result.nfe > 0:  # a stepped chunk (not the reset's): what the next costs
            self.evaluations = result.nfe
        header = Chunk(
            session=self.sid,
            seq=self.next_seq,
            epoch=self.epoch,
            chunk=self.chunk_index,
            records=records,
            gen_ms=round(gen_ms, 3),
            steps=result.steps,
            nfe=result.nfe,
            shape=(F, H, W, 3),
            extra=extra,
        )
        self.next_seq += 1
        self.chunk_index += 1
        self.frame_index += F
        self.chunks_produced += 1
        return header, frames

    def resume_at(self, seq: int, chunk: int, frame: int, epoch: int) -> None:
        """Go on counting where a lost session stopped: its next chunk is `seq` (chunk `chunk` of
        epoch `epoch`, first frame `frame`), everything before it counts as acknowledged, and the
        reset view is not sent: the client showed those frames already."""
        self.next_seq, self.acked = seq, seq - 1
        self.chunk_index, self.frame_index, self.epoch = chunk, frame, epoch
        self.reset_view = None

    def describe(self, now: float) -> dict:
        """JSON-able state for status replies."""
        return {
            "session": self.sid,
            "backend": self.backend_name,
            "prompt": self.prompt,
            "seed": self.seed,
            "epoch": self.epoch,
            "next_seq": self.next_seq,
            "acked": self.acked,
            "window": self.lookahead,
            "start": self.start,
            "in_flight": self.in_flight(),
            "queued_actions": len(self.queue),
            "chunks_produced": self.chunks_produced,
            "idle_s": round(now - self.last_seen, 3),
        }

    def close(self) -> None:
        self.backend.close()
