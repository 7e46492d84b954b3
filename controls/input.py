"""pygame events -> the per-frame `Action` and window commands.

Movement keys are *held state*: the action for a displayed frame is whatever is held when the
frame is shown. Mouse motion is *per-frame*: the relative motion gathered since the previous frame
becomes mouse_dx/dy, normalised so that `pixels_per_step` of travel is one full step (1.0) and
clipped to [-1, 1], because `Action` rejects anything outside that range.
"""

from __future__ import annotations

from dataclasses import dataclass

import pygame

from controls.keymap import COMMANDS, Keymap
from world.actions import KEYS, MOUSE_LIMIT, Action


@dataclass(frozen=True)
class MouseSettings:
    sensitivity: float = 1.0
    # Mouse travel within one frame that makes a full (1.0) turn or look step, at sensitivity 1.
    pixels_per_step: float = 40.0


class InputMapper:
    """Tracks held keys and mouse motion; turns them into one `Action` per displayed frame."""

    def __init__(self, keymap: Keymap, mouse: MouseSettings | None = None) -> None:
        self._bindings = keymap.key_codes()
        self._mouse = mouse or MouseSettings()
        self._held: set[int] = set()  # key codes, so two keys for one binding release independently
        self._motion = [0.0, 0.0]  # pixels since the last take_action
        self.captured = False

    def handle(self, event: pygame.event.Event) -> str | None:
        """Feed one event; returns a command name (see keymap.COMMANDS) when one was pressed."""
        if event.type == pygame.KEYDOWN:
            binding = self._bindings.get(event.key)
            if binding in KEYS:
                self._held.add(event.key)
            elif binding in COMMANDS:
                return binding
        elif event.type == pygame.KEYUP:
            self._held.discard(event.key)
        elif event.type == pygame.MOUSEMOTION and self.captured:
            self._motion[0] += event.rel[0]
            self._motion[1] += event.rel[1]
        elif event.type == pygame.WINDOWFOCUSLOST:
            # Key-up events never arrive for keys released while another window has focus.
            self.release_all()
        return None

    def held_keys(self) -> tuple[str, ...]:
        names = {self._bindings[code] for code in self._held}
        return tuple(k for k in KEYS if k in names)

    def take_action(self) -> Action:
        """The action for the next frame; consumes the mouse motion gathered so far."""
        scale = self._mouse.sensitivity / self._mouse.pixels_per_step
        dx = _clip(self._motion[0] * scale)
        dy = _clip(-self._motion[1] * scale)  # screen y grows downwards; positive dy looks up
        self._motion = [0.0, 0.0]
        return Action(self.held_keys(), dx, dy)

    def release_all(self) -> None:
        """Forget held keys and pending motion (focus lost, prompt box opened, pause)."""
        self._held.clear()
        self._motion = [0.0, 0.0]

    def set_captured(self, captured: bool) -> None:
        """Grab + hide the cursor: SDL then reports unbounded relative motion (mouse look)."""
        self.captured = captured
        pygame.event.set_grab(captured)
        pygame.mouse.set_visible(not captured)
        pygame.mouse.get_rel()  # drop the motion accumulated before the switch
        self._motion = [0.0, 0.0]


def _clip(value: float) -> float:
    return max(-MOUSE_LIMIT, min(MOUSE_LIMIT, value))
