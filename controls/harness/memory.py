"""A worker process's memory over a run, for the harnesses: `MemorySampler` reads its VmRSS and
VmHWM from /proc/<pid>/status on its own thread; `memory_trend` says whether the samples are flat
after a warm-up (see FLAT_DEFINITION) and how fast they grow. Linux only (/proc).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from model.evaluation.bench import read_status

WARMUP_FRACTION = 0.10
WARMUP_MAX_S = 30.0
FLAT_REL = 0.05
FLAT_ABS_MIB = 20.0
FLAT_DEFINITION = (
    f"flat: |RSS at end - RSS after warm-up| <= max({FLAT_REL:.0%} of RSS after warm-up, {FLAT_ABS_MIB:g} MiB); "
    f"warm-up = first {WARMUP_FRACTION:.0%} of the stream or first {WARMUP_MAX_S:g} s, whichever is shorter"
)


def rss_bytes_of(pid: int) -> int | None:
    """Resident set size of process `pid` (Linux /proc), None where unavailable."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Sample:
    t_s: float  # seconds since the worker was ready
    rss_mib: float  # VmRSS
    hwm_mib: float  # VmHWM: peak RSS since the process started
    chunks: int  # chunks received by then


class MemorySampler(threading.Thread):
    """Samples a process's memory every `every_s` on its own thread, so the cadence does not
    depend on how long the client waits for a chunk (a teacher chunk can take seconds)."""

    def __init__(self, pid: int, every_s: float, chunks: Callable[[], int] = lambda: 0) -> None:
        super().__init__(name="worker-memory-sampler", daemon=True)
        self.pid = pid
        self.every_s = every_s
        self.chunks = chunks  # read racily from another thread: an int, which is fine
        self.t0 = time.monotonic()
        self.samples: list[Sample] = []
        self.gone = False  # the process exited while we sampled
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def sample(self) -> Sample | None:
        status = read_status(self.pid)
        if status is None:
            self.gone = True
            return None
        s = Sample(round(self.now(), 3), round(status[0], 2), round(status[1], 2), self.chunks())
        with self._lock:
            self.samples.append(s)
        return s

    def latest(self) -> Sample | None:
        with self._lock:
            return self.samples[-1] if self.samples else None

    def run(self) -> None:
        k = 0
        while not self._stop_event.is_set() and not self.gone:
            self.sample()
            k += 1
            # Scheduled on the start time, not on the previous sample: no drift over an hour.
            self._stop_event.wait(max(0.0, self.t0 + k * self.every_s - time.monotonic()))

    def stop(self) -> None:
        """Stop sampling after one last sample (skipped if already stopped)."""
        if self._stop_event.is_set():
            return
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5.0)
        if not self.gone:
            self.sample()


@dataclass(frozen=True)
class Trend:
    warmup_s: float
    rss_start_mib: float  # first sample of the stream
    rss_after_warmup_mib: float  # first sample at or after the end of the warm-up
    rss_end_mib: float  # last sample of the stream
    growth_mib: float  # end - after warm-up
    slope_mib_per_min: float | None  # least squares over post-warm-up samples; None with < 2
    post_warmup_samples: int
    flat_tolerance_mib: float
    flat: bool


def warmup_seconds(duration_s: float) -> float:
    return min(WARMUP_FRACTION * duration_s, WARMUP_MAX_S)


def is_flat(rss_after_warmup_mib: float, rss_end_mib: float) -> tuple[bool, float]:
    """(flat?, tolerance in MiB); see FLAT_DEFINITION."""
    tolerance = max(FLAT_REL * rss_after_warmup_mib, FLAT_ABS_MIB)
    return abs(rss_end_mib - rss_after_warmup_mib) <= tolerance, tolerance


def slope_per_minute(times_s: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope of values against time, per minute; None without two distinct times."""
    t = np.asarray(times_s, dtype=float) / 60.0
    y = np.asarray(values, dtype=float)
    if len(t) < 2 or np.ptp(t) == 0:
        return None
    return float(np.polyfit(t, y, 1)[0])


def memory_trend(
    times_s: Sequence[float], rss_mib: Sequence[float], start_s: float | None = None, end_s: float | None = None
) -> Trend:
    """Warm-up, after-warm-up vs end RSS, slope and flatness of the samples in [start_s, end_s]
    (default: all of them). Raises ValueError when no sample falls in the window."""
    t = np.asarray(times_s, dtype=float)
    y = np.asarray(rss_mib, dtype=float)
    if not len(t):
        raise ValueError("no memory samples")
    start = float(t.min()) if start_s is None else start_s
    end = float(t.max()) if end_s is None else end_s
    inside = (t >= start) & (t <= end)
    if not inside.any():
        raise ValueError(f"no memory sample between {start:.2f} s and {end:.2f} s")
    t, y = t[inside], y[inside]
    warmup = warmup_seconds(end - start)
    post = t >= start + warmup
    if not post.any():  # a run shorter than one sample period after warm-up: its last sample
        post[-1] = True
    after, last = float(y[post][0]), float(y[-1])
    flat, tolerance = is_flat(after, last)
    slope = slope_per_minute(t[post], y[post])
    return Trend(
        warmup_s=round(warmup, 3), rss_start_mib=float(y[0]), rss_after_warmup_mib=after, rss_end_mib=last,
        growth_mib=round(last - after, 2), slope_mib_per_min=None if slope is None else round(slope, 4),
        post_warmup_samples=int(post.sum()), flat_tolerance_mib=round(tolerance, 2), flat=flat,
    )  # fmt: skip
