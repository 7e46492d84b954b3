"""SIGTERM handled like Ctrl-C by the command-line programs (play, worker_memory, every training run),
so their `finally` blocks run: recordings are closed, local workers stopped, partial reports and checkpoints
written."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM raises KeyboardInterrupt; the previous handler comes back after it.
    Off the main thread (signal handlers can only be set there) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
