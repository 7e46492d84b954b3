"""Work the worker runs off its compute loop: building a session, its first chunk, a reset, a
large session's chunk.

Anything whose cost a client chooses (loading a model, a 1024x1024 engine's terrain, a chunk of
unknown size) must not run on the compute loop, which serves every session. The worker hands it
to an executor (`ThreadPerJobExecutor`) as a `Job` and looks at finished jobs once per loop round;
the session it belongs to is "opening" or "busy" meanwhile. In-process tests use
`InlineExecutor`, which runs each job at once, so request handling stays deterministic there.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any


@dataclass
class Job:
    """One piece of work in flight: what it is for, and the request that asked for it."""

    kind: str  # "open" | "reset" | "produce" (a session's first chunk) | "large" (a large session's chunk)
    future: Future
    identity: bytes
    request: Any = None  # the Inbound that started it (open, reset)
    session: Any = None  # the session it works on (reset, produce, large)
    holder: Any = None  # what an opening session counts against (world/server/admission.py)


class InlineExecutor:
    """`concurrent.futures`-like executor that runs the job on the caller's thread at once."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to whoever reads the result, like a real executor
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


class ThreadPerJobExecutor:
    """`concurrent.futures`-like executor: each job on a thread that ends once no job is waiting.

    Not a pool, on purpose. A thread that has run torch keeps its own OpenMP team for as long as it
    lives, and with a job thread's team alive beside the compute loop's, a model on 2 threads made
    its chunks at half speed (13 against 28 FPS on a 2-core machine; docs/reports/window-speed.md).
    A thread that ends takes its team with it. At most `max_workers` jobs run at once (one per
    admitted session, so one client's slow jobs never hold up another's); the rest wait in order.
    Threads are daemons: a job still running when the worker stops does not delay it."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "worker-job"):
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self._max, self._prefix = max_workers, thread_name_prefix
        self._lock = threading.Lock()
        self._pending: deque[tuple[Future, Callable[..., Any], tuple]] = deque()
        self._threads: set[threading.Thread] = set()
        self._names = itertools.count()
        self._shut = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot submit a job after shutdown")
            self._pending.append((future, fn, args))
            if len(self._threads) < self._max:
                thread = threading.Thread(target=self._work, name=f"{self._prefix}_{next(self._names)}", daemon=True)
                self._threads.add(thread)
                thread.start()
        return future

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._threads.discard(threading.current_thread())
                    return
                future, fn, args = self._pending.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to whoever reads the result
                future.set_exception(exc)

    @property
    def threads(self) -> int:
        """Job threads alive now."""
        with self._lock:
            return len(self._threads)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shut = True
            if cancel_futures:
                for future, _, _ in self._pending:
                    future.cancel()
                self._pending.clear()
            threads = list(self._threads)
        if wait:
            for thread in threads:
                thread.join()
