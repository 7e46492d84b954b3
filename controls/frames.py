"""What the window shows around the world's picture: its title, the HUD's "reads as" line, where
the picture sits, screenshots, and the sound params a chunk carries when recorded or replayed."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pygame

from world.procedural.soundscape import SoundParams
from world.server.client import ChunkEvent


@dataclass
class TimedMessage:
    """A line the HUD shows until `until` (monotonic seconds)."""

    text: str
    is_error: bool
    until: float
    is_warning: bool = False


def with_audio(chunk: ChunkEvent, audio: list[SoundParams]) -> ChunkEvent:
    """The chunk as recorded: each frame's record also holds its sound params ("audio", docs/dataset.md)."""
    records = [{**record, "audio": params.to_json()} for record, params in zip(chunk.records, audio)]
    return dataclasses.replace(chunk, records=records)


def recorded_audio(records: list[dict]) -> list[SoundParams]:
    """A replayed chunk's recorded sound params, or [] when it has none."""
    if not all(isinstance(r.get("audio"), dict) for r in records):
        return []
    return [SoundParams.from_json(r["audio"]) for r in records]


def window_title(info: dict, replay: bool) -> str:
    """The engine is not a generated world; a replay says so."""
    world = "generated world" if info.get("backend") == "generated" else f"{info.get('backend', 'world')} world"
    return f"{world} \u2014 replay of {info.get('description', '').removeprefix('replay of ')}" if replay else world


def reads_as(theme: dict) -> str:
    """The HUD's "reads as" line: "snow / dusk / fog" from a chunk's `theme`."""
    weather = theme.get("weather", "")
    return " / ".join(str(theme.get(k, "?")) for k in ("biome", "time_of_day")) + (f" / {weather}" if weather else "")


def picture_rect(world: tuple[int, int], window: tuple[int, int]) -> pygame.Rect:
    """The largest whole-number scale of the world's picture that fits the window, centred (letterboxed)."""
    scale = max(1, min(window[0] // world[0], window[1] // world[1]))
    w, h = world[0] * scale, world[1] * scale
    return pygame.Rect((window[0] - w) // 2, (window[1] - h) // 2, w, h)


def save_screenshot(folder: Path, frame: np.ndarray, screen: pygame.Surface) -> tuple[Path, Path]:
    """F12: the frame at world resolution and the window as it is, as two PNGs in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"
    world, window = folder / f"screenshot-{stamp}-world.png", folder / f"screenshot-{stamp}-window.png"
    pygame.image.save(pygame.image.frombuffer(np.ascontiguousarray(frame), frame.shape[1::-1], "RGB"), str(world))
    pygame.image.save(screen, str(window))
    return world, window


def short_path(path: Path) -> str:
    """An episode path as the HUD shows it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
