"""The world under test beside the engine it is compared with, started the same way.

Starts (`Worlds.start`, `eval --start`): "text" resets every world with (seed, prompt); "engine"
renders the engine's first chunk at (seed, prompt) and starts the world under test from it
(model/common/rollout.py, `begin`), so the world's first view is the engine's frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from model.common.rollout import Rollout, Start, begin, engine_context, rollout
from world.actions import IDLE, Action
from world.backend import Backend

START_MODES = ("engine", "text")


@dataclass
class Worlds:
    """The world under test and the engine it is compared with, at the same resolution.

    same: the world *is* the engine (the sanity row); its rollouts are reused, not repeated.
    start: "engine" or "text" (START_MODES), how `both` and `begin` start the worlds.
    """

    world: Backend
    engine: Backend
    same: bool = False
    start: str = "engine"

    def __post_init__(self) -> None:
        if self.start not in START_MODES:
            raise ValueError(f"start {self.start!r}: one of {', '.join(START_MODES)}")

    def context(self, seed: int, prompt: str, start: str | None = None,
                prefix: Sequence[Action] | None = None) -> Start | None:
        """The engine's first chunk (reset view + `prefix`, default idle actions) for an engine
        start; None for a text start."""
        if (start or self.start) == "text":
            return None
        if prefix is None:
            prefix = [IDLE] * (self.engine.info.chunk_frames - 1)
        return engine_context(self.engine, seed, prompt, prefix)

    def both(
        self,
        seed: int,
        prompt: str,
        actions: Sequence[Action],
        switches: Mapping[int, str] | None = None,
        start: str | None = None,
        prefix: Sequence[Action] | None = None,
    ) -> tuple[Rollout, Rollout]:
        """(world rollout, engine rollout) under identical calls, both started the same way
        (`start` overrides self.start; `prefix`: the engine start's actions after its reset view)."""
        ctx = self.context(seed, prompt, start, prefix)
        ref = rollout(self.engine, seed, prompt, actions, switches, start=ctx)
        gen = ref if self.same else rollout(self.world, seed, prompt, actions, switches, start=ctx)
        return gen, ref

    def begin(self, seed: int, prompt: str, start: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Start both for streaming side by side: (world's first view, engine's first view)."""
        ctx = self.context(seed, prompt, start)
        if ctx is None:
            ref = self.engine.reset(seed, prompt)
            return (ref if self.same else self.world.reset(seed, prompt)), ref
        return (ctx.frames[-1] if self.same else begin(self.world, seed, prompt, ctx)), ctx.frames[-1]
