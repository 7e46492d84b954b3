"""Timing for the front end: a jitter buffer shown at a fixed rate, rate meters, latency.

Chunks arrive in bursts (F frames at once, whenever the worker finishes one); the player should see
one frame every 1/fps seconds. `FramePacer` holds received chunks and hands out one frame per tick,
telling the caller when a chunk *starts* being shown so that it can ack it then: the worker runs at
most `lookahead` chunks (1 or 2) ahead of the last ack, so acking at display time keeps it that far
ahead of the screen rather than of the socket. Nothing here touches pygame or sockets, so it is tested alone.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PacedFrame:
    frame: np.ndarray  # [H, W, 3] uint8
    record: dict  # the frame's dataset record (action, prompt, steps, ...)
    chunk_seq: int
    chunk_index: int  # position of the frame within its chunk; 0 = the chunk starts being shown


class FramePacer:
    """Jitter buffer of chunks, drained one frame per 1/fps seconds.

    When the buffer runs dry the clock stops (the last frame stays up) and restarts from the time
    the next chunk arrives, so a slow chunk costs one stall rather than a burst of catch-up frames.
    """

    def __init__(self, fps: float) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.period = 1.0 / fps
        self._frames: deque[PacedFrame] = deque()
        self._next_due: float | None = None  # None: stalled, waiting for frames
        self.underruns = 0

    def push(self, seq: int, frames: np.ndarray, records: list[dict]) -> None:
        """Queue a received chunk: frames [F, H, W, 3] uint8 with one record per frame."""
        if len(frames) != len(records):
            raise ValueError(f"chunk {seq}: {len(frames)} frames but {len(records)} records")
        for i, (frame, record) in enumerate(zip(frames, records)):
            self._frames.append(PacedFrame(frame, record, seq, i))

    def clear(self) -> list[int]:
        """Drop everything buffered (after a reset); returns the chunk seqs that were never shown."""
        unseen = sorted({f.chunk_seq for f in self._frames if f.chunk_index == 0})
        self._frames.clear()
        self._next_due = None
        return unseen

    @property
    def buffered(self) -> int:
        return len(self._frames)

    def seconds_until_due(self, now: float) -> float:
        """How long the caller may wait (e.g. polling the socket) before the next tick."""
        if self._next_due is None:
            return self.period
        return max(0.0, self._next_due - now)

    def next_frame(self, now: float) -> PacedFrame | None:
        """The frame to show now, or None if none is due yet (or the buffer is empty)."""
        if not self._frames:
            if self._next_due is not None and now >= self._next_due:
                self.underruns += 1
                self._next_due = None
            return None
        if self._next_due is None:
            self._next_due = now  # (re)start the clock on the first frame after a stall
        if now < self._next_due:
            return None
        # Advance by one period from when it was due, not from now, so that the rate holds on
        # average; but never fall more than a period behind, which would show frames in a burst.
        self._next_due = max(self._next_due + self.period, now - self.period)
        return self._frames.popleft()


class RateMeter:
    """Events per second over a sliding window (generated chunks' frames, displayed frames)."""

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()

    def add(self, now: float, count: int = 1) -> None:
        self._events.append((now, count))
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        if len(self._events) < 2:
            return 0.0
        span = max(now - self._events[0][0], 1e-6)
        # The first event opens the window; the events after it happened within `span`.
        return sum(c for _, c in list(self._events)[1:]) / span

    def _trim(self, now: float) -> None:
        while self._events and now - self._events[0][0] > self.window_s:
            self._events.popleft()


class KeyLatency:
    """Key-to-frame latency: from a change of the held keys to the first displayed frame whose
    record shows the new keys.

    Changes are matched in order. A change the worker never rendered (pressed and released between
    two chunks) would block the ones after it, so changes older than `expire_s` are given up.
    """

    def __init__(self, expire_s: float = 2.0, keep: int = 200) -> None:
        self.expire_s = expire_s
        self._pending: deque[tuple[float, tuple[str, ...]]] = deque()
        self.samples_ms: deque[float] = deque(maxlen=keep)
        self.all_samples_ms: list[float] = []

    def key_change(self, keys: tuple[str, ...], now: float) -> None:
        self._pending.append((now, tuple(keys)))

    def frame_shown(self, record: dict, now: float) -> float | None:
        """Feed each displayed frame's record; returns a latency in ms when one is measured."""
        while self._pending and now - self._pending[0][0] > self.expire_s:
            self._pending.popleft()
        if not self._pending:
            return None
        keys = tuple(record.get("action", {}).get("keys", ()))
        changed_at, wanted = self._pending[0]
        if keys != wanted:
            return None
        self._pending.popleft()
        ms = (now - changed_at) * 1000.0
        self.samples_ms.append(ms)
        self.all_samples_ms.append(ms)
        return ms

    def recent_ms(self) -> float | None:
        """Median of the recent samples, for the HUD."""
        return float(np.median(self.samples_ms)) if self.samples_ms else None


def percentiles_ms(samples: list[float]) -> dict[str, float | None]:
    """{"p50", "p95", "max"} of latency samples in ms, rounded; None when there are none."""
    if not samples:
        return {"p50": None, "p95": None, "max": None}
    a = np.asarray(samples, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(a, 50)), 2),
        "p95": round(float(np.percentile(a, 95)), 2),
        "max": round(float(a.max()), 2),
    }


def monotonic() -> float:
    return time.perf_counter()
