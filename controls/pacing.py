"""Timing for the front end: a jitter buffer shown at a fixed rate, rate meters, latency, and
whether other processes crowd the cores the world is made on.

Chunks arrive in bursts (F frames at once, whenever the worker finishes one); the player should see
one frame every 1/fps seconds. `FramePacer` holds received chunks and hands out one frame per tick,
telling the caller when a chunk *starts* being shown so that it can ack it then: the worker runs at
most `lookahead` chunks (1 or 2) ahead of the last ack, so acking at display time keeps it that far
ahead of the screen rather than of the socket. Nothing here touches pygame or sockets, so it is tested alone.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

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
    """Events per second (frames a chunk brings, frames shown) over a window that fits the rate.

    A fixed short window reads 0 when events come further apart than it is long (a chunk every 2-3 s
    on a busy machine) and over-reads when it happens to hold a burst. The window here reaches back
    over at least `min_events` events and `min_window_s` seconds (at most `max_window_s`), and the
    rate is the count after the first event over the time they took. While no event comes, the wait
    counts once it is longer than any interval in the window, so a stream that stops reads falling.
    """

    def __init__(self, min_window_s: float = 2.0, min_events: int = 5, max_window_s: float = 30.0) -> None:
        if not 0 < min_window_s <= max_window_s or min_events < 2:
            raise ValueError(f"RateMeter needs 0 < min_window_s <= max_window_s and min_events >= 2, got "
                             f"{min_window_s}, {max_window_s}, {min_events}")  # fmt: skip
        self.min_window_s, self.min_events, self.max_window_s = min_window_s, min_events, max_window_s
        self._events: deque[tuple[float, int]] = deque()

    def add(self, now: float, count: int = 1) -> None:
        self._events.append((now, count))
        self._trim(now)

    def rate(self, now: float) -> float:
        """Events per second; 0.0 until two events are in the window."""
        self._trim(now)
        if len(self._events) < 2:
            return 0.0
        times = [t for t, _ in self._events]
        longest = max(b - a for a, b in zip(times, times[1:]))
        waited = max(0.0, now - times[-1] - longest)  # a wait no interval in the window was as long as
        return sum(c for _, c in list(self._events)[1:]) / max(times[-1] - times[0] + waited, 1e-6)

    def span_s(self, now: float) -> float:
        """How far back the window reaches now (0.0 when it is empty)."""
        self._trim(now)
        return now - self._events[0][0] if self._events else 0.0

    def _trim(self, now: float) -> None:
        events = self._events
        while events and now - events[0][0] > self.max_window_s:
            events.popleft()
        while len(events) > self.min_events and now - events[1][0] >= self.min_window_s:
            events.popleft()


class BehindWatch:
    """Whether the world is made slower than it is shown ("behind" on the HUD).

    Flow control holds the arrival rate at the display rate while generation keeps up, so a low
    rate alone can be a pause or jitter; the screen running dry is what the player sees. Behind:
    chunks arrive at under `share` of the world's frame rate and the pacer's buffer ran dry at least
    `stalls` times within the window the rate is measured over (one slow chunk is one stall)."""

    def __init__(self, share: float = 0.9, stalls: int = 2) -> None:
        self.share, self.stalls = share, stalls
        self._seen = 0  # the pacer's underrun count already noted
        self._times: deque[float] = deque()

    def note_underruns(self, count: int, now: float) -> None:
        """Feed the pacer's running underrun count (a new pacer starts again from 0)."""
        if count < self._seen:
            self._seen = 0
        self._times.extend([now] * (count - self._seen))
        self._seen = count

    def forget(self) -> None:
        """A new world or a resumed stream: earlier stalls say nothing about it."""
        self._times.clear()

    def behind(self, now: float, rate_fps: float, world_fps: float, window_s: float) -> bool:
        while self._times and now - self._times[0] > window_s:
            self._times.popleft()
        return rate_fps < self.share * world_fps and len(self._times) >= self.stalls


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


# The HUD says the machine is busy when other processes use at least this many cores and, with this
# process's own (the window and the local worker it started), at least this share of all of them:
# then the model's threads wait for a core, and the world is slower than on a quiet machine.
BUSY_OTHERS_CORES = 0.5
BUSY_SHARE = 0.8


@dataclass(frozen=True)
class CpuTimes:
    machine_s: float  # CPU seconds every core has spent busy so far (Linux /proc/stat)
    own_s: float  # of those, this process's and its descendants' (the local worker)


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (Linux /proc), or None where unreadable."""
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (field 3 on: state, ppid, ...), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError, ValueError):
        return None


def family(root: int) -> list[int]:
    """`root` and every process below it (the local worker play starts and what that starts)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        fields = _stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def read_cpu_times(root: int | None = None) -> CpuTimes | None:
    """The machine's busy CPU seconds and those of `root` (default: this process) and its
    descendants, from Linux /proc; None where /proc cannot be read."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        own = [process_cpu_s(pid) for pid in family(root or os.getpid())]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return CpuTimes((user + nice + system + irq + softirq + steal) / tick, sum(t for t in own if t is not None))


class MachineLoad:
    """Whether other processes keep this machine's cores busy (the HUD's "machine busy" line).

    Every `interval_s` it compares the machine's CPU use (/proc/stat) with this process's and its
    children's; where /proc is missing, the 1-minute load average against the core count. A worker
    reached with --connect on this machine counts as another process: it is not play's child."""

    def __init__(self, interval_s: float = 2.0, read=read_cpu_times, cores: int | None = None) -> None:
        self.interval_s, self._read = interval_s, read
        self.cores = cores or os.cpu_count() or 1
        self._last: tuple[float, CpuTimes] | None = None
        self.others_cores: float | None = None  # cores' worth other processes used over the last interval
        self.own_cores = 0.0
        self.load: float | None = None  # the load average, where /proc is missing

    def update(self, now: float) -> None:
        if self._last is not None and now - self._last[0] < self.interval_s:
            return
        times = self._read()
        if times is None:
            self.load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            return
        if self._last is not None and now > self._last[0]:
            seconds, before = now - self._last[0], self._last[1]
            self.own_cores = max(0.0, times.own_s - before.own_s) / seconds
            self.others_cores = max(0.0, (times.machine_s - before.machine_s) / seconds - self.own_cores)
        self._last = (now, times)

    def busy(self) -> str:
        """"others use 1.8 of 2 cores" while other processes crowd the cores; "" otherwise."""
        if self.others_cores is not None:
            crowded = self.others_cores + self.own_cores >= BUSY_SHARE * self.cores
            if self.others_cores >= BUSY_OTHERS_CORES and crowded:
                return f"others use {self.others_cores:.1f} of {self.cores} cores"
            return ""
        if self.load is not None and self.load > self.cores:
            return f"load {self.load:.1f} on {self.cores} cores"
        return ""


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
