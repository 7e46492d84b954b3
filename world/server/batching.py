"""Which sessions the worker's compute loop serves next, and serving them as one batch.

The compute loop asks `BatchScheduler.next_batch` for the sessions to serve in this pass and hands
them to `produce_batch`; between two passes it applies requests, so a batch never holds a session
that was closed or reset meanwhile.

- Batches: due sessions (fewer than their lookahead chunks unacknowledged) whose backends have the
  same `Backend.batch_key()` (the generated world: one loaded model, one sampler) make their chunks
  together, at most `max_batch` at a time; a backend without a key (the engine) goes alone.
- Fairness by work, in rounds (start-time fair queueing): each session has a virtual start time,
  counted in rounds, and its next chunk a cost: one round for a chunk of at most `round_work`
  pixel-frame evaluations (world/server/admission.py chunk_work), work / round_work rounds for a
  larger one, times the number of due sessions its client holds (its client's key on an
  authenticated worker, else its socket), so the sessions of one client share one client's part.
  The next batch starts with the due session whose chunk would finish first in virtual time
  (start + cost); serving it moves its start there. A session that is new or was not due (its
  client had not acknowledged) starts no earlier than the earliest due one: it cannot bank idle
  time and then take the loop for a burst. So sessions of equal-sized chunks get one chunk each
  per round (never two in one round), a session whose chunks are k times another's gets one for
  its k, whatever fps it claims, and a player acking as it shows its frames is served after the
  chunk being made, not after a round of everyone's. The worker keeps two schedulers
  (world/server/core.py): one for the chunks made on the loop (at most `round_work`), one for the
  larger ones, made off the loop one at a time.
- Isolation: each session's result or error is its own (`Backend.step_batch`); the caller sends the
  chunks and ends only the sessions whose own step failed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from world.server.admission import ROUND_WORK
from world.server.protocol import Chunk
from world.server.session import PendingChunk, Session


def batch_key(session: Session) -> Hashable:
    """Sessions with equal keys may share a batch; a backend without a key gets one of its own."""
    key = session.backend.batch_key()
    return ("alone", session.sid) if key is None else key


@dataclass
class BatchScheduler:
    """Fair choice of the next batch by work, in rounds (module docstring)."""

    max_batch: int = 8
    round_work: int = ROUND_WORK
    rounds: int = 0  # the round of the latest batch (chunk headers carry it: extra["batch"]["round"])

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.round_work < 1:
            raise ValueError(f"round_work must be >= 1, got {self.round_work}")
        self._start: dict[str, float] = {}  # session -> virtual start of its next chunk, in rounds
        self._now = 0.0  # virtual time: the earliest start of the sessions due at the latest batch

    def next_batch(self, sessions: Sequence[Session]) -> list[Session]:
        """The sessions to serve now: the due session whose chunk finishes first in virtual time
        and the due sessions of its batch key in the same round, up to max_batch; [] when none is
        due."""
        due = self._due(sessions)
        if not due:
            return []
        clients = Counter(s.client for s in due)
        finish = {s.sid: self._start[s.sid] + self.cost(s) * clients[s.client] for s in due}
        due.sort(key=lambda s: (finish[s.sid], self._start[s.sid]))  # stable: full ties keep the sessions' order
        round_of = int(self._start[due[0].sid])
        self.rounds = round_of + 1
        key = batch_key(due[0])
        batch = [s for s in due if batch_key(s) == key and int(self._start[s.sid]) == round_of][: self.max_batch]
        for s in batch:
            self._start[s.sid] = finish[s.sid]
        return batch

    def _due(self, sessions: Sequence[Session]) -> list[Session]:
        """The due sessions, none starting before the virtual time (no banked idle time), which
        moves on to the earliest of them."""
        due = [s for s in sessions if s.can_produce()]
        for s in due:
            self._start[s.sid] = max(self._start.get(s.sid, self._now), self._now)
        self._now = min((self._start[s.sid] for s in due), default=self._now)
        return due

    def forget(self, sid: str) -> None:
        """A session that is gone (its start is kept meanwhile, while it waits for acks or a job)."""
        self._start.pop(sid, None)

    def cost(self, session: Session) -> float:
        """Rounds one chunk of `session` costs: 1 up to round_work, in proportion beyond."""
        return max(1.0, session.work / self.round_work)


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
