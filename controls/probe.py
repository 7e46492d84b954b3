"""Is a worker there? `probe` asks for its status once a second (no pygame: the headless client
uses it too), so a dead address is said in seconds instead of after a long open timeout."""

from __future__ import annotations

from collections.abc import Callable

from world.launcher import command
from world.server.client import WorldClient, WorldConnectionError

ATTEMPTS = 10  # probes, one second each, before giving up on an address


def probe(client: WorldClient, attempts: int | None = None,
          on_attempt: Callable[[int], bool] | None = None) -> str | None:  # fmt: skip
    """Ask the worker for its status once a second until it answers: None when it did, else the
    sentence that says it never did. `on_attempt(k)` is told each attempt; False stops probing."""
    attempts = ATTEMPTS if attempts is None else attempts
    for k in range(1, attempts + 1):
        if on_attempt is not None and not on_attempt(k):
            return None
        try:
            client.status(timeout_s=1.0)
            return None
        except WorldConnectionError:
            continue
    return (f"no worker answers at {client.address} ({attempts} attempts in {attempts} s): check the address, or "
            f"start one there with `{command('serve --bind ' + client.address)}`")
