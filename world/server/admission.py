"""Who may open a session, checked before anything is built (docs/protocol.md, "Admission").

The worker admits an `open` only if

- the client holds fewer than `per_client` sessions (opening ones included), counted both per
  ZeroMQ routing identity and, on an authenticated worker, per client key: one socket, or one key
  behind many sockets, cannot take the worker's sessions from everybody else
  (`too_many_sessions`, which waiting does not cure);
- the worker serves fewer than `max_sessions` sessions, and
- the estimated memory of all sessions plus the new one fits `memory_budget_bytes` (both `busy`
  with a `retry_after_s` hint: a slot frees when someone leaves).

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
DEFAULT_GEOMETRY = {"height": 64, "width": 64, "chunk_frames": 3}


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


def estimate_bytes(backend: str, options: dict, lookahead: int) -> int:
    """Pessimistic resident memory of one session: `lookahead` + 2 chunks of frames (in flight,
    being made, being encoded), the backend's base and, for the engine, its per-pixel buffers
    (weights shared with other sessions are not its own: they go in Holder.shared)."""
    geometry = {k: options.get(k) or v for k, v in DEFAULT_GEOMETRY.items()}  # range-checked by the worker
    pixels = int(geometry["height"]) * int(geometry["width"])
    frames = pixels * 3 * int(geometry["chunk_frames"]) * (lookahead + 2)
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

    def check(self, holders: Iterable[Holder], new: Holder) -> None:
        """Raise ProtocolError (too_many_sessions or busy with retry_after_s) unless `new` fits."""
        holders = list(holders)
        mine = sum(1 for h in holders if h.identity == new.identity or (new.user is not None and h.user == new.user))
        if mine >= self.config.per_client:
            cap = self.config.per_client
            raise P.ProtocolError(P.TOO_MANY_SESSIONS, f"this client already holds {mine} sessions, the most one "
                                  f"client may hold on this worker ({cap}); close one first")  # fmt: skip
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
    """What each backend has been seen to sustain: the lowest seconds per generated pixel-frame
    of its sessions' first timed chunks. It predicts a new session's chunk time from its geometry
    before anything is built, so a session far over its budget is refused at once instead of
    after a build that costs everyone CPU (a 1024x1024 engine's terrain takes tens of seconds).
    Small sessions have fixed costs, so predictions err high for large ones; PREDICTION_SLACK
    keeps borderline sessions to their measured first chunk."""

    PREDICTION_SLACK = 2.0

    def __init__(self) -> None:
        self.rate: dict[str, float] = {}  # backend -> seconds per pixel-frame
        self.geometry: dict[str, tuple[int, int, int]] = {}  # backend -> (height, width, chunk_frames) last seen

    def learn(self, backend: str, height: int, width: int, chunk_frames: int, seconds: float) -> None:
        rate = seconds / (height * width * chunk_frames)
        self.rate[backend] = min(rate, self.rate.get(backend, rate))
        self.geometry[backend] = (height, width, chunk_frames)

    def predict(self, backend: str, options: dict) -> float | None:
        """Predicted seconds per chunk for a session with these options; None before any was seen."""
        if backend not in self.rate:
            return None
        seen = dict(zip(("height", "width", "chunk_frames"), self.geometry[backend]))
        h, w, f = (int(options.get(k) or seen[k]) for k in ("height", "width", "chunk_frames"))
        return self.rate[backend] * h * w * f

    def too_costly(self, backend: str, options: dict, budget_s: float) -> float | None:
        """The predicted chunk time when it exceeds the budget by more than the slack, else None."""
        predicted = self.predict(backend, options)
        return predicted if predicted is not None and predicted > budget_s * self.PREDICTION_SLACK else None
