"""The procedural reference world as a `Backend` (prompt text -> theme, actions -> frames)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from world.actions import Action
from world.backend import Backend, BackendError, BackendInfo, ChunkResult
from world.procedural.engine import ENGINE_VERSION, EngineConfig, EngineWorld
from world.procedural.themes import describe, parse_prompt

OPTIONS = ("height", "width", "chunk_frames", "fps", "start")


class EngineBackend(Backend):
    """Wraps EngineWorld; a prompt switch changes the look while terrain and camera carry on.

    `start` (the generated world's session option, world/start.py) is accepted only as "engine"
    (or absent): the engine always starts from its own view of the prompt. "text" and "image"
    are refused with a BackendError that says they belong to the generated backend."""

    def __init__(self, height: int = 64, width: int = 64, chunk_frames: int = 3, fps: float = 30.0,
                 start: str | None = None, **unknown: object) -> None:
        if start not in (None, "engine"):
            raise BackendError(f"the engine always starts from its own view of the prompt (start 'engine'); "
                               f"start {start!r:.40} is an option of the generated backend")
        if unknown:
            raise BackendError(f"unknown engine options {sorted(unknown)}; known: {', '.join(OPTIONS)}")
        for name, value in (("height", height), ("width", width), ("chunk_frames", chunk_frames)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BackendError(f"engine option {name} must be a positive integer, got {value!r}")
        if min(height, width) < 8 or max(height, width) > 1024:
            raise BackendError(f"engine frame size {height}x{width} is outside 8..1024 pixels")
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
            raise BackendError(f"engine option fps must be a positive number, got {fps!r}")
        self._world = EngineWorld(EngineConfig(height=height, width=width))
        self._info = BackendInfo("engine", height, width, chunk_frames, float(fps),
                                 "procedural reference world (numpy voxel-space renderer)")
        self._started = False

    @property
    def info(self) -> BackendInfo:
        return self._info

    @property
    def world(self) -> EngineWorld:
        return self._world

    @property
    def engine_version(self) -> int:
        """world.procedural.engine.ENGINE_VERSION: which engine's bytes this backend renders."""
        return ENGINE_VERSION

    def reset(self, seed: int, prompt: str) -> np.ndarray:
        """First view [H, W, 3] uint8. Raises PromptError before touching the current world."""
        theme = parse_prompt(prompt)
        self._started = True
        return self._world.reset(seed, theme)

    def resume_state(self) -> dict[str, float] | None:
        return self._world.pose() if self._started else None

    def resume(self, state: dict[str, float]) -> None:
        """Continue from an earlier engine's `resume_state()` (same seed and prompt, after reset)."""
        self._require_started()
        try:
            self._world.restore(state)
        except ValueError as exc:
            raise BackendError(f"cannot resume the engine: {exc}") from None

    def set_prompt(self, prompt: str) -> None:
        theme = parse_prompt(prompt)
        self._require_started()
        self._world.set_theme(theme)

    def step_chunk(self, actions: Sequence[Action]) -> ChunkResult:
        """frames [F, H, W, 3] uint8 for F = len(actions); extra holds the theme, the final pose and
        the engine version (so a client recording the stream over the wire can store it)."""
        self._require_started()
        c = self._world.config
        frames = np.empty((len(actions), c.height, c.width, 3), dtype=np.uint8)
        for i, action in enumerate(actions):
            frames[i] = self._world.step(action)
        theme = self._world.theme
        extra = {
            "theme": {**theme.to_json(), "text": describe(theme)},
            "pose": self._world.state(),
            "engine_version": ENGINE_VERSION,
        }
        return ChunkResult(frames=frames, steps=0, nfe=0, extra=extra)

    def _require_started(self) -> None:
        if not self._started:
            raise BackendError("engine backend used before reset(seed, prompt)")
