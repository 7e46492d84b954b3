"""The prompt box: a one-line text field for switching the world's prompt mid-stream.

Text arrives as TEXTINPUT events (so keyboard layouts and IME work); editing keys arrive as
KEYDOWN. Enter applies, Esc cancels, Up/Down walk through the presets in assets/prompts.txt and
the prompts applied earlier in this session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pygame

from controls.hud import DIM, PAD, TEXT, WARN, Fonts, fit_text, panel_surface
from world.errors import MAX_PROMPT_CHARS

FIELD = (24, 27, 33, 255)  # the text field's background
PRESETS_PATH = Path(__file__).resolve().parent.parent / "assets" / "prompts.txt"


def load_presets(path: Path = PRESETS_PATH) -> list[str]:
    """Non-empty, non-comment lines of the presets file; none if it is missing."""
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@dataclass
class PromptBox:
    presets: list[str] = field(default_factory=list)
    active: bool = False
    text: str = ""
    cursor: int = 0
    _history: list[str] = field(default_factory=list)
    _browse: int = -1  # index into history + presets while walking with Up/Down
    _swallow: str = ""  # the character of the key that opened the box (see open())
    refused: str = ""  # why the last Enter or keystroke did nothing: shown in the box until the next key

    def open(self, initial: str = "", opened_by: str = "") -> None:
        """Show the box. `opened_by` is the text of the key that opened it: SDL sends that key
        as a TEXTINPUT right after its KEYDOWN, and it must not land in the box."""
        self.active, self.refused = True, ""
        self.text = initial
        self.cursor = len(initial)
        self._browse = -1
        self._swallow = opened_by
        pygame.key.start_text_input()

    def close(self) -> None:
        self.active = False
        self._swallow = ""

    def end_of_batch(self) -> None:
        """Called after each batch of events: the opening key's TEXTINPUT arrives in its batch."""
        self._swallow = ""

    def handle(self, event: pygame.event.Event) -> str | None:
        """Feed one event while active. Returns the prompt to apply on Enter, else None."""
        if event.type == pygame.TEXTINPUT:
            self._insert(event.text)
        elif event.type == pygame.KEYDOWN:
            return self._key(event.key)
        return None

    def _insert(self, text: str) -> None:
        self.refused = ""
        if self._swallow and text == self._swallow:
            self._swallow = ""
            return
        self._swallow = ""
        room = MAX_PROMPT_CHARS - len(self.text)
        if len(text) > room:
            self.refused = f"a prompt holds at most {MAX_PROMPT_CHARS} characters"
        text = text[: max(room, 0)]
        self.text = self.text[: self.cursor] + text + self.text[self.cursor :]
        self.cursor += len(text)

    def _key(self, key: int) -> str | None:
        self._swallow = ""  # any other key in between means the TEXTINPUT was not the opener's
        self.refused = ""
        if key in (pygame.K_RETURN, pygame.K_KP_ENTER):
            return self._apply()
        if key == pygame.K_ESCAPE:
            self.close()
        elif key == pygame.K_BACKSPACE and self.cursor > 0:
            self.text = self.text[: self.cursor - 1] + self.text[self.cursor :]
            self.cursor -= 1
        elif key == pygame.K_DELETE:
            self.text = self.text[: self.cursor] + self.text[self.cursor + 1 :]
        elif key in (pygame.K_LEFT, pygame.K_RIGHT):
            self.cursor = max(0, min(len(self.text), self.cursor + (1 if key == pygame.K_RIGHT else -1)))
        elif key in (pygame.K_HOME, pygame.K_END):
            self.cursor = 0 if key == pygame.K_HOME else len(self.text)
        elif key in (pygame.K_UP, pygame.K_DOWN):
            self._walk(1 if key == pygame.K_UP else -1)
        return None

    def _apply(self) -> str | None:
        prompt = " ".join(self.text.split())
        if not prompt:  # the box stays open: say what it wants
            self.refused = "type a prompt first (e.g. \u201csnowy mountains at dusk\u201d); Esc cancels"
            return None
        self.close()
        if prompt in self._history:
            self._history.remove(prompt)
        self._history.insert(0, prompt)
        return prompt

    def _walk(self, step: int) -> None:
        choices = self._history + [p for p in self.presets if p not in self._history]
        if not choices:
            return
        self._browse = (self._browse + step) % len(choices)
        self.text = choices[self._browse]
        self.cursor = len(self.text)

    def draw(self, surface: pygame.Surface, fonts: Fonts) -> None:
        width, height = surface.get_size()
        font = fonts.body
        line_h = font.get_linesize()
        panel = panel_surface((width - 4 * PAD, 3 * line_h + 3 * PAD), alpha=255)
        panel.blit(fonts.small.render("New prompt", True, WARN), (PAD * 2, PAD))
        field_w = panel.get_width() - 4 * PAD
        field = pygame.Rect(PAD * 2, PAD + line_h, field_w, line_h + PAD)
        # An opaque field: white text must stay legible over a bright sky.
        pygame.draw.rect(panel, FIELD, field, border_radius=4)
        pygame.draw.rect(panel, DIM, field, width=1, border_radius=4)
        shown, caret_x = self._visible_text(font, field_w - 2 * PAD)
        panel.blit(font.render(shown, True, TEXT), (field.x + PAD, field.y + PAD // 2))
        x = field.x + PAD + caret_x  # a steady caret: a blinking one is easy to lose mid-game
        pygame.draw.line(panel, TEXT, (x, field.y + 3), (x, field.bottom - 4), 2)
        hint = self.refused or "Enter apply \u00b7 Esc cancel \u00b7 Up/Down presets"
        hint_surface = fonts.small.render(fit_text(hint, fonts.small, field_w), True, WARN if self.refused else DIM)
        panel.blit(hint_surface, (PAD * 2, field.bottom + PAD // 2))
        surface.blit(panel, (2 * PAD, height - panel.get_height() - 2 * PAD))

    def _visible_text(self, font: pygame.font.Font, width: int) -> tuple[str, int]:
        """The part of the text around the cursor that fits, and the caret's x within it. Binary
        searches: measuring a 500-character prompt one character at a time took 20 ms a draw."""
        text, cursor = self.text, self.cursor
        lo, hi = 0, cursor  # the first `start` whose text[start:cursor] fits
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if font.size(text[mid:cursor])[0] <= width else (mid + 1, hi)
        start = lo
        lo, hi = cursor, len(text)  # the last `end` whose text[start:end] fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if font.size(text[start:mid])[0] <= width else (lo, mid - 1)
        return text[start:lo], font.size(text[start:cursor])[0]
