"""The heads-up display: stats panel, recording dot, banners, messages and the help overlay.

Everything is drawn from a `HudState` snapshot, so the HUD never reaches into the window or the
client; the window builds the snapshot once per drawn frame. Panels are translucent black with
rounded corners so that the world stays visible behind them.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic

import pygame

from controls.keymap import COMMANDS, DESCRIPTIONS, REPLAY_COMMANDS, Keymap
from world.actions import KEYS

PANEL_RGBA = (8, 10, 14, 170)
TEXT = (235, 238, 242)
DIM = (160, 168, 178)
GOOD = (110, 220, 130)
WARN = (255, 196, 80)
BAD = (255, 95, 90)
REC_RED = (235, 40, 40)
CONNECTION_BANNERS = {
    "reconnecting": "worker unreachable \u2014 reconnecting\u2026",
    "connecting": "connecting to the worker\u2026",
}
PAD = 8
RADIUS = 7
# The stats panel's numbers change with every frame; re-rendering its text each time costs the
# window about a millisecond a frame, CPU the model's threads share on a small machine. Numbers are
# re-rendered at most this often; a change of what the panel says (a label, colour, the prompt) at once.
STATS_REFRESH_S = 0.25


@dataclass
class HudState:
    gen_fps: float = 0.0  # frames per second arriving from the worker
    capacity_fps: float | None = None  # what the worker could sustain: chunk_frames / gen time
    shown_fps: float = 0.0
    latency_ms: float | None = None  # key-to-frame, median of recent key changes
    steps: int = 0
    nfe: int = 0
    gen_ms: float = 0.0
    prompt: str = ""
    backend: str = ""
    start: str = ""  # what the world started from (generated backend: engine, text, image); "" if unknown
    connection: str = "connecting"  # "connected" | "reconnecting" | "connecting"
    endpoint: str = ""
    recording: bool = False
    rec_frames: int = 0
    paused: bool = False
    mouse_captured: bool = False
    message: str | None = None  # shown for a few seconds (worker errors, "recording saved")
    message_is_error: bool = False
    message_is_warning: bool = False  # e.g. the start notice: "start: text (the engine does not know ...)"
    reads_as: str = ""  # what the world on screen reads as (chunk extra `theme`), e.g. "snow / dusk / fog"
    behind: bool = False  # the world is generated slower than it is shown: say so instead of a steady rate
    machine_busy: str = ""  # other processes crowd the cores: "others use 1.8 of 2 cores"; "" if not
    world_fps: float = 30.0  # the world's own frame rate (the target)
    replay: str = ""  # playing a recording back: "frame 12 / 300 · 1x"; "" when live
    recorded_keys: str = ""  # replay: the recorded action of the frame on screen
    timeline: tuple[float, tuple[float, ...]] | None = None  # (position, marks) in [0, 1]: replay, prompt timeline
    sound: str = ""  # "on", "muted", "no audio device"; "" when sound is off
    banner: str = ""  # a banner that overrides the others (connecting, going live)


@dataclass(frozen=True)
class Fonts:
    small: pygame.font.Font
    body: pygame.font.Font
    title: pygame.font.Font

    @classmethod
    def for_height(cls, height: int) -> Fonts:
        """Sizes in proportion to the window (15 px body text at 512 px)."""
        body = max(12, round(height / 34))
        return cls(_font(max(11, body - 2)), _font(body), _font(round(body * 1.6), bold=True))


def _font(size: int, bold: bool = False) -> pygame.font.Font:
    # DejaVu Sans is on most Linux desktops; pygame's bundled font is the fallback everywhere.
    path = pygame.font.match_font("dejavusans,dejavu sans,arial,helvetica", bold=bold)
    return pygame.font.Font(path, size) if path else pygame.font.Font(None, round(size * 1.3))


class Hud:
    def __init__(self, size: tuple[int, int], keymap: Keymap) -> None:
        self.keymap = keymap
        self.resize(size)

    def resize(self, size: tuple[int, int]) -> None:
        """Lay out for a window of `size` (resized, full screen): fonts follow its height."""
        self.size = size
        self.fonts = Fonts.for_height(size[1])
        self._stats: _Panel | None = None
        self._hint: tuple[str, pygame.Surface] | None = None

    def draw(self, surface: pygame.Surface, state: HudState, *, show_stats: bool = True, show_help: bool = False,
             show_hint: bool = True) -> None:  # fmt: skip
        """Stats panel, hint bar and help overlay when asked, then what must always show: the
        recording dot, the connection or pause banner and the current message (unless help is up)."""
        if show_stats and not show_help:
            self._draw_stats(surface, state)
        if show_hint and not show_help:
            self._draw_hint(surface, state)
        if show_help:
            self._draw_help(surface, replay=bool(state.replay))
        if state.timeline is not None and not show_help:
            self._draw_timeline(surface, *state.timeline)
        if state.recording:
            self._draw_rec(surface, state.rec_frames)
        if state.banner:
            self._draw_banner(surface, state.banner, WARN)
        elif state.connection != "connected":
            self._draw_banner(surface, CONNECTION_BANNERS.get(state.connection, state.connection), WARN)
        elif state.paused:
            self._draw_banner(surface, "PAUSED", TEXT)
        if state.message and not show_help:  # the overlay fills the window; messages wait under it
            color = BAD if state.message_is_error else WARN if state.message_is_warning else GOOD
            self._draw_message(surface, state.message, color)

    def _draw_stats(self, surface: pygame.Surface, s: HudState) -> None:
        rows = stats_rows(s)
        layout = (tuple((label, color) for label, _, color in rows), s.prompt)
        values = tuple(value for _, value, _ in rows)
        now = monotonic()
        cached = self._stats
        if cached is None or cached.layout != layout or (
                cached.values != values and now - cached.rendered_at >= STATS_REFRESH_S):
            self._stats = cached = _Panel(layout, values, now, self._render_stats(rows, s.prompt))
        surface.blit(cached.surface, (PAD, PAD))

    def _render_stats(self, rows: list[tuple[str, str, tuple[int, int, int]]], prompt: str) -> pygame.Surface:
        font = self.fonts.body
        label_w = max(font.size(label)[0] for label, _, _ in rows) + PAD
        width = min(self.size[0] - 2 * PAD, round(340 * max(1.0, self.size[1] / 512)))  # grows with the fonts
        line_h = font.get_linesize()
        prompt_lines = wrap_text(f"\u201c{prompt}\u201d", font, width - 2 * PAD, max_lines=2)
        height = PAD * 2 + line_h * (len(rows) + len(prompt_lines))
        panel = panel_surface((width, height))
        y = PAD
        for label, value, color in rows:
            panel.blit(font.render(label, True, DIM), (PAD, y))
            panel.blit(font.render(fit_text(value, font, width - label_w - 2 * PAD), True, color), (PAD + label_w, y))
            y += line_h
        for line in prompt_lines:
            panel.blit(font.render(line, True, TEXT), (PAD, y))
            y += line_h
        return panel

    def _draw_timeline(self, surface: pygame.Surface, position: float, marks: tuple[float, ...]) -> None:
        """A thin bar above the hint line: where the replay (or the prompt timeline) is, with a tick
        for every prompt switch."""
        width = self.size[0] - 4 * PAD
        y = self.size[1] - self.fonts.small.get_linesize() - 3 * PAD - 6
        bar = panel_surface((width, 6), alpha=200)
        pygame.draw.rect(bar, GOOD, (0, 1, round(width * min(max(position, 0.0), 1.0)), 4), border_radius=2)
        for mark in marks:
            pygame.draw.rect(bar, WARN, (min(width - 2, round(width * mark)), 0, 2, 6))
        surface.blit(bar, (2 * PAD, y))

    def _draw_hint(self, surface: pygame.Surface, s: HudState) -> None:
        mouse = "Esc releases mouse" if s.mouse_captured else "click: mouse look"
        prompt_key = self.keymap.label("open_prompt").split(" / ")[0]
        hint = f"{self.keymap.label('help')} help \u00b7 {prompt_key} prompt \u00b7 {mouse}"
        if self._hint is None or self._hint[0] != hint:
            text = self.fonts.small.render(hint, True, DIM)
            panel = panel_surface((text.get_width() + 2 * PAD, text.get_height() + PAD))
            panel.blit(text, (PAD, PAD // 2))
            self._hint = (hint, panel)
        panel = self._hint[1]
        surface.blit(panel, (PAD, self.size[1] - panel.get_height() - PAD))

    def _draw_rec(self, surface: pygame.Surface, frames: int) -> None:
        text = self.fonts.body.render(f"REC {frames}", True, TEXT)
        dot = text.get_height() // 2
        panel = panel_surface((text.get_width() + dot * 2 + 3 * PAD, text.get_height() + PAD))
        pygame.draw.circle(panel, REC_RED, (PAD + dot, panel.get_height() // 2), dot)
        panel.blit(text, (2 * PAD + 2 * dot, PAD // 2))
        surface.blit(panel, (self.size[0] - panel.get_width() - PAD, PAD))

    def _draw_banner(self, surface: pygame.Surface, text: str, color: tuple[int, int, int]) -> None:
        rendered = self.fonts.title.render(fit_text(text, self.fonts.title, self.size[0] - 4 * PAD), True, color)
        panel = panel_surface((rendered.get_width() + 4 * PAD, rendered.get_height() + 2 * PAD))
        panel.blit(rendered, (2 * PAD, PAD))
        surface.blit(panel, panel.get_rect(center=(self.size[0] // 2, self.size[1] // 2)))

    def _draw_message(self, surface: pygame.Surface, message: str, color: tuple[int, int, int]) -> None:
        font = self.fonts.body
        lines = wrap_text(message, font, self.size[0] - 6 * PAD, max_lines=3)
        line_h = font.get_linesize()
        panel = panel_surface((self.size[0] - 4 * PAD, line_h * len(lines) + 2 * PAD))
        pygame.draw.rect(panel, color, (0, 0, 4, panel.get_height()), border_radius=2)
        for k, line in enumerate(lines):
            panel.blit(font.render(line, True, TEXT), (2 * PAD, PAD + k * line_h))
        # Just above the hint bar: out of the way of the horizon, where the eye rests.
        bottom = self.size[1] - self.fonts.small.get_linesize() - 3 * PAD
        surface.blit(panel, (2 * PAD, bottom - panel.get_height()))

    def _draw_help(self, surface: pygame.Surface, replay: bool = False) -> None:
        """The F1 overlay: every binding from the keymap (movement, then commands), plus the fixed
        ones; playing a recording back, the replay keys instead of the movement keys."""
        commands = [name for name in COMMANDS if name not in REPLAY_COMMANDS]
        first = [(self.keymap.label(name), DESCRIPTIONS[name]) for name in (REPLAY_COMMANDS if replay else KEYS)]
        fixed = [("0 \u2026 9", "replay: jump to 0% \u2026 90%")] if replay else [
            ("Mouse click", "capture the mouse for mouse look")]  # fmt: skip
        groups = [first, [(self.keymap.label(name), DESCRIPTIONS[name]) for name in commands],
                  [*fixed, ("Esc", "release the mouse / close")]]  # fmt: skip
        font, title, small = self.fonts.body, self.fonts.title, self.fonts.small
        line_h = font.get_linesize()
        width = self.size[0] - 4 * PAD
        rows = sum(len(g) for g in groups)
        height = title.get_linesize() + line_h * rows + PAD * (len(groups) + 3) + small.get_linesize()
        panel = panel_surface((width, min(height, self.size[1] - 2 * PAD)), alpha=235)
        panel.blit(title.render("Controls", True, TEXT), (2 * PAD, PAD))
        key_w = max(font.size(keys)[0] for g in groups for keys, _ in g) + 2 * PAD
        y = title.get_linesize() + PAD
        for group in groups:
            y += PAD  # a little air between movement, commands and the fixed keys
            for keys, what in group:
                panel.blit(font.render(keys, True, WARN), (2 * PAD, y))
                panel.blit(font.render(what, True, TEXT), (2 * PAD + key_w, y))
                y += line_h
        note = fit_text("bindings: assets/keymap.json \u00b7 override with --keymap FILE", small, width - 4 * PAD)
        panel.blit(small.render(note, True, DIM), (2 * PAD, y + PAD))
        surface.blit(panel, panel.get_rect(center=(self.size[0] // 2, self.size[1] // 2)))


@dataclass
class _Panel:
    layout: tuple  # what the panel says apart from its numbers: labels, colours, the prompt
    values: tuple[str, ...]
    rendered_at: float
    surface: pygame.Surface


def stats_rows(s: HudState) -> list[tuple[str, str, tuple[int, int, int]]]:
    """The stats panel's (label, value, colour) rows, the prompt aside."""
    latency = f"{s.latency_ms:.0f} ms" if s.latency_ms is not None else "\u2013"
    conn_color = GOOD if s.connection == "connected" else WARN
    if s.replay:
        rows = [("replay", s.replay, TEXT), ("keys", s.recorded_keys, WARN), ("world", s.backend, TEXT)]
    else:
        rows = [
            *speed_rows(s),
            ("key\u2192frame", latency, TEXT),
            ("chunk", f"{s.steps} step{'' if s.steps == 1 else 's'} \u00b7 {s.nfe} nfe \u00b7 {s.gen_ms:.1f} ms", TEXT),
            ("world", s.backend, TEXT),
            *([("start", s.start, TEXT)] if s.start else []),
            ("link", f"{s.connection} {s.endpoint.split('://')[-1]}", conn_color),
        ]
    rows += [("machine", f"busy: {s.machine_busy}", WARN)] if s.machine_busy else []
    rows += [("reads as", s.reads_as, GOOD)] if s.reads_as else []
    rows += [("sound", s.sound, DIM if s.sound == "on" else WARN)] if s.sound else []
    return rows


def speed_rows(s: HudState) -> list[tuple[str, str, tuple[int, int, int]]]:
    """How fast the world is made and shown. When it is made slower than its own frame rate the
    first row says so plainly ("world running at 12 fps, behind"), not a steady "shown" rate."""
    if s.behind:
        return [("speed", f"world running at {fps_text(s.gen_fps)} fps, behind", WARN)]
    capacity = f" \u00b7 max {s.capacity_fps:.0f}" if s.capacity_fps else ""
    return [("generated", f"{s.gen_fps:.1f} fps{capacity}", TEXT), ("shown", f"{s.shown_fps:.1f} fps", TEXT)]


def fps_text(fps: float) -> str:
    """A rate as the HUD says it: "0.5" for a slow world (whole numbers would say 0), "24" for a fast one."""
    return f"{fps:.1f}" if fps < 10 else f"{fps:.0f}"


def panel_surface(size: tuple[int, int], alpha: int = PANEL_RGBA[3]) -> pygame.Surface:
    panel = pygame.Surface(size, pygame.SRCALPHA)
    pygame.draw.rect(panel, (*PANEL_RGBA[:3], alpha), panel.get_rect(), border_radius=RADIUS)
    return panel


def fit_text(text: str, font: pygame.font.Font, width: int) -> str:
    """Cut `text` with an ellipsis so it renders within `width` pixels."""
    if font.size(text)[0] <= width:
        return text
    while text and font.size(text + "\u2026")[0] > width:
        text = text[:-1]
    return text + "\u2026"


def wrap_text(text: str, font: pygame.font.Font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap; the last allowed line is ellipsised if the text does not fit."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if font.size(candidate)[0] <= width or not current:
            current = candidate
        else:
            lines.append(current)
            current = word
    lines.append(current)
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [fit_text(" ".join(lines[max_lines - 1 :]), font, width)]
    return [fit_text(line, font, width) for line in lines]
