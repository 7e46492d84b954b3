"""The interface every world backend implements (engine, generated).

The worker only ever talks to a `Backend`: it resets it, switches its prompt and asks it for the
next chunk of frames given one action per frame. Nothing about sockets or sessions leaks in here,
so evaluation, benchmarks and the recorder drive backends directly with the same calls. Backends
are built by name through `world/backends/registry.py`; the errors live in `world/errors.py` (and
are re-exported here for older imports).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from world.actions import Action
from world.errors import BackendError, PromptError

__all__ = ["Backend", "BackendError", "BackendInfo", "ChunkResult", "PromptError"]


@dataclass
class ChunkResult:
    """One chunk of frames and what produced them.

    frames: [F, H, W, 3] uint8 RGB, F == len(actions) passed to step_chunk.
    steps: denoising steps (network evaluations that denoise) used for this chunk; 0 for the engine.
    nfe: network evaluations in total for this chunk (steps plus any K/V refresh pass); 0 for engine.
    extra: backend-specific facts worth recording (e.g. timesteps, theme), JSON-serialisable.
    """

    frames: np.ndarray
    steps: int = 0
    nfe: int = 0
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BackendInfo:
    name: str
    height: int
    width: int
    chunk_frames: int
    fps: float  # nominal display rate of the world (frames per second of world time)
    description: str = ""


class Backend(ABC):
    """A world that turns per-frame actions into frames, one chunk at a time."""

    @property
    @abstractmethod
    def info(self) -> BackendInfo: ...

    @abstractmethod
    def reset(self, seed: int, prompt: str) -> np.ndarray:
        """Start a new world. Returns the first view [H, W, 3] uint8. Raises PromptError."""

    @abstractmethod
    def set_prompt(self, prompt: str) -> None:
        """Switch the prompt mid-stream; the next chunk uses it. Raises PromptError."""

    @abstractmethod
    def step_chunk(self, actions: Sequence[Action]) -> ChunkResult:
        """Advance the world by len(actions) frames (normally info.chunk_frames)."""

    def take_reset_chunk(self) -> ChunkResult | None:
        """The chunk the last `reset` already produced, to be shown as the world's first chunk.

        A backend whose reset makes a whole chunk to get its first view (the generated world:
        chunk 0 from its `start`, world/start.py: the engine's frames, the prompt alone or a picture,
        with idle actions) returns it here, so the frames the user
        waits for after a reset are not thrown away and generated again: the worker streams it as
        chunk 0 (the "reset view", records with the idle action `Action()`), and actions start
        with the chunk after it. It is returned once: later calls, and any call after the first
        `step_chunk` since the reset, return None. Frames [info.chunk_frames, H, W, 3] uint8.

        Default None: the reset produces only the single first view `reset` returns (the engine),
        and the first chunk after a reset is the first `step_chunk`.
        """
        return None

    def resume_state(self) -> dict[str, float] | None:
        """Numbers that put a fresh backend of this kind, reset with the same seed and prompt, back
        where this one is now (`resume`). The worker sends them with every chunk (`extra.resume`),
        so a client can re-seed a world whose worker died (docs/protocol.md, "Resuming"). None:
        nothing to restore beyond what the open already says (the baselines hold their start
        frame; a generated world resumes from its last frame as a start image)."""
        return None

    def resume(self, state: dict[str, float]) -> None:
        """After `reset`: go on from an earlier backend's `resume_state()`. The default has none."""
        if state:
            raise BackendError(f"the {self.info.name} world keeps no resume state; got {sorted(state)!r:.80}")

    def batch_key(self) -> Hashable | None:
        """Backends whose keys are equal (and not None) may make their next chunks together through
        `step_batch`: the generated world's sessions of one loaded model and sampler. None: alone."""
        return None

    @classmethod
    def step_batch(cls, backends: Sequence[Backend],
                   actions: Sequence[Sequence[Action]]) -> list[ChunkResult | Exception]:
        """The next chunk of each backend (equal batch keys), actions[i] for backends[i]: its result or
        the exception its own step raised, so one backend's failure never costs another its chunk.
        Each result is what `step_chunk` alone would have returned. This default steps them in turn."""
        results: list[ChunkResult | Exception] = []
        for backend, acts in zip(backends, actions, strict=True):
            try:
                results.append(backend.step_chunk(acts))
            except Exception as exc:  # noqa: BLE001 - handed to the caller, per backend
                results.append(exc)
        return results

    def close(self) -> None:
        """Free whatever the backend holds (caches, GPU memory)."""
