"""Which sessions the worker's compute loop serves next, and serving them as one batch.

The compute loop asks `BatchScheduler.next_batch` for the sessions to serve in this pass and hands
them to `produce_batch`; between two passes it applies requests, so a batch never holds a session
that was closed or reset meanwhile.

- Batches: due sessions (fewer than their lookahead chunks unacknowledged) whose backends have the
  same `Backend.batch_key()` (the generated world: one loaded model, one sampler) make their chunks
  together, at most `max_batch` at a time; a backend without a key (the engine) goes alone.
- Fairness, in rounds: a round serves every due session once; a session served in this round waits
  until every other session that is due has been served too. So between two chunks of one session,
  every other due session gets exactly one: no session is ever more than one batch behind another,
  whatever mix of worlds and samplers the worker holds.
- Isolation: each session's result or error is its own (`Backend.step_batch`); the caller sends the
  chunks and ends only the sessions whose own step failed.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from world.server.protocol import Chunk
from world.server.session import PendingChunk, Session


def batch_key(session: Session) -> Hashable:
    """Sessions with equal keys may share a batch; a backend without a key gets one of its own."""
    key = session.backend.batch_key()
    return ("alone", session.sid) if key is None else key


@dataclass
class BatchScheduler:
    """Round-based choice of the next batch (module docstring)."""

    max_batch: int = 8
    rounds: int = 0  # rounds started so far (chunk headers carry it: extra["batch"]["round"])

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        self._served: set[str] = set()  # sessions served in the current round

    def next_batch(self, sessions: Sequence[Session]) -> list[Session]:
        """The sessions to serve now: the first due session not yet served in this round and those of
        its batch key also waiting, up to max_batch; [] when none is due."""
        due = [s for s in sessions if s.can_produce()]
        waiting = [s for s in due if s.sid not in self._served]
        if due and not waiting:  # every due session had its chunk: a new round
            self._served.clear()
            waiting = due
        if not waiting:
            return []
        if not self._served:
            self.rounds += 1
        key = batch_key(waiting[0])
        batch = [s for s in waiting if batch_key(s) == key][: self.max_batch]
        self._served.update(s.sid for s in batch)
        return batch


Made = tuple[Chunk, np.ndarray] | Exception  # a session's chunk (header, frames [F, H, W, 3]) or its failure


def produce_batch(batch: Sequence[Session], round_id: int = 0) -> list[tuple[Session, Made]]:
    """Make the next chunk of every session in `batch` (one batch key): reset views are sent as they
    are, the rest step together (`Backend.step_batch`). gen_ms is the batch's wall time, what each
    of them waited. Never raises for one session's failure: that session's entry is the exception."""
    pending = [s.begin_chunk() for s in batch]
    stepping = [(s, p) for s, p in zip(batch, pending) if p.view is None]
    start = time.perf_counter()
    results = _step(stepping)
    gen_ms = (time.perf_counter() - start) * 1000.0
    tag = {"round": round_id, "size": len(batch)}
    made: list[tuple[Session, Made]] = []
    for session, p in zip(batch, pending):
        result = results.get(session.sid)
        made.append((session, _finish(session, p, result, gen_ms, tag)))
    return made


def _step(stepping: list[tuple[Session, PendingChunk]]) -> dict[str, object]:
    if not stepping:
        return {}
    backends = [s.backend for s, _ in stepping]
    results = type(backends[0]).step_batch(backends, [p.actions for _, p in stepping])
    return {s.sid: r for (s, _), r in zip(stepping, results, strict=True)}


def _finish(session: Session, pending: PendingChunk, result, gen_ms: float, tag: dict) -> Made:
    if isinstance(result, Exception):
        return result
    try:
        header, frames = session.finish_chunk(pending, result, gen_ms)
    except Exception as exc:  # noqa: BLE001 - a malformed result is this session's failure alone
        return exc
    header.extra["batch"] = tag
    return header, frames
