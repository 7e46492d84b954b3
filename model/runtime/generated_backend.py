"""The model as a backend: a causal DiT imagines the world chunk by chunk from actions and prompt.

Options (everything else is a BackendError):
    checkpoint    world checkpoint directory (model/runtime/world_model.py); default: the bundled
                  assets/default_world, else the bundled teacher assets/teacher
    device        "auto" | "cpu" | "cuda" ...
    sampler       "teacher" | "uniform" | "diagonal"; default: the checkpoint's own
    steps         denoising steps for "teacher" / "uniform"
    schedule      per-chunk step counts for "diagonal", e.g. [4, 3, 2] or the string "4,3,2" (session
                  options over the protocol are scalars); each in [2, 32]; counts above 4 run on a
                  finer grid than the student was distilled on (an ablation, model/diffusion/samplers.py)
    context_noise "diagonal" only: network time in (0, 1000) of the context K/V every chunk leaves;
                  default: the checkpoint's (the value it was distilled with; others are ablations)
    rewarm        "diagonal" only, true/false: after a prompt switch, restart the schedule (4, 3, 2, ...)
                  so the new appearance gets more steps (docs/design.md §3, long streams); default false
    guidance      classifier-free guidance g in c + g (c - u); 0 disables it
    guide         what the unconditional rows u leave out: "all" (no prompt, null actions; the
                  default), "actions" (same prompt, null actions: amplifies the response to keys),
                  "text" (no prompt, same actions); needs guidance > 0 (model/diffusion/samplers.py)
    start         what chunk 0 of every world is (world/start.py): "engine", "text" or "image";
                  default "text" here; sessions opened over the protocol default to "engine"
                  (world.backends.registry.SESSION_DEFAULTS)
    start_image   for start "image": PNG/JPEG bytes, a decoded world.start.StartImage or an
                  [H, W, 3] uint8 array (set by the worker from the open request's image frame,
                  never a client option; `set_start` sets it later, e.g. for replay)
    chunk_frames, height, width   accepted only when equal to the model's (clients may send them)

Every option is checked when the backend is built (the session opens): a bad one is a
BackendError then, never an error in the middle of a stream.

Start of a world: `reset(seed, prompt)` makes chunk 0, the world's first view and its attention
sink, as `start` says:
- "text": generated from the prompt alone (idle actions, no context);
- "engine": the engine backend (same height, width and chunk frames as the model) renders the
  prompt at the same seed. Its frames follow the dataset's convention (model/common/rollout.py,
  world/data/datagen.py): frame 0 is the view `engine.reset` returns, frame j >= 1 the one produced by
  action j, so chunk 0 is [reset view, the first F-1 frames of an idle step_chunk] with idle
  actions. They are encoded and written as clean context (`reset_with_context`); nothing is
  generated. A prompt the engine cannot parse (PromptError) falls back to "text", and the chunk's
  extra carries `start_requested` and a `start_notice` saying why;
- "image": the start image, centre-cropped and resized to the model's resolution (`fit_image`),
  repeated over the chunk and written as context like the engine's frames.
Every chunk after it follows the actions. `take_reset_chunk` hands chunk 0 (all of its frames: for
"engine" and "image" the very frames written as context, steps = nfe = 0) over once, so the worker
streams it as the world's first chunk instead of discarding it (the "reset view",
docs/protocol.md); its extra says `start` and `start_source` (where it came from, enough to make it
again). Callers that never take it (evaluation rollouts) are unaffected.
Same checkpoint + seed + prompts + actions + start -> identical frames on the same device.

What every chunk's extra also carries (docs/protocol.md section 5):
- `model`: what regenerating the frames needs (`regeneration_facts`: the checkpoint's path, step and
  weight hashes, the resolved sampler and the options it was built from, device, dtype). The
  recorder stores it in meta.json and `world.data.replay` rebuilds the backend from it.
- `theme`: what the world reads as, the bundled theme classifier's (assets/classifier) reading of
  the chunk's last frames ({"biome", "time_of_day", "weather", "text", "source": "classifier"}; the
  engine sends the same field from its prompt). Absent when no classifier fits the model's size.
- `prompt_notice` (the first chunk after a prompt that was cut): a one-line sentence for the
  player, made from the text encoder's `prompt_length` (model/runtime/notices.py).

Several sessions: backends of one checkpoint and device share one loaded model
(world/backends/model_cache.py); each keeps its own stream (cache, prompt, noise, sampler, start).
Backends with equal `batch_key()` (one model, one sampler) make their next chunks together with
`step_batch` (docs/multiplayer.md), each chunk identical to its own `step_chunk`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.runtime.notices import cut_notice
from world import bundled
from world.actions import IDLE, Action, actions_to_array
from world.backend import Backend, BackendError, BackendInfo, ChunkResult, PromptError
from world.backends.model_cache import MODELS, checkpoint_stamp
from world.launcher import command
from world.start import START_MODES, StartImage, StartImageError, as_start_image, fit_image

if TYPE_CHECKING:  # model (torch) is imported only once a world is built
    from model.diffusion.samplers import Sampler
    from model.runtime.stream import ChunkOutput

log = logging.getLogger("world.generated")
OPTIONS = ("checkpoint", "device", "sampler", "steps", "schedule", "context_noise", "rewarm", "guidance", "guide",
           "start", "start_image", "chunk_frames", "height", "width")


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
        guide: str | None = None,
        start: str | None = None,
        start_image: StartImage | bytes | np.ndarray | None = None,
        chunk_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        **unknown: object,
    ) -> None:
        if unknown:
            raise BackendError(f"unknown generated-backend options {sorted(unknown)}; known: {', '.join(OPTIONS)}")
        from model.diffusion.samplers import parse_schedule
        from model.runtime.world_model import world_sampler

        # Everything the checkpoint's config.json decides is checked before the weights load, so a
        # refused open costs a file read, not a model load (world/server/core.py admits, then builds).
        dit_cfg, ae_cfg, world_cfg = _configs(checkpoint)
        options = {"steps": steps, "guidance": guidance, "context_noise": context_noise, "rewarm": rewarm,
                   "guide": guide}  # fmt: skip
        try:
            if isinstance(schedule, str):
                schedule = parse_schedule(schedule)
            world_sampler(world_cfg, sampler, schedule=schedule, **options)
        except ValueError as e:
            raise BackendError(str(e)) from None
        self._check_geometry({"chunk_frames": dit_cfg.chunk_frames, "height": ae_cfg.image_size,
                              "width": ae_cfg.image_size}, chunk_frames=chunk_frames, height=height, width=width)
        self.model = _load(checkpoint, device)
        self.sampler = self.model.sampler(sampler, schedule=schedule, **options)
        self.stream = self.model.stream(self.sampler)
        self._facts = regeneration_facts(self.model, self.sampler, {
            "sampler": sampler, "steps": steps, "schedule": list(schedule) if schedule else None,
            "context_noise": context_noise, "rewarm": rewarm, "guidance": guidance, "guide": guide})  # fmt: skip
        self._themes = _theme_reader(self.model.device, self.model.image_size)
        self._prompt_notice: str | None = None
        size, where = self.model.image_size, self.model.directory.resolve()
        name = where.parent.name if where.name == "checkpoint" else where.name  # a training run's checkpoint/
        self._info = BackendInfo(
            "generated", size, size, self.model.dit.config.chunk_frames, float(self.model.config.fps),
            f"causal DiT world {name} (step {self.model.step}), sampler {_summary(self.sampler)}",
        )
        self._started = False
        self._reset_chunk: ChunkResult | None = None  # chunk 0 of the last reset, until taken or stepped past
        self._engine: Backend | None = None  # renders "engine" starts; built on the first one
        self._start, self._start_image_facts, self._start_pixels = "text", None, None
        self.set_start("text" if start is None else start, start_image)

    @staticmethod
    def _check_geometry(actual: dict, **wanted: int | None) -> None:
        for name, value in wanted.items():
            if value is not None and value != actual[name]:
                raise BackendError(f"this world model has {name}={actual[name]}; {name}={value!r} is not possible")

    @property
    def info(self) -> BackendInfo:
        return self._info

    @property
    def start(self) -> str:
        """The start mode the next reset uses (world/start.py)."""
        return self._start

    def set_start(self, start: str, image: StartImage | bytes | np.ndarray | None = None) -> None:
        """Choose what chunk 0 of the next reset is: "engine", "text" or "image" (with `image`: PNG/JPEG
        bytes, a StartImage or [H, W, 3] uint8 pixels, resized here once). Raises BackendError."""
        if start not in START_MODES:
            raise BackendError(f"start must be one of {', '.join(START_MODES)}; got {start!r:.40}")
        if image is not None and start != "image":
            raise BackendError(f"a start image needs start 'image', not {start!r}")
        pixels = facts = None
        if start == "image":
            if image is None:
                raise BackendError("start 'image' needs the image (PNG or JPEG bytes; over the protocol: the open "
                                   "request's image frame, `play --start-image FILE`)")
            try:
                decoded = as_start_image(image)
            except StartImageError as e:
                raise BackendError(str(e)) from None
            pixels, facts = fit_image(decoded.pixels, self._info.height, self._info.width), decoded.facts()
        # Only the resized pixels are kept: a 4096-pixel original would hold 48 MiB per session.
        self._start, self._start_image_facts, self._start_pixels = start, facts, pixels

    def reset(self, seed: int, prompt: str) -> np.ndarray:
        """Make chunk 0 as the start mode says (module docstring); returns its last frame [H, W, 3]
        uint8, the view the next chunk continues from, and keeps the whole chunk for
        `take_reset_chunk`."""
        self._reset_chunk = None
        last = self._reset(seed, prompt)  # PromptError from the text encoder before the stream changes
        self._note_cut(prompt)
        return last

    def _reset(self, seed: int, prompt: str) -> np.ndarray:
        if self._start == "engine":
            try:
                frames, source = self._engine_start(seed, prompt)
            except PromptError as e:
                reason = str(e).split("; try e.g.")[0]  # the engine's examples do not fit a one-line notice
                notice = f"start: text (the engine does not know {_quote(prompt)}: {reason})"
                return self._text_start(seed, prompt, {"start_requested": "engine", "start_notice": notice})
            return self._context_start(frames, seed, prompt, {"start": "engine", "start_source": source})
        if self._start == "image":
            frames = np.repeat(self._start_pixels[None], self._info.chunk_frames, axis=0)
            source = {"image": self._start_image_facts, "size": [self._info.height, self._info.width],
                      "fit": "centre crop, Lanczos resize"}  # fmt: skip
            return self._context_start(frames, seed, prompt, {"start": "image", "start_source": source})
        return self._text_start(seed, prompt, {})

    def _text_start(self, seed: int, prompt: str, facts: dict) -> np.ndarray:
        self.stream.reset(seed, prompt)
        self._started = True
        first = self._generate([IDLE] * self._info.chunk_frames)
        first.extra.update({"start": "text", "start_source": {"prompt": prompt, "seed": seed}, **facts})
        self._reset_chunk = first
        return first.frames[-1]

    def _engine_start(self, seed: int, prompt: str) -> tuple[np.ndarray, dict]:
        """The engine's chunk 0 for (seed, prompt): [reset view, first F-1 frames of an idle step].
        Raises PromptError for a prompt the engine cannot parse."""
        from world.backends.engine_backend import EngineBackend

        info = self._info
        if self._engine is None:
            self._engine = EngineBackend(height=info.height, width=info.width, chunk_frames=info.chunk_frames,
                                         fps=info.fps)  # fmt: skip
        first = np.array(self._engine.reset(seed, prompt), dtype=np.uint8, copy=True)
        rest = self._engine.step_chunk([IDLE] * info.chunk_frames).frames[: info.chunk_frames - 1]
        frames = np.concatenate([first[None], rest]).astype(np.uint8, copy=False)
        source = {"backend": "engine", "seed": seed, "prompt": prompt,
                  "engine_version": getattr(self._engine, "engine_version", None),
                  "frames": "reset view, then the first frames of an idle step"}  # fmt: skip
        return frames, source

    def _context_start(self, frames: np.ndarray, seed: int, prompt: str, facts: dict) -> np.ndarray:
        """Write `frames` (one chunk, idle actions) as the clean first chunk; they are chunk 0."""
        self.reset_with_context(frames, [IDLE] * len(frames), prompt, seed)
        frames = np.array(frames, dtype=np.uint8, copy=True)
        self._reset_chunk = ChunkResult(frames=frames, steps=0, nfe=0,
                                        extra={**facts, **self._chunk_facts(frames), "sampler": self.sampler.name})
        return frames[-1]

    def reset_with_context(self, frames: np.ndarray, actions: Sequence[Action], prompt: str, seed: int = 0) -> None:
        """Start from real frames [K, H, W, 3] uint8 (K a whole number of chunks; actions[i] produced
        frames[i]): they are encoded and written as the context (the first chunk is the attention
        sink), and the next `step_chunk` continues from them (docs/evaluation.md, fidelity in
        context mode). Nothing is generated here, so there is no reset chunk to take."""
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
        self._require_started()
        self.stream.set_prompt(prompt)  # PromptError from the text encoder before the stream changes
        self._note_cut(prompt)

    def _note_cut(self, prompt: str) -> None:
        """Keep the sentence for a prompt the text encoder cut; the next chunk says it (module docstring)."""
        notice = cut_notice(prompt, self.stream.text_encoder.prompt_length(prompt))
        self._prompt_notice = notice or self._prompt_notice

    def step_chunk(self, actions: Sequence[Action]) -> ChunkResult:
        return self._result(self.stream.next_chunk(self._step_input(actions)))

    def _step_input(self, actions: Sequence[Action]) -> np.ndarray:
        """The next chunk's actions [F, A], once the request is known to be valid (BackendError if not)."""
        self._require_started()
        if len(actions) != self._info.chunk_frames:
            raise BackendError(f"the generated world steps {self._info.chunk_frames} frames at a time, "
                               f"got {len(actions)} actions")
        self._reset_chunk = None  # the world moved on: chunk 0 can no longer be shown as its first chunk
        return actions_to_array(actions)

    def _generate(self, actions: Sequence[Action]) -> ChunkResult:
        return self._result(self.stream.next_chunk(actions_to_array(actions)))

    def _result(self, out: ChunkOutput) -> ChunkResult:
        frames = self.stream.decode(out.latents)
        extra = {"timesteps": out.timesteps, "sampler": self.sampler.name, **self._chunk_facts(frames)}
        return ChunkResult(frames=frames, steps=out.steps, nfe=out.nfe, extra=extra)

    def _chunk_facts(self, frames: np.ndarray) -> dict:
        """The extra every chunk carries: `model`, `theme` and a pending `prompt_notice` (docstring)."""
        facts: dict = {"model": self._facts}
        if self._themes is not None:
            facts["theme"] = _read_theme(self._themes, frames)
        if self._prompt_notice:
            facts["prompt_notice"], self._prompt_notice = self._prompt_notice, None
        return facts

    def batch_key(self) -> tuple:
        """Sessions of one loaded model (shared weights) and one sampler batch their chunks."""
        from model.runtime.stream import batch_key

        return ("generated", *batch_key(self.stream))

    @classmethod
    def step_batch(cls, backends: Sequence[Backend],
                   actions: Sequence[Sequence[Action]]) -> list[ChunkResult | Exception]:
        """Every backend's next chunk from batched forwards (model/runtime/stream.py `next_chunks`), each
        identical to its own step_chunk. A backend whose request is bad (not started, wrong action
        count) gets its error and the rest run without it; if the batched generation itself fails,
        every stream's noise is rewound and each steps alone, so only the failing one loses its chunk."""
        results: dict[int, ChunkResult | Exception] = {}
        ready: list[tuple[int, GeneratedBackend, np.ndarray]] = []
        for i, (backend, acts) in enumerate(zip(backends, actions, strict=True)):
            try:
                ready.append((i, backend, backend._step_input(acts)))
            except BackendError as exc:
                results[i] = exc
        outs = _generate_together([b for _, b, _ in ready], [a for _, _, a in ready]) if len(ready) > 1 else None
        if outs is None:  # one left, or the batch failed: each alone
            alone = super().step_batch([b for _, b, _ in ready], [actions[i] for i, _, _ in ready])
            results.update(zip([i for i, _, _ in ready], alone))
        else:
            for (i, backend, _), out in zip(ready, outs):
                try:
                    results[i] = backend._result(out)  # decoding, per stream
                except Exception as exc:  # noqa: BLE001 - this stream's own failure
                    results[i] = exc
        return [results[i] for i in range(len(backends))]

    def _require_started(self) -> None:
        if not self._started:
            raise BackendError("generated backend used before reset(seed, prompt)")

    def close(self) -> None:
        self._reset_chunk = None
        self.stream.cache.reset()
        if self._engine is not None:
            self._engine.close()


def regeneration_facts(model, sampler: Sampler, options: dict) -> dict:
    """What regenerating this backend's frames needs (JSON): the checkpoint (path, name, step, weight
    hashes), the resolved sampler and the options it was built from, device and compute dtype."""
    where = Path(model.directory).resolve()
    device = model.device
    return {
        "checkpoint": str(where),
        "checkpoint_name": where.parent.name if where.name == "checkpoint" else where.name,
        "step": int(model.step),
        "sha256": _weight_hashes(str(where), checkpoint_stamp(where)),
        "text_encoder": model.config.text_encoder,
        "sampler": sampler.describe(),
        "sampler_options": options,
        "device": str(device),
        "dtype": "bfloat16" if device.type == "cuda" else "float32",  # model.common.device.autocast
        **compute_facts(),
    }


def compute_facts() -> dict:
    """What else changes the bits on a CPU: the intra-op thread count (GEMMs split their sums by it),
    the kernel family torch dispatches to (AVX2, AVX512, ...) and the torch build."""
    import torch

    return {"threads": torch.get_num_threads(), "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__}


@functools.lru_cache(maxsize=16)
def _weight_hashes(where: str, stamp: tuple) -> dict:
    """sha256 of the dit and autoencoder files, once per checkpoint version (stamp): hashing 30 MiB at
    every open would cost a session sharing a loaded model more than building it."""
    from model.common.checkpoint import module_sha256

    return {name: module_sha256(Path(where), name) for name in ("dit", "autoencoder")}


def _theme_reader(device, size: int):
    """The bundled theme classifier on `device`, or None when it is absent or reads another size."""
    where = bundled.CLASSIFIER_CHECKPOINT
    if not (where / "config.json").is_file():
        return None
    from model.common.checkpoint import CheckpointError
    from model.readers.reading import load_classifier

    key = ("classifier", str(where.resolve()), str(device), checkpoint_stamp(where))
    try:
        reader = MODELS.get(key, lambda: load_classifier(where, device))  # shared, like the world
    except CheckpointError:
        return None
    return reader if (reader.config.height, reader.config.width) == (size, size) else None


def _read_theme(reader, frames: np.ndarray) -> dict:
    """The classifier's reading of a chunk [F, H, W, 3] uint8: its last frame (with the frames before
    it as the classifier's stack), as {"biome", "time_of_day", "weather", "text", "source"}."""
    from world.procedural.themes import Theme, describe

    labels = reader.read(np.asarray(frames)[-reader.config.frames_in :]).labels[-1]  # [3] class indices
    names = [reader.config.classes(f)[int(k)] for f, k in zip(("biome", "time_of_day", "weather"), labels)]
    theme = Theme(*names)
    return {**theme.to_json(), "text": describe(theme), "source": "classifier"}

def _generate_together(backends: Sequence[GeneratedBackend], actions: Sequence[np.ndarray]) -> list | None:
    """Their next chunks' latents from batched forwards, or None (their noise rewound, no cache
    committed: generate_chunks commits only after every forward) when the batch fails."""
    from model.runtime.stream import next_chunks

    states = [b.stream.generator.get_state() for b in backends]
    try:
        return next_chunks([b.stream for b in backends], actions)
    except Exception:  # noqa: BLE001 - the caller retries each stream alone, where the error is its own
        log.exception("batched chunk of %d sessions failed; generating them one by one", len(backends))
        for backend, state in zip(backends, states):
            backend.stream.generator.set_state(state)
        return None


def _summary(sampler: Sampler) -> str:
    """Sampler summary such as "diagonal 4-3-2 steps, context t=100" or "teacher 32 steps, guidance 3 on
    actions": enough to tell two sessions' samplers apart in records (BackendInfo.description,
    results.json "world")."""
    text = f"{sampler.name} {'-'.join(str(n) for n in sampler.describe()['steps'])} steps"
    if not sampler.refresh:
        text += f", context t={sampler.context_noise:g}"
    if sampler.rewarm:
        text += ", re-warm after switches"
    if sampler.guidance > 0:
        text += f", guidance {sampler.guidance:g}" + (f" on {sampler.guide}" if sampler.guide != "all" else "")
    return text


def _quote(prompt: str, limit: int = 80) -> str:
    text = prompt if len(prompt) <= limit else prompt[: limit - 1] + "\u2026"
    return f'"{text}"'




def _checkpoint_path(checkpoint: str | None) -> Path:
    path = Path(checkpoint) if checkpoint is not None else bundled.bundled_checkpoint()
    if path is None:
        raise BackendError(f"no bundled world checkpoint at {bundled.DEFAULT_CHECKPOINT} or "
                           f"{bundled.TEACHER_CHECKPOINT}; pass checkpoint=DIR (train one with "
                           f"`{command('train teacher')}`)")
    return path


def _configs(checkpoint: str | None):
    """The checkpoint's (dit, autoencoder, world) configs from its config.json, weights untouched."""
    from model.common.checkpoint import CheckpointError
    from model.runtime.world_model import read_world_configs

    try:
        return read_world_configs(_checkpoint_path(checkpoint))
    except CheckpointError as e:
        raise BackendError(f"cannot load the world checkpoint: {e}") from None


def _load(checkpoint: str | None, device: str):
    from model.common.checkpoint import CheckpointError, checkpoint_dir
    from model.common.device import resolve_device
    from model.runtime.world_model import load_world_model

    path = _checkpoint_path(checkpoint)
    try:
        resolved = resolve_device(device)
        directory = checkpoint_dir(path)
        key = (str(directory.resolve()), str(resolved), checkpoint_stamp(directory))
        return MODELS.get(key, lambda: load_world_model(directory, resolved))  # one copy per process
    except CheckpointError as e:
        raise BackendError(f"cannot load the world checkpoint: {e}") from None
    except RuntimeError as e:  # e.g. --device cuda without CUDA
        raise BackendError(str(e)) from None
