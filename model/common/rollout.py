"""Drive any Backend with a fixed action sequence (and prompt switches) and collect its frames.

The one loop that drives a world for evaluation's measures (model/evaluation/) and for the readers'
training episodes rendered on the engine (model/readers/episodes.py), for the engine and for
generated worlds alike, so every number is made under exactly the same calls. Frame convention
(the dataset's): `frames[0]` is the view returned by reset, and `frames[j]` for j >= 1 was produced
by `actions[j]`; `actions[0]` is a placeholder (idle) that produced nothing and is never scored.

Starting from real frames (`Start`, `begin`): a world with the `reset_with_context` hook (the
generated world and the baselines) is handed the frames; the engine, which has no such hook,
re-simulates them from (seed, prompt, actions): it is deterministic, so that lands on the same
frames (checked bit for bit).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from world.actions import IDLE, Action, actions_to_array
from world.backend import Backend

HOOK = "reset_with_context"


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


@dataclass
class Start:
    """Real frames to start a world from: frames [K, H, W, 3] uint8, rendered by the engine from
    reset(seed, prompt) under `actions` (actions[i] produced frames[i]; actions[0] is the idle
    placeholder of the reset view)."""

    frames: np.ndarray
    actions: list[Action]


def engine_context(engine: Backend, seed: int, prompt: str, actions: Sequence[Action]) -> Start:
    """The engine's first 1 + len(actions) frames at (seed, prompt): its reset view, then one frame
    per action. The engine is left right after them, ready to continue."""
    first = engine.reset(seed, prompt)
    frames = [first[None]]
    if len(actions):
        frames.append(engine.step_chunk(list(actions)).frames)
    return Start(np.concatenate(frames), [IDLE, *actions])


def begin(backend: Backend, seed: int, prompt: str, start: Start | None = None) -> np.ndarray:
    """Start `backend`; returns its first view [H, W, 3]. start None: reset(seed, prompt). Else the
    backend's `reset_with_context` hook, or, for a backend without it (the engine), a re-simulation
    of the start's actions from reset(seed, prompt), checked to reproduce the start's frames."""
    if start is None:
        return backend.reset(seed, prompt)
    hook = getattr(backend, HOOK, None)
    if hook is not None:
        hook(start.frames, list(start.actions), prompt, seed)
        return start.frames[-1]
    frames = [backend.reset(seed, prompt)[None]]
    if len(start.actions) > 1:
        frames.append(backend.step_chunk(list(start.actions[1:])).frames)
    if not np.array_equal(np.concatenate(frames), start.frames):
        raise ValueError(f"the {backend.info.name} world has no {HOOK} hook and does not re-simulate the "
                         f"engine's start frames: it cannot be started from the engine (use --start text)")
    return start.frames[-1]


def rollout(
    backend: Backend,
    seed: int,
    prompt: str,
    actions: Sequence[Action],
    switches: Mapping[int, str] | None = None,
    on_chunk: Callable[[Chunk], None] | None = None,
    start: Start | None = None,
) -> Rollout:
    """`begin` (reset(seed, prompt), or from `start`), then `stream`; keeps every frame (use
    `stream` for long runs). frames[0] is the first view (the start's last frame)."""
    first = begin(backend, seed, prompt, start)
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
