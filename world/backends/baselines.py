"""Baseline worlds: what a world model that learned nothing scores (docs/evaluation.md).

Both hold one image and never move; they exist so every evaluation number has a floor beside it.

- `still`: after a start, the start frame forever.
- `copy-last`: every frame repeats the previous one; the first repeats the start frame.

A start is either `reset(seed, prompt)`, which renders the engine's first view at that seed and
prompt (so a reset-mode rollout of a baseline is "the engine's first view forever"), or
`reset_with_context(frames, actions, prompt, seed=0)`, the generated world's hook, which starts
from real frames: the start frame is the last context frame.

Starting from the same frame and seeing nothing new, the two produce identical frames in every
rollout; they are two names for two questions (does the world move at all; does it beat copying
the last real frame, the teacher-forced baseline). Prompts are accepted and ignored after the
start. No torch: the engine renders the reset view.

Options: height, width, chunk_frames, fps (the engine's; defaults 64, 64, 3, 30).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from world.actions import Action
from world.backend import Backend, BackendError, BackendInfo, ChunkResult, PromptError

BASELINES = ("still", "copy-last")
_DESCRIPTIONS = {
    "still": "baseline: the start frame forever (a world that learned nothing)",
    "copy-last": "baseline: each frame repeats the previous one (copy the last real frame)",
}


class HoldBackend(Backend):
    """Common part of the baselines: a start frame, then `_next()` for every frame."""

    kind = "still"

    def __init__(self, height: int = 64, width: int = 64, chunk_frames: int = 3, fps: float = 30.0,
                 **unknown: object) -> None:
        from world.backends.engine_backend import EngineBackend

        if unknown:
            known = "height, width, chunk_frames, fps"
            raise BackendError(f"unknown {self.kind} options {sorted(unknown)}; known: {known}")
        # The engine checks the geometry now (a bad option fails when the backend is built) and
        # renders the reset view later.
        self._engine = EngineBackend(height=height, width=width, chunk_frames=chunk_frames, fps=fps)
        self._info = BackendInfo(self.kind, height, width, chunk_frames, float(fps), _DESCRIPTIONS[self.kind])
        self._start: np.ndarray | None = None
        self._last: np.ndarray | None = None

    @property
    def info(self) -> BackendInfo:
        return self._info

    def reset(self, seed: int, prompt: str) -> np.ndarray:
        """The engine's first view at (seed, prompt), held. Raises PromptError as the engine does."""
        self._hold(self._engine.reset(seed, prompt))
        return self._start.copy()

    def reset_with_context(self, frames: np.ndarray, actions: Sequence[Action], prompt: str, seed: int = 0) -> None:
        """Start from real frames [K, H, W, 3] uint8 (actions[i] produced frames[i]): holds frames[-1]."""
        _check_prompt(prompt)
        frames = np.asarray(frames)
        h, w = self._info.height, self._info.width
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (h, w, 3) or len(frames) == 0:
            raise BackendError(f"context frames must be uint8 [K, {h}, {w}, 3] with K >= 1, "
                               f"got {frames.dtype} {list(frames.shape)}")
        if len(actions) != len(frames):
            raise BackendError(f"one action per context frame: {len(frames)} frames, {len(actions)} actions")
        self._hold(frames[-1])

    def set_prompt(self, prompt: str) -> None:
        _check_prompt(prompt)
        self._require_started()

    def step_chunk(self, actions: Sequence[Action]) -> ChunkResult:
        self._require_started()
        frames = np.stack([self._next() for _ in actions]) if len(actions) else self._start[None, :0]
        return ChunkResult(frames=frames, steps=0, nfe=0, extra={"baseline": self.kind})

    def _hold(self, frame: np.ndarray) -> None:
        self._start = np.array(frame, dtype=np.uint8, copy=True)
        self._last = self._start

    def _next(self) -> np.ndarray:
        return self._start.copy()

    def _require_started(self) -> None:
        if self._start is None:
            raise BackendError(f"{self.kind} backend used before reset(seed, prompt) or reset_with_context")

    def close(self) -> None:
        self._start = self._last = None


class StillBackend(HoldBackend):
    """The start frame forever."""

    kind = "still"


class CopyLastBackend(HoldBackend):
    """Each frame repeats the previous frame (the first one repeats the start frame)."""

    kind = "copy-last"

    def _next(self) -> np.ndarray:
        self._last = self._last.copy()
        return self._last


def _check_prompt(prompt: str) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("the prompt is empty; describe a world, e.g. 'green hills at noon'")

