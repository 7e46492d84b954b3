"""Who may open a session, checked before anything is built (docs/protocol.md, "Admission").

The worker admits an `open` only if

- the client holds fewer than `per_client` sessions (opening ones included), counted both per
  ZeroMQ routing identity and, on an authenticated worker, per client key: one socket, or one key
  behind many sockets, cannot take the worker's sessions from everybody else
  (`too_many_sessions`, which waiting does not cure);
- the worker serves fewer than `max_sessions` sessions, and
- the estimated memory of all sessions plus the new one fits `memory_budget_bytes` (both `busy`
  with a `retry_after_s` hint: a slot frees when someone leaves);
- the new session's own memory is at most its share of the budget (`session_memory_bytes`:
  `over_budget`, which waiting does not cure: one session cannot take the memory of several).

What a session may ask of the compute loop is counted as work, never as the time a client claims
(its fps): a chunk's work is height x width x chunk_frames x network evaluations (`chunk_work`,
"pixel-frame evaluations"; the engine counts one evaluation). An open whose chunk work is over the
worker's `max_chunk_work` is refused with `over_budget` before anything is built; the scheduler
(world/server/batching.py) shares the loop among sessions by the same work.

The memory estimate is deliberately simple and pessimistic (frames in flight plus a per-backend
base: the engine's per-pixel buffers, the generated world's runtime); it exists so an `open` is
refused before a backend is built, not after the machine starts swapping. A generated world's
weights are loaded once per checkpoint and shared by all its sessions
(world/backends/model_cache.py), so they are counted once per checkpoint, not once per session.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from world.server import protocol as P

MIB = 1024 * 1024
# Bytes per pixel the engine keeps besides its frames (terrain windows and render buffers grow with
# the frame): measured peak RSS 300 MiB at 256x256, 990 MiB at 512x512, 3.3 GiB at 1024x1024.
ENGINE_BYTES_PER_PIXEL = 4096
BACKEND_BASE_BYTES = {"engine": 16 * MIB, "generated": 256 * MIB}
# What a session is when its open leaves an option out: the engine's and the bundled world's size
# and chunk length, until a session of that backend built without the option shows its own
# (CostModel.defaults). Never what another session asked for explicitly.
DEFAULT_GEOMETRY = {"height": 64, "width": 64, "chunk_frames": 3}
# Pixel-frame evaluations one chunk may take: a 256x256 engine chunk of 16 frames, a 512x512 one of
# 4, the bundled 64x64 world at up to 85 network evaluations (its teacher's 32 guided steps: 66).
# The engine makes it in 65 ms on an idle core, 0.35-0.6 s on 2 cores under a load of 7.
MAX_CHUNK_WORK = 1 << 20
# A chunk of at most this much work is made on the compute loop and costs one round of the
# scheduler (world/server/batching.py): the engine's default 64x64x3 (12,288), up to 64x64x16 or
# 128x128x4, the bundled world at its own sampler (4-5 evaluations: 49,152-61,440). A larger one
# costs work / ROUND_WORK rounds and is made off the loop (world/server/core.py).
ROUND_WORK = 1 << 16
# The least memory one session may hold whatever the budget's share per session (a generated
# world's runtime alone is 256 MiB; a 512x512 engine about 1 GiB).
SESSION_MEMORY_FLOOR = 2048 * MIB


@dataclass(frozen=True)
class Holder:
    """What one admitted (or opening) session counts against: its client and its estimated cost."""

    identity: bytes
    user: str | None  # the client's public key (z85) on an authenticated worker, else None
    bytes: int  # this session's own memory
    shared: tuple[str, int] | None = None  # (key, bytes) of memory all sessions with this key share


@dataclass(frozen=True)
class AdmissionConfig:
    max_sessions: int = 8
    per_client: int = 2
    memory_budget_bytes: int = 0  # 0: half the machine's memory (default_memory_budget)
    retry_after_s: float = 5.0
    max_chunk_work: int = MAX_CHUNK_WORK  # pixel-frame evaluations one chunk may take (chunk_work)


def default_memory_budget() -> int:
    """Half of the machine's memory (the other half is the OS's, the clients' and the model's
    runtime): /proc/meminfo where it exists, else 8 GiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024 // 2
    except (OSError, ValueError, IndexError):
        pass
    return 8 * 1024 * MIB


def directory_bytes(path: str | os.PathLike | None) -> int:
    """Total size of the regular files directly or indirectly under `path` (0 when unreadable)."""
    if path is None:
        return 0
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(Path(root) / name, follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def geometry(options: dict, defaults: dict = DEFAULT_GEOMETRY) -> tuple[int, int, int]:
    """(height, width, chunk_frames) an open asks for, `defaults` where it leaves one out
    (range-checked by the worker before this)."""
    return tuple(int(options.get(k) or defaults[k]) for k in DEFAULT_GEOMETRY)


def evaluations(options: dict) -> int:
    """Network evaluations per chunk an open asks for: its `steps`, or the most steps of its
    diagonal `schedule`, twice with `guidance` (conditional and unconditional passes); 1 without
    (the engine, or a sampler left at the checkpoint's own: its chunks are measured once made)."""
    steps = options.get("steps")
    schedule = options.get("schedule")
    count = steps if P.is_int(steps) else 1
    if isinstance(schedule, str):
        counts = [int(part) for part in schedule.split(",") if part.strip().isdigit()]
        count = max([count, *counts])
    guidance = options.get("guidance")
    guided = isinstance(guidance, (int, float)) and not isinstance(guidance, bool) and guidance > 0
    return max(1, count) * (2 if guided else 1)


def chunk_work(height: int, width: int, chunk_frames: int, evaluations: int) -> int:
    """Pixel-frame evaluations of one chunk: what it asks of the compute loop, whatever its fps."""
    return height * width * chunk_frames * max(1, evaluations)


def estimate_bytes(backend: str, options: dict, lookahead: int) -> int:
    """Pessimistic resident memory of one session: `lookahead` + 2 chunks of frames (in flight,
    being made, being encoded), the backend's base and, for the engine, its per-pixel buffers
    (weights shared with other sessions are not its own: they go in Holder.shared)."""
    height, width, chunk_frames = geometry(options)
    pixels = height * width
    frames = pixels * 3 * chunk_frames * (lookahead + 2)
    extra = pixels * ENGINE_BYTES_PER_PIXEL if backend == "engine" else 0
    return frames + extra + BACKEND_BASE_BYTES.get(backend, 16 * MIB)


def memory_bytes(holders: Iterable[Holder]) -> int:
    """Estimated memory of these sessions: each one's own bytes, and each shared part once."""
    holders = list(holders)
    shared = dict(h.shared for h in holders if h.shared is not None)
    return sum(h.bytes for h in holders) + sum(shared.values())


class Admission:
    """The admission rules over the sessions held now (`holders`: open and opening ones)."""

    def __init__(self, config: AdmissionConfig):
        self.config = config
        self.budget = config.memory_budget_bytes or default_memory_budget()
        # One session's share of the memory budget (at least SESSION_MEMORY_FLOOR).
        self.session_memory_bytes = max(self.budget // max(1, config.max_sessions), SESSION_MEMORY_FLOOR)

    def over_work(self, height: int, width: int, chunk_frames: int, evaluations: int) -> str | None:
        """Why such a chunk is over the worker's max_chunk_work, or None when it is not."""
        work, cap = chunk_work(height, width, chunk_frames, evaluations), self.config.max_chunk_work
        if work <= cap:
            return None
        return (f"a chunk of this session is {work:,} pixel-frame evaluations ({height}x{width} pixels x "
                f"{chunk_frames} frames x {evaluations} network evaluations); this worker allows at most {cap:,} "
                "per chunk, whatever the fps: open a smaller session (height, width, chunk_frames, steps)")  # fmt: skip

    def check_work(self, height: int, width: int, chunk_frames: int, evaluations: int) -> None:
        """Raise over_budget when such a chunk is over the worker's max_chunk_work."""
        why = self.over_work(height, width, chunk_frames, evaluations)
        if why is not None:
            raise P.ProtocolError(P.OVER_BUDGET, why)

    def check(self, holders: Iterable[Holder], new: Holder) -> None:
        """Raise ProtocolError (too_many_sessions, over_budget, or busy with retry_after_s) unless
        `new` fits."""
        holders = list(holders)
        mine = sum(1 for h in holders if h.identity == new.identity or (new.user is not None and h.user == new.user))
        if mine >= self.config.per_client:
            cap = self.config.per_client
            raise P.ProtocolError(P.TOO_MANY_SESSIONS, f"this client already holds {mine} sessions, the most one "
                                  f"client may hold on this worker ({cap}); close one first")  # fmt: skip
        if new.bytes > self.session_memory_bytes:
            share = self.session_memory_bytes // MIB
            raise P.ProtocolError(P.OVER_BUDGET, f"the session needs about {new.bytes // MIB} MiB; one session may "
                                  f"hold at most {share} MiB on this worker (its share of the memory budget): open "
                                  "a smaller session (height, width)")  # fmt: skip
        if len(holders) >= self.config.max_sessions:
            self._busy(f"the worker serves its maximum of {self.config.max_sessions} sessions")
        used = memory_bytes(holders)
        needs = memory_bytes([*holders, new]) - used  # shared weights already loaded cost nothing more
        if used + needs > self.budget:
            self._busy(f"the session needs about {needs // MIB} MiB and {used // MIB} of the worker's "
                       f"{self.budget // MIB} MiB memory budget are taken")  # fmt: skip

    def _busy(self, why: str) -> None:
        retry = self.config.retry_after_s
        raise P.ProtocolError(P.BUSY, f"{why}; retry in {retry:g} s", retry_after_s=retry)


class CostModel:
    """What each backend has been seen to sustain: the lowest seconds per unit of chunk work
    (`chunk_work`) of its sessions' first timed chunks. It predicts a new session's chunk time from
    the work its open asks for, before anything is built, so a session far over its budget is
    refused at once instead of after a build that costs everyone CPU. Options an open leaves out
    count as the backend's defaults: what a session of that backend got when its open left them
    out too (DEFAULT_GEOMETRY before one was seen), never what another session asked for (one
    large session must not make every later default open look large). Small sessions have fixed
    costs, so predictions err high for large ones; PREDICTION_SLACK keeps borderline sessions to
    their measured first chunk."""

    PREDICTION_SLACK = 2.0

    def __init__(self) -> None:
        self.rate: dict[str, float] = {}  # backend -> seconds per pixel-frame evaluation
        self._defaults: dict[str, dict[str, int]] = {}  # backend -> geometry its sessions get unasked

    def learn(self, backend: str, work: int, seconds: float) -> None:
        rate = seconds / max(1, work)
        self.rate[backend] = min(rate, self.rate.get(backend, rate))

    def learn_defaults(self, backend: str, options: dict, built: dict[str, int]) -> None:
        """A session of `backend` opened with `options` was built with the geometry `built`: the
        values of the options it left out are the backend's defaults."""
        unasked = {k: built[k] for k in DEFAULT_GEOMETRY if options.get(k) is None}
        self._defaults[backend] = {**self.defaults(backend), **unasked}

    def defaults(self, backend: str) -> dict[str, int]:
        return self._defaults.get(backend, DEFAULT_GEOMETRY)

    def work(self, backend: str, options: dict) -> tuple[int, int, int, int]:
        """(height, width, chunk_frames, evaluations) an open of `backend` asks for."""
        return (*geometry(options, self.defaults(backend)), evaluations(options))

    def predict(self, backend: str, options: dict) -> float | None:
        """Predicted seconds per chunk for a session with these options; None before any was seen."""
        if backend not in self.rate:
            return None
        return self.rate[backend] * chunk_work(*self.work(backend, options))

    def too_costly(self, backend: str, options: dict, budget_s: float) -> float | None:
        """The predicted chunk time when it exceeds the budget by more than the slack, else None."""
        predicted = self.predict(backend, options)
        return predicted if predicted is not None and predicted > budget_s * self.PREDICTION_SLACK else None
