"""The model as a backend: a causal DiT imagines the world chunk by chunk from actions and prompt.

Options (everything else is a BackendError):
    checkpoint    world checkpoint directory (model/world_model.py); default: the bundled
                  assets/default_world, else the bundled teacher assets/teacher
    device        "auto" | "cpu" | "cuda" ...
    sampler       "teacher" | "uniform" | "diagonal"; default: the checkpoint's own
    steps         denoising steps for "teacher" / "uniform"
    schedule      per-chunk step counts for "diagonal", e.g. [4, 3, 2] or the string "4,3,2" (session
                  options over the protocol are scalars); each in [2, 32]; counts above 4 run on a
                  finer grid than the student was distilled on (an ablation, model/samplers.py)
    context_noise "diagonal" only: network time in (0, 1000) of the context K/V every chunk leaves;
                  default: the checkpoint's (the value it was distilled with; others are ablations)
    rewarm        "diagonal" only, true/false: after a prompt switch, restart the schedule (4, 3, 2, ...)
                  so the new appearance gets more steps (DESIGN.md §3, "going beyond"); default false
    guidance      classifier-free guidance g in c + g (c - u); 0 disables it
    chunk_frames, height, width   accepted only when equal to the model's (clients may send them)

Every option is checked when the backend is built (the session opens): a bad one is a
BackendError then, never an error in the middle of a stream.

Start of a world: there is no image to start from, so `reset` generates chunk 0 from the prompt
alone (idle actions, no context); its frames are the first view and its K/V become the attention
sink. Every chunk after it follows the actions. `take_reset_chunk` hands chunk 0 (all of its frames)
over once, so the worker streams it as the world's first chunk instead of discarding it (the
"reset view", docs/protocol.md); callers that never take it (evaluation rollouts) are unaffected.
Same checkpoint + seed + prompts + actions -> identical frames on the same device.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from world.actions import Action, actions_to_array
from world.backend import Backend, BackendError, BackendInfo, ChunkResult, PromptError

if TYPE_CHECKING:  # model (torch) is imported only once a world is built
    from model.samplers import Sampler

ASSETS = Path(__file__).resolve().parents[2] / "assets"
DEFAULT_CHECKPOINT = ASSETS / "default_world"  # the bundled default world (the distilled student)
TEACHER_CHECKPOINT = ASSETS / "teacher"  # the bundled teacher: used when no default world is bundled
OPTIONS = ("checkpoint", "device", "sampler", "steps", "schedule", "context_noise", "rewarm", "guidance",
           "chunk_frames", "height", "width")


class GeneratedBackend(Backend):
    def __init__(
        self,
        checkpoint: str | None = None,
        device: str = "auto",
        sampler: str | None = None,
        steps: int | None = None,
        schedule: Sequence[int] | str | None = None,
        context_noise: float | None = None,
        rewarm: bool | None = None,
        guidance: float | None = None,
        chunk_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        **unknown: object,
    ) -> None:
        if unknown:
            raise BackendError(f"unknown generated-backend options {sorted(unknown)}; known: {', '.join(OPTIONS)}")
        self.model = _load(checkpoint, device)
        from model.samplers import parse_schedule  # model (torch) is imported only once a world is built

        try:
            if isinstance(schedule, str):
                schedule = parse_schedule(schedule)
            self.sampler = self.model.sampler(sampler, steps=steps, schedule=schedule, guidance=guidance,
                                              context_noise=context_noise, rewarm=rewarm)
        except ValueError as e:
            raise BackendError(str(e)) from None
        self._check_geometry(chunk_frames=chunk_frames, height=height, width=width)
        self.stream = self.model.stream(self.sampler)
        size, where = self.model.image_size, self.model.directory.resolve()
        name = where.parent.name if where.name == "checkpoint" else where.name  # a training run's checkpoint/
        self._info = BackendInfo(
            "generated", size, size, self.model.dit.config.chunk_frames, float(self.model.config.fps),
            f"causal DiT world {name} (step {self.model.step}), sampler {_summary(self.sampler)}",
        )
        self._started = False
        self._reset_chunk: ChunkResult | None = None  # chunk 0 of the last reset, until taken or stepped past

    def _check_geometry(self, **wanted: int | None) -> None:
        actual = {"chunk_frames": self.model.dit.config.chunk_frames, "height": self.model.image_size,
                  "width": self.model.image_size}
        for name, value in wanted.items():
            if value is not None and value != actual[name]:
                raise BackendError(f"this world model has {name}={actual[name]}; {name}={value!r} is not possible")

    @property
    def info(self) -> BackendInfo:
        return self._info

    def reset(self, seed: int, prompt: str) -> np.ndarray:
        """Generate chunk 0 from the prompt alone; returns its last frame [H, W, 3] uint8 and keeps the
        whole chunk for `take_reset_chunk`."""
        _check_prompt(prompt)
        self._reset_chunk = None
        self.stream.reset(seed, prompt)
        self._started = True
        first = self._generate([Action()] * self._info.chunk_frames)
        self._reset_chunk = first
        return first.frames[-1]

    def reset_with_context(self, frames: np.ndarray, actions: Sequence[Action], prompt: str, seed: int = 0) -> None:
        """Start from real frames [K, H, W, 3] uint8 (K a whole number of chunks; actions[i] produced
        frames[i]): they are encoded and written as the context (the first chunk is the attention
        sink), and the next `step_chunk` continues from them (docs/evaluation.md, fidelity in
        context mode). Nothing is generated here, so there is no reset chunk to take."""
        _check_prompt(prompt)
        frames = np.asarray(frames)
        size, f = self._info.height, self._info.chunk_frames
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (size, size, 3):
            raise BackendError(f"context frames must be uint8 [K, {size}, {size}, 3], "
                               f"got {frames.dtype} {list(frames.shape)}")
        if len(frames) == 0 or len(frames) % f or len(actions) != len(frames):
            raise BackendError(f"context must be a whole number of {f}-frame chunks with one action per frame, "
                               f"got {len(frames)} frames and {len(actions)} actions")
        self._reset_chunk = None
        self.stream.reset_with_context(seed, prompt, self.stream.encode(frames), actions_to_array(actions))
        self._started = True

    def take_reset_chunk(self) -> ChunkResult | None:
        """Chunk 0 generated by the last reset (idle actions), once; None after that or once stepped."""
        chunk, self._reset_chunk = self._reset_chunk, None
        return chunk

    def set_prompt(self, prompt: str) -> None:
        _check_prompt(prompt)
        self._require_started()
        self.stream.set_prompt(prompt)

    def step_chunk(self, actions: Sequence[Action]) -> ChunkResult:
        self._require_started()
        if len(actions) != self._info.chunk_frames:
            raise BackendError(f"the generated world steps {self._info.chunk_frames} frames at a time, "
                               f"got {len(actions)} actions")
        self._reset_chunk = None  # the world moved on: chunk 0 can no longer be shown as its first chunk
        return self._generate(actions)

    def _generate(self, actions: Sequence[Action]) -> ChunkResult:
        out = self.stream.next_chunk(actions_to_array(actions))
        frames = self.stream.decode(out.latents)
        extra = {"timesteps": out.timesteps, "sampler": self.sampler.name}
        return ChunkResult(frames=frames, steps=out.steps, nfe=out.nfe, extra=extra)

    def _require_started(self) -> None:
        if not self._started:
            raise BackendError("generated backend used before reset(seed, prompt)")

    def close(self) -> None:
        self._reset_chunk = None
        self.stream.cache.reset()


def _summary(sampler: Sampler) -> str:
    """Sampler summary such as "diagonal 4-3-2 steps, context t=100": enough to tell two sessions'
    samplers apart in records (BackendInfo.description, results.json "world")."""
    text = f"{sampler.name} {'-'.join(str(n) for n in sampler.describe()['steps'])} steps"
    if not sampler.refresh:
        text += f", context t={sampler.context_noise:g}"
    if sampler.rewarm:
        text += ", re-warm after switches"
    return text + (f", guidance {sampler.guidance:g}" if sampler.guidance > 0 else "")


def _check_prompt(prompt: str) -> None:
    """The generated world accepts any non-empty prompt (no theme parsing)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("the prompt is empty; describe a world, e.g. 'green hills at noon'")


def _bundled() -> Path | None:
    return next((p for p in (DEFAULT_CHECKPOINT, TEACHER_CHECKPOINT) if (p / "config.json").is_file()), None)


def _load(checkpoint: str | None, device: str):
    from model.checkpoint import CheckpointError
    from model.device import resolve_device
    from model.world_model import load_world_model

    path = Path(checkpoint) if checkpoint is not None else _bundled()
    if path is None:
        raise BackendError(f"no bundled world checkpoint at {DEFAULT_CHECKPOINT} or {TEACHER_CHECKPOINT}; "
                           "pass checkpoint=DIR (train one with `run_world.py train teacher`)")
    try:
        return load_world_model(path, resolve_device(device))
    except CheckpointError as e:
        raise BackendError(f"cannot load the world checkpoint: {e}") from None
    except RuntimeError as e:  # e.g. --device cuda without CUDA
        raise BackendError(str(e)) from None
