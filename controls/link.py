"""The window's line to a worker: `WorldLink`, the client plus reconnection (controls/window.py,
controls/play.py). A recording played back plugs in where it would (controls/playback.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import zmq

from world.server.client import WorldClient, WorldConnectionError, WorldRequestError


class WorldLink:
    """The client plus reconnection.

    While the worker is unreachable (down, restarted, session closed), a background thread calls
    `client.reconnect()` every `retry_s`; that call blocks for up to the client's timeout, which
    is why it is not made on the loop's thread. Meanwhile the loop sees state "reconnecting", gets
    no events, and its sends are dropped. The thread is the only user of the client until it ends.
    """

    def __init__(self, client: WorldClient, revive: Callable[[], None] | None = None, retry_s: float = 1.0) -> None:
        self.client = client
        self.revive = revive  # e.g. restart a local worker that died; called before each attempt
        self.retry_s = retry_s
        self.state = "connected"
        self.generation = 0  # bumped on each successful reconnect: a new world began
        self.info: dict = dict(client.info or {})
        self.last_error = ""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def poll(self, timeout_ms: int) -> list:
        if not self.connected:
            time.sleep(timeout_ms / 1000.0)
            return []
        try:
            events = self.client.poll(timeout_ms)
        except zmq.ZMQError as exc:
            self._lost(str(exc))
            return []
        if not self.client.connected:
            self._lost("the worker stopped answering")
        return events

    def call(self, method: str, *args: object) -> None:
        """client.<method>(*args) if connected; a failure starts reconnecting instead of raising."""
        if not self.connected:
            return
        try:
            getattr(self.client, method)(*args)
        except (zmq.ZMQError, WorldConnectionError, RuntimeError) as exc:
            self._lost(str(exc))

    def _lost(self, reason: str) -> None:
        self.state = "reconnecting"
        self.last_error = reason
        self._thread = threading.Thread(target=self._reconnect_until_done, name="reconnect", daemon=True)
        self._thread.start()

    def _reconnect_until_done(self) -> None:
        while not self._stop.is_set():
            try:
                if self.revive is not None:
                    self.revive()
                self.info = self.client.reconnect()
            except (WorldConnectionError, WorldRequestError, zmq.ZMQError, OSError, RuntimeError) as exc:
                self.last_error = str(exc)
                self._stop.wait(self.retry_s)
                continue
            self.generation += 1
            self.state = "connected"  # last: the loop may use the client again from here on
            return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=0.2)
        if self._thread is None or not self._thread.is_alive():
            try:
                self.client.close()
            except (zmq.ZMQError, WorldConnectionError):
                pass  # closing a session on a dead worker: nothing left to tell it
