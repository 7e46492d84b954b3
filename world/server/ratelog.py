"""A log that a flood of bad messages cannot fill: at most `burst` lines per `period_s`.

The worker logs one line per rejected or failed message (never a traceback: a client can send
any number of them); past the burst, lines are counted and the count is logged once the period
ends, so the log still says how many there were.
"""

from __future__ import annotations

import logging
import threading
import time


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, burst: int = 20, period_s: float = 10.0):
        self.logger, self.burst, self.period_s = logger, burst, period_s
        self._lock = threading.Lock()  # the I/O thread and the compute loop both log
        self._window_start = time.monotonic()
        self._lines = 0
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._window_start >= self.period_s:
                if self._suppressed:
                    self.logger.warning("%d more such messages in the last %.0f s not logged", self._suppressed,
                                        now - self._window_start)  # fmt: skip
                self._window_start, self._lines, self._suppressed = now, 0, 0
            if self._lines >= self.burst:
                self._suppressed += 1
                return
            self._lines += 1
        self.logger.warning(message, *args)
