"""Work the worker runs off its compute loop: building a session, its first chunk, a reset.

Anything whose cost a client chooses (loading a model, a 1024x1024 engine's terrain, a chunk of
unknown size) must not run on the compute loop, which serves every session. The worker hands it
to an executor (a small thread pool) as a `Job` and looks at finished jobs once per loop round;
the session it belongs to is "opening" or "busy" meanwhile. In-process tests use
`InlineExecutor`, which runs each job at once, so request handling stays deterministic there.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any


@dataclass
class Job:
    """One piece of work in flight: what it is for, and the request that asked for it."""

    kind: str  # "open" | "reset" | "produce"
    future: Future
    identity: bytes
    request: Any = None  # the Inbound that started it (open, reset)
    session: Any = None  # the session it works on (reset, produce)
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
