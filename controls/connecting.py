"""The window while a session opens: "connecting to ADDRESS, attempt k", never a black window.

Opening can take long (a worker started elsewhere may be down; a generated world loads its model
first), so it runs on a background thread while this screen draws and keeps the window alive
(Q, Esc or closing it cancels). First the worker is probed once a second (`status` with a 1 s
timeout) for up to `attempts` seconds; once it answers, the world is opened with the client's own
timeout. A worker that never answers, or refuses the world, is said on this screen for a few seconds
(and by the caller on stderr).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pygame

from controls.hud import BAD, DIM, PAD, TEXT, Fonts, wrap_text
from controls.probe import ATTEMPTS, probe
from world.server.client import WorldClient, WorldConnectionError, WorldRequestError

SHOW_ERROR_S = 6.0  # how long a failure stays on screen (any key closes it sooner)
BACKGROUND = (12, 14, 18)


class ConnectScreen:
    def __init__(self, endpoint: str, size: tuple[int, int], attempts: int = ATTEMPTS) -> None:
        self.endpoint, self.attempts = endpoint, attempts
        self.screen = pygame.display.set_mode(size, pygame.RESIZABLE)
        pygame.display.set_caption("generated world \u2014 connecting")
        self.attempt = 0
        self.stage = "connecting"  # then "opening"
        self.error = ""
        self.refused = False  # the worker answered and refused the world (bad usage: exit 2)
        self.cancelled = False
        self._result: dict | None = None
        self._done = threading.Event()
        self.frames_drawn = 0

    def run(self, client: WorldClient, open_world: Callable[[], dict]) -> dict | None:
        """The session's `opened` info, or None (failed: `error` says why; cancelled: no error)."""
        thread = threading.Thread(target=self._work, args=(client, open_world), name="connect", daemon=True)
        thread.start()
        while not self._done.is_set() and not self.cancelled:
            self._pump()
            self.draw()
            self._done.wait(0.05)
        if self.error:
            self._show_error()
        return None if self.cancelled or self.error else self._result

    def _work(self, client: WorldClient, open_world: Callable[[], dict]) -> None:
        try:
            if self._probe(client):
                self.stage = "opening"
                self._result = open_world()
        except WorldRequestError as exc:
            self.error, self.refused = f"the worker refused to open the world: {exc.message}", True
        except WorldConnectionError as exc:
            self.error = f"{exc}; the worker at {self.endpoint} answered, then went silent"
        finally:
            self._done.set()

    def _probe(self, client: WorldClient) -> bool:
        def attempt(k: int) -> bool:
            self.attempt = k
            return not self.cancelled

        self.error = probe(client, self.attempts, attempt) or ""
        return not self.error and not self.cancelled

    def _pump(self) -> bool:
        """Handle window events; True when a key was pressed."""
        pressed = False
        for event in pygame.event.get():
            quit_key = event.type == pygame.KEYDOWN and event.key in (pygame.K_q, pygame.K_ESCAPE)
            if event.type == pygame.QUIT or quit_key:
                self.cancelled = True
            pressed |= event.type == pygame.KEYDOWN
        return pressed

    def lines(self) -> tuple[str, str]:
        """(title, detail) as the screen shows them."""
        if self.error:
            return "could not open the world", self.error
        if self.stage == "opening":
            return f"opening the world at {self.endpoint}", "the worker answered; a generated world loads first"
        return f"connecting to {self.endpoint}", f"attempt {max(self.attempt, 1)} of {self.attempts} \u00b7 Q cancels"

    def draw(self) -> None:
        self.screen.fill(BACKGROUND)
        width, height = self.screen.get_size()
        fonts = Fonts.for_height(height)
        title, detail = self.lines()
        color = BAD if self.error else TEXT
        rendered = [fonts.title.render(line, True, color) for line in wrap_text(title, fonts.title, width - 4 * PAD, 2)]
        rendered += [fonts.body.render(line, True, DIM) for line in wrap_text(detail, fonts.body, width - 4 * PAD, 6)]
        y = (height - sum(r.get_height() + PAD // 2 for r in rendered)) // 2
        for r in rendered:
            self.screen.blit(r, r.get_rect(midtop=(width // 2, y)))
            y += r.get_height() + PAD // 2
        pygame.display.flip()
        self.frames_drawn += 1

    def _show_error(self) -> None:
        until = time.monotonic() + SHOW_ERROR_S
        while time.monotonic() < until and not self._pump() and not self.cancelled:
            self.draw()
            time.sleep(0.05)
