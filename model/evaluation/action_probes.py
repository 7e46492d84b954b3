"""Scripted action probes for action accuracy: every key alone, combinations, mouse sweeps, idle.

Segments are whole chunks long and start on chunk boundaries, so every chunk a world generates
carries exactly one commanded action. The first `settle` frames of a segment are not scored
(a world may take up to a chunk to react; the engine reacts at once), nor are the last frames
whose IDM window reaches into the next segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from world.actions import Action


@dataclass(frozen=True)
class Segment:
    name: str
    action: Action
    frames: int


def probe_segments(hold: int = 12) -> list[Segment]:
    """The probe script. Opposite motions follow each other so the camera returns to where it
    was (pitch and height have limits; a camera pinned at a limit shows no motion to read)."""
    a = Action
    short = max(3, (hold * 3 // 4) // 3 * 3)
    plan = [
        ("idle", a(), hold),
        ("forward", a(("forward",)), hold),
        ("back", a(("back",)), hold),
        ("left", a(("left",)), hold),
        ("right", a(("right",)), hold),
        ("turn_left", a(("turn_left",)), hold),
        ("turn_right", a(("turn_right",)), hold),
        ("look_up", a(("look_up",)), short),
        ("look_down", a(("look_down",)), short),
        ("rise", a(("rise",)), hold),
        ("sink", a(("sink",)), hold),
        ("forward+turn_left", a(("forward", "turn_left")), hold),
        ("forward+turn_right", a(("forward", "turn_right")), hold),
        ("forward+right", a(("forward", "right")), hold),
        ("mouse_right_fast", a((), 0.8, 0.0), hold),
        ("mouse_left_slow", a((), -0.3, 0.0), hold),
        ("mouse_up", a((), 0.0, 0.8), short),
        ("mouse_down", a((), 0.0, -0.8), short),
        ("forward+mouse_left", a(("forward",), -0.8, 0.0), hold),
        ("idle_end", a(), hold),
    ]
    return [Segment(n, act, f) for n, act, f in plan]


def probe_actions(segments: list[Segment], settle: int, after: int) -> tuple[list[Action], np.ndarray, list[str]]:
    """(actions, scored [len(actions)] bool, segment name per action)."""
    actions, scored, names = [], [], []
    for seg in segments:
        actions += [seg.action] * seg.frames
        names += [seg.name] * seg.frames
        scored += [settle <= j < seg.frames - after for j in range(seg.frames)]
    return actions, np.array(scored, bool), names
