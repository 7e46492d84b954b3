"""Drive any Backend with a fixed action sequence (and prompt switches) and collect its frames.

The one loop every measure uses, for the engine and for generated worlds alike, so both are
always compared under exactly the same calls. Frame convention (the dataset's): `frames[0]` is
the view returned by reset, and `frames[j]` for j >= 1 was produced by `actions[j]`;
`actions[0]` is a placeholder (idle) that produced nothing and is never scored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from world.actions import IDLE, Action, actions_to_array
from world.backend import Backend


@dataclass
class Rollout:
    """frames [N, H, W, 3] uint8, actions [N, ACTION_DIM] float32, prompts: N strings."""

    frames: np.ndarray
    actions: np.ndarray
    prompts: list[str]
    nfe: list[int] = field(default_factory=list)  # per chunk
    chunk_s: list[float] = field(default_factory=list)  # wall time per chunk


@dataclass
class Chunk:
    """One step_chunk result with its inputs: frames [F, H, W, 3], the F actions, the prompt."""

    frames: np.ndarray
    actions: list[Action]
    prompt: str
    nfe: int
    seconds: float


def stream(
    backend: Backend,
    actions: Sequence[Action],
    prompt: str,
    switches: Mapping[int, str] | None = None,
) -> Iterator[Chunk]:
    """Step `backend` (already reset) through `actions` a chunk at a time.

    switches: {action index: prompt}; a switch at index j takes effect from the chunk holding
    action j (backends switch between chunks, so it is applied before that chunk).
    """
    f = backend.info.chunk_frames
    pending = dict(switches or {})
    for start in range(0, len(actions) - len(actions) % f, f):
        due = [j for j in pending if j < start + f]
        for j in sorted(due):
            prompt = pending.pop(j)
            backend.set_prompt(prompt)
        chunk = list(actions[start : start + f])
        t0 = time.perf_counter()
        result = backend.step_chunk(chunk)
        yield Chunk(result.frames, chunk, prompt, int(result.nfe), time.perf_counter() - t0)


def rollout(
    backend: Backend,
    seed: int,
    prompt: str,
    actions: Sequence[Action],
    switches: Mapping[int, str] | None = None,
    on_chunk: Callable[[Chunk], None] | None = None,
) -> Rollout:
    """reset(seed, prompt), then `stream`; keeps every frame (use `stream` for long runs)."""
    first = backend.reset(seed, prompt)
    frames, prompts, nfe, secs = [first[None]], [prompt], [], []
    for chunk in stream(backend, actions, prompt, switches):
        frames.append(chunk.frames)
        prompts += [chunk.prompt] * len(chunk.frames)
        nfe.append(chunk.nfe)
        secs.append(chunk.seconds)
        if on_chunk is not None:
            on_chunk(chunk)
    n_done = sum(len(x) for x in frames) - 1
    acts = actions_to_array([IDLE, *actions[:n_done]])
    return Rollout(np.concatenate(frames), acts, prompts, nfe, secs)


@dataclass
class Worlds:
    """The world under test and the engine it is compared with, at the same resolution.

    same: the world *is* the engine (the sanity row); its rollouts are reused, not repeated.
    """

    world: Backend
    engine: Backend
    same: bool = False

    def both(
        self, seed: int, prompt: str, actions: Sequence[Action], switches: Mapping[int, str] | None = None
    ) -> tuple[Rollout, Rollout]:
        """(world rollout, engine rollout) under identical calls."""
        ref = rollout(self.engine, seed, prompt, actions, switches)
        gen = ref if self.same else rollout(self.world, seed, prompt, actions, switches)
        return gen, ref
