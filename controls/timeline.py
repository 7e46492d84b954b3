"""`play --prompts FILE`: a prompt timeline, prompt switches scheduled in world time (Scope's prompt
timeline). The file has one `TIME<TAB>PROMPT` line per switch: TIME in seconds (`12.5`) or
minutes:seconds (`1:05`) of world time since the window opened (frames shown / fps, so a pause or
a stall delays the switches with the picture); blank lines and lines starting with `#` are skipped.
The HUD shows the timeline as a thin bar with a mark per switch (controls/hud.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from world.errors import MAX_PROMPT_CHARS


class TimelineError(ValueError):
    """A prompt timeline file that cannot be used; the message names the file and the line."""


@dataclass
class PromptTimeline:
    entries: list[tuple[float, str]]  # (world seconds, prompt), in time order
    _next: int = field(default=0, repr=False)  # the first entry not switched to yet

    @property
    def span_s(self) -> float:
        """The bar's length: a little past the last switch, so its mark is not at the very end."""
        last = self.entries[-1][0] if self.entries else 0.0
        return max(last * 1.1, last + 5.0)

    def due(self, t: float) -> str | None:
        """The prompt to switch to at world time t (the latest one due), once; else None."""
        prompt = None
        while self._next < len(self.entries) and self.entries[self._next][0] <= t:
            prompt = self.entries[self._next][1]
            self._next += 1
        return prompt

    def position(self, t: float) -> tuple[float, tuple[float, ...]]:
        """(where world time t is on the bar, the switches' marks), all in [0, 1]."""
        span = self.span_s
        return min(t / span, 1.0), tuple(time / span for time, _ in self.entries)


def load_timeline(path: str | Path) -> PromptTimeline:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TimelineError(f"{path}: cannot read the prompt timeline: {exc}") from None
    entries: list[tuple[float, str]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}, line {number}"
        if "\t" not in line:
            raise TimelineError(f"{where}: expected TIME<TAB>PROMPT (e.g. '12.5\\tsnowy mountains at dusk'), "
                                f"got {line[:60]!r}")  # fmt: skip
        time_text, prompt = (part.strip() for part in line.split("\t", 1))
        seconds = _seconds(time_text, where)
        if not prompt or len(prompt) > MAX_PROMPT_CHARS:
            raise TimelineError(f"{where}: the prompt must have 1 to {MAX_PROMPT_CHARS} characters")
        if entries and seconds < entries[-1][0]:
            raise TimelineError(f"{where}: time {time_text} comes before the line above ({entries[-1][0]:g} s); "
                                "list the switches in time order")  # fmt: skip
        entries.append((seconds, " ".join(prompt.split())))
    if not entries:
        raise TimelineError(f"{path}: no prompt switches in the file (lines of TIME<TAB>PROMPT)")
    return PromptTimeline(entries)


def _seconds(text: str, where: str) -> float:
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 2 or any(p < 0 or p != p or p == float("inf") for p in parts):
        raise TimelineError(f"{where}: time {text!r} is not seconds (12.5) or minutes:seconds (1:05)")
    return parts[0] * 60 + parts[1] if len(parts) == 2 else parts[0]
