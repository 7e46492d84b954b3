"""The one streaming generation loop: the next chunk given the cache, actions and prompt.

`generate_chunk` is used by everything that generates: `WorldStream` (the generated backend, hence
the worker, evaluation and benchmarks) and training rollouts (batched, optionally with one exit
step carrying gradient, Self-Forcing style). A sampler is a schedule read by this loop, never a
copy of it (docs/design.md §7, habit 3).

Noise is drawn on the CPU from a seeded `torch.Generator` and moved to the device, so a stream is
reproducible from (seed, prompts, actions) and the CPU result does not depend on thread count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model.common.device import autocast
from model.diffusion.flow import network_time, predict_x0
from model.diffusion.guidance import apply_guidance
from model.diffusion.samplers import Sampler, check_guide
from model.nets.cache_batch import CacheBatch, Member
from model.nets.kv_cache import ChunkInputs, KVCache
from model.nets.world_net import WorldNet

Noise = Callable[[tuple[int, ...]], torch.Tensor]
StepHook = Callable[[float, torch.Tensor], None]  # (level s, the forward's input x [B, F, C, h, w])


@dataclass
class Conditioning:
    """Per-row network inputs that stay fixed for a prompt: rows = batch * (2 with guidance).

    text [R, L, text_dim], text_mask [R, L] bool, drop_actions [R] bool. With guidance the rows
    are [cond rows..., uncond rows...]; what the uncond rows leave out is the sampler's `guide`
    (model/diffusion/samplers.py): "all" no prompt tokens and the null action, "actions" the same
    prompt and the null action, "text" no prompt tokens and the same actions.
    """

    text: torch.Tensor
    text_mask: torch.Tensor
    drop_actions: torch.Tensor

    @classmethod
    def build(cls, text: torch.Tensor, text_mask: torch.Tensor, guidance: bool, guide: str = "all") -> Conditioning:
        """text [B, L, D], mask [B, L] -> conditioning rows (doubled for guidance, uncond rows per `guide`)."""
        check_guide(guide)
        B = text.shape[0]
        keep = torch.zeros(B, dtype=torch.bool, device=text.device)
        mask = text_mask.bool()
        if not guidance:
            return cls(text, mask, keep)
        uncond_mask = mask if guide == "actions" else torch.zeros_like(mask)
        uncond_drop = keep if guide == "text" else ~keep
        return cls(torch.cat([text, text]), torch.cat([mask, uncond_mask]), torch.cat([keep, uncond_drop]))


@dataclass
class ChunkOutput:
    latents: torch.Tensor  # [B, F, C, h, w] the chunk's final x0
    steps: int  # denoising forwards
    nfe: int  # network evaluations per stream (cond + uncond count 2), refresh included
    timesteps: list[int]  # network times of the forwards, the K/V-writing context pass last (0 = refresh)


@dataclass
class ChunkJob:
    """One stream's next chunk: the arguments of `generate_chunk` (its docstring says what each is)."""

    cache: KVCache
    sampler: Sampler
    cond: Conditioning
    actions: torch.Tensor  # [B, F, A]
    noise: Noise
    schedule_index: int | None = None
    exit_step: int | None = None
    initial: torch.Tensor | None = None
    on_step: StepHook | None = None


# One network evaluation of one stream's chunk: (cache, x [B, F, C, h, w], level s, actions [B, F, A],
# conditioning, rows per stream = 2 with guidance).
Part = tuple[KVCache, torch.Tensor, float, torch.Tensor, Conditioning, int]


def _rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([x] * rows) if rows > 1 else x


def _network_inputs(x: torch.Tensor, s: float, actions: torch.Tensor, rows: int) -> tuple[torch.Tensor, ...]:
    """x [B, F, ...] at level s -> (x, t, actions) with `rows` copies of the batch (cond, uncond)."""
    B, Fr = x.shape[:2]
    t = torch.full((B * rows, Fr), float(network_time(s)), device=x.device, dtype=x.dtype)
    return _rows(x, rows), t, _rows(actions, rows)


def forward_parts(dit: WorldNet, parts: Sequence[Part]) -> list[torch.Tensor]:
    """Evaluate the network once on every part's chunk (each writes its own K/V slot); returns each
    part's raw output [rows * B, F, C, h, w]. Several parts run as one batched forward over a
    CacheBatch, identical per part to running it alone (model/nets/cache_batch.py)."""
    if len(parts) == 1:
        cache, x, s, actions, cond, rows = parts[0]
        return [dit(*_network_inputs(x, s, actions, rows), cond.text, cond.text_mask, cache, cond.drop_actions)]
    batch, inputs, drop = _batched(parts)
    v = dit(*inputs, None, None, batch, drop)
    return list(v.split(batch.sizes))


def write_parts(dit: WorldNet, parts: Sequence[Part]) -> None:
    """`forward_parts` for K/V-writing passes: each part's K/V and inputs land in its cache slot exactly
    as a full forward leaves them, and the network stops there (`WorldNet.forward`'s context_only)."""
    if len(parts) == 1:
        cache, x, s, actions, cond, rows = parts[0]
        dit(*_network_inputs(x, s, actions, rows), cond.text, cond.text_mask, cache, cond.drop_actions,
            context_only=True)
        return
    batch, inputs, drop = _batched(parts)
    dit(*inputs, None, None, batch, drop, context_only=True)


def _batched(parts: Sequence[Part]) -> tuple[CacheBatch, list[torch.Tensor], torch.Tensor]:
    """Several parts as one forward's inputs: the CacheBatch, (x, t, actions) concatenated, drop flags."""
    inputs = [_network_inputs(x, s, actions, rows) for _, x, s, actions, _, rows in parts]
    batch = CacheBatch([Member(cache, cond.text, cond.text_mask) for cache, _, _, _, cond, _ in parts])
    drop = torch.cat([cond.drop_actions for _, _, _, _, cond, _ in parts])
    return batch, [torch.cat(column) for column in zip(*inputs)], drop


def sampler_step(sampler: Sampler, x: torch.Tensor, x0: torch.Tensor, v: torch.Tensor, s: float, s_next: float,
                 noise: Noise) -> torch.Tensor:
    """Move from level s to s_next (0 = done): Euler on the ODE, or re-noise x0 with fresh noise."""
    if s_next == 0.0:
        return x0
    if sampler.update == "euler":
        return x + (s_next - s) * v
    return (1 - s_next) * x0 + s_next * noise(tuple(x.shape)).to(x)


class _ChunkRun:
    """One job's progress through its chunk's levels (a stream's own levels, noise and step count)."""

    def __init__(self, dit: WorldNet, job: ChunkJob):
        self.job = job
        cache = job.cache
        self.levels = job.sampler.levels(cache.chunk_index if job.schedule_index is None else job.schedule_index)
        self.run = self.levels if job.exit_step is None else self.levels[: job.exit_step + 1]
        B, Fr = job.actions.shape[:2]
        first = job.initial if job.initial is not None else job.noise((B, Fr, *dit.config.latent_shape))
        self.x = first.to(job.actions)  # [B, F, C, h, w]
        self.k = 0

    @property
    def active(self) -> bool:
        return self.k < len(self.run)

    def wants_grad(self) -> bool:
        return self.job.exit_step is None or self.k == self.job.exit_step

    def part(self) -> Part:
        job = self.job
        if job.on_step is not None:
            job.on_step(self.run[self.k], self.x)
        return (job.cache, self.x, self.run[self.k], job.actions, job.cond, job.sampler.rows)

    def advance(self, out: torch.Tensor) -> None:
        """Take the step from the network's raw output for this job's rows."""
        sampler, s = self.job.sampler, self.run[self.k]
        v = out if sampler.rows == 1 else apply_guidance(out, sampler.guidance)
        x0 = predict_x0(self.x, v, s)
        s_next = self.run[self.k + 1] if self.k + 1 < len(self.run) else 0.0
        self.x = sampler_step(sampler, self.x, x0, v, s, s_next, self.job.noise)
        self.k += 1

    def context_part(self) -> Part | None:
        """The extra K/V-writing forward, if this job needs one (`_context_pass`)."""
        job = self.job
        context = _context_pass(job.sampler, self.x.detach(), self.run[-1], job.noise)
        if context is None:
            return None
        return (job.cache, context, job.sampler.context_level, job.actions, job.cond, job.sampler.rows)

    def output(self, wrote_context: bool) -> ChunkOutput:
        sampler = self.job.sampler
        timesteps = [round(float(network_time(s))) for s in self.run]
        if wrote_context:
            timesteps.append(round(sampler.context_noise))
        return ChunkOutput(self.x, len(self.run), sampler.rows * (len(self.run) + int(wrote_context)), timesteps)


def generate_chunks(dit: WorldNet, jobs: Sequence[ChunkJob]) -> list[ChunkOutput]:
    """Several streams' next chunks with their network evaluations batched: step k runs one forward
    over every job that still has a k-th level (jobs may sit at different chunk indices of their
    schedules, so a 4-step chunk and a 2-step chunk share their first two forwards), each with its own
    cache, prompt, actions, level and noise; then one forward writes the K/V of every job that needs a
    context pass. Each job's output, cache and noise draws are identical to `generate_chunk` on it alone."""
    runs = [_ChunkRun(dit, job) for job in jobs]
    grad = torch.is_grad_enabled()
    while active := [r for r in runs if r.active]:
        with torch.set_grad_enabled(grad and any(r.wants_grad() for r in active)):
            outs = forward_parts(dit, [r.part() for r in active])
            for r, out in zip(active, outs):
                r.advance(out)
    contexts = [r.context_part() for r in runs]
    writing = [part for part in contexts if part is not None]
    if writing:
        with torch.no_grad():
            write_parts(dit, writing)
    for r in runs:
        r.job.cache.commit_chunk()
    return [r.output(part is not None) for r, part in zip(runs, contexts)]


def generate_chunk(
    dit: WorldNet,
    cache: KVCache,
    sampler: Sampler,
    cond: Conditioning,
    actions: torch.Tensor,
    noise: Noise,
    schedule_index: int | None = None,
    exit_step: int | None = None,
    initial: torch.Tensor | None = None,
    on_step: StepHook | None = None,
) -> ChunkOutput:
    """Denoise the next chunk, write its K/V and commit it. actions [B, F, A] -> latents [B, F, C, h, w].

    schedule_index picks the sampler's per-chunk levels (default: the chunk's index in the stream).
    exit_step (training rollouts): stop after that step, returning its x0 prediction; only that
    forward runs with gradient (if grad mode is on), earlier steps and context writes do not, and
    the cached context is detached (model/nets/kv_cache.py). A no-refresh sampler that exits before its
    last step re-noises the exit's x0 to the context level and writes that chunk's K/V with one
    no-grad forward, so a training rollout leaves the same context noise in the cache as inference
    (diagonal forcing, docs/design.md §3). initial [B, F, C, h, w]: the pure-noise start (default: drawn
    from `noise`). on_step(s, x): called with each forward's input x at level s (ODE trajectories).
    """
    job = ChunkJob(cache, sampler, cond, actions, noise, schedule_index, exit_step, initial, on_step)
    return generate_chunks(dit, [job])[0]


def _context_pass(sampler: Sampler, x0: torch.Tensor, last_level: float, noise: Noise) -> torch.Tensor | None:
    """Input of the extra K/V-writing forward, if one is needed: the clean chunk (refresh), or the
    chunk re-noised to the context level when its last forward ran above it (a 1-step diagonal chunk,
    or an early training exit); None when the last denoising forward already ran at the context level."""
    if sampler.refresh:
        return x0
    if not sampler.ends_above_context(last_level):
        return None
    s = sampler.context_level
    return (1 - s) * x0 + s * noise(tuple(x0.shape)).to(x0)


def write_context(dit: WorldNet, cache: KVCache, x: torch.Tensor, s: float, actions: torch.Tensor,
                  cond: Conditioning, rows: int) -> None:
    """Forward the chunk x at level s so its K/V (not its output) land in the current slot."""
    write_parts(dit, [(cache, x, s, actions, cond, rows)])


def write_clean(dit: WorldNet, cache: KVCache, x0: torch.Tensor, actions: torch.Tensor, cond: Conditioning,
                rows: int) -> None:
    """Forward the clean chunk at t = 0 so its K/V (not its output) land in the current slot."""
    write_context(dit, cache, x0, 0.0, actions, cond, rows)


class WorldStream:
    """One generated world: cache, prompt, seeded noise and the sampler, chunk after chunk.

    reset(seed, prompt, first_frame_latent=None) -> start a world (optionally from clean context)
    reset_with_context(seed, prompt, latents, actions) -> start from real frames written as context
    encode(frames [N, H, W, 3] uint8)            -> latents [N, C, h, w]
    set_prompt(prompt)                           -> new text K/V + KV-recache of the recent window
    next_chunk(actions [F, A])                   -> ChunkOutput with latents [F, C, h, w]
    decode(latents [F, C, h, w])                 -> frames [F, H, W, 3] uint8
    """

    def __init__(self, dit: WorldNet, autoencoder, text_encoder, sampler: Sampler, device: torch.device):
        self.dit, self.autoencoder, self.text_encoder = dit, autoencoder, text_encoder
        self.sampler = sampler
        self.device = torch.device(device)
        self.cache = dit.new_cache()
        self.generator = torch.Generator()
        self.cond: Conditioning | None = None
        self.prompt: str | None = None
        self.chunks_since_switch = 0

    def _noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator).to(self.device)

    def _encode_prompt(self, prompt: str) -> Conditioning:
        tokens, mask = self.text_encoder.encode([prompt])  # [1, L, D], [1, L]; PromptError if empty
        tokens, mask = torch.as_tensor(tokens).to(self.device).float(), torch.as_tensor(mask).to(self.device)
        return Conditioning.build(tokens, mask, self.sampler.guidance > 0, self.sampler.guide)

    @torch.inference_mode()
    def reset(self, seed: int, prompt: str, first_frame_latent: torch.Tensor | None = None) -> None:
        """New world. first_frame_latent [C, h, w] or [F_chunk, C, h, w]: written as clean chunk 0
        (a frame repeated over the chunk); without it chunk 0 is generated from the prompt alone."""
        cond = self._encode_prompt(prompt)
        self.generator.manual_seed(int(seed))
        self.cache.reset()
        self.cond, self.prompt, self.chunks_since_switch = cond, prompt, 0
        if first_frame_latent is not None:
            with autocast(self.device):
                self._commit_clean_chunk(first_frame_latent)

    @torch.inference_mode()
    def reset_with_context(self, seed: int, prompt: str, latents: torch.Tensor,
                           actions: torch.Tensor | np.ndarray) -> None:
        """New world started from real frames: latents [K, C, h, w] (K a whole number of chunks),
        actions [K, A] (actions[i] produced frame i). Each chunk is written as context exactly as
        the sampler's own chunks are: clean for the refresh samplers, re-noised to the context
        level for the diagonal one; the first chunk becomes the attention sink. Generation then
        continues from chunk K / chunk_frames."""
        C = self.dit.config.chunk_frames
        latents = torch.as_tensor(latents).to(self.device).float()
        actions = torch.as_tensor(np.asarray(actions, dtype=np.float32)).to(self.device)
        K = latents.shape[0]
        if K == 0 or K % C or tuple(latents.shape[1:]) != self.dit.config.latent_shape:
            raise ValueError(f"context latents must be [K, {', '.join(map(str, self.dit.config.latent_shape))}] "
                             f"with K a positive multiple of {C}, got {tuple(latents.shape)}")
        if tuple(actions.shape) != (K, self.dit.config.action_dim):
            raise ValueError(f"context actions must be [{K}, {self.dit.config.action_dim}], got {tuple(actions.shape)}")
        self.reset(seed, prompt)
        s = 0.0 if self.sampler.refresh else self.sampler.context_level
        with autocast(self.device):
            for i in range(0, K, C):
                x = latents[None, i : i + C]
                if s > 0:
                    x = (1 - s) * x + s * self._noise(tuple(x.shape)).to(x)
                write_context(self.dit, self.cache, x, s, actions[None, i : i + C], self.cond, self.sampler.rows)
                self.cache.commit_chunk()

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """frames [N, H, W, 3] uint8 -> latents [N, C, h, w] on the stream's device."""
        from model.common.images import frames_to_tensor

        return self.autoencoder.encode(frames_to_tensor(frames).to(self.device)).float()

    def _commit_clean_chunk(self, latent: torch.Tensor) -> None:
        C = self.dit.config.chunk_frames
        latent = latent.to(self.device).float()
        if latent.dim() == 3:
            latent = latent.expand(C, *latent.shape)
        if tuple(latent.shape) != (C, *self.dit.config.latent_shape):
            raise ValueError(f"first_frame_latent must be [C, h, w] or [{C}, C, h, w], got {tuple(latent.shape)}")
        idle = torch.zeros(1, C, self.dit.config.action_dim, device=self.device)
        write_clean(self.dit, self.cache, latent[None], idle, self.cond, self.sampler.rows)
        self.cache.commit_chunk()

    @torch.inference_mode()
    def set_prompt(self, prompt: str) -> int:
        """Switch prompts mid-stream: drop the text K/V and re-run the recent window with the new
        prompt (LongLive KV-recache; sink K/V kept). Returns the number of chunks re-run."""
        self.cond, self.prompt = self._encode_prompt(prompt), prompt
        self.cache.reset_text()
        if self.sampler.rewarm:
            self.chunks_since_switch = 0
        cond = self.cond

        def replay(inputs: ChunkInputs) -> None:
            self.dit(inputs.x, inputs.t, inputs.actions, cond.text, cond.text_mask, self.cache, cond.drop_actions,
                     prev=inputs.prev)

        with autocast(self.device):
            return self.cache.recache(replay)

    def _job(self, actions: torch.Tensor | np.ndarray) -> ChunkJob:
        """The next chunk's job; actions [F, A] (F = chunk frames), checked here."""
        if self.cond is None:
            raise RuntimeError("WorldStream.next_chunk before reset")
        actions = torch.as_tensor(np.asarray(actions, dtype=np.float32)).to(self.device)
        expected = (self.dit.config.chunk_frames, self.dit.config.action_dim)
        if tuple(actions.shape) != expected:
            raise ValueError(f"actions must be {list(expected)}, got {list(actions.shape)}")
        index = self.chunks_since_switch if self.sampler.rewarm else None
        return ChunkJob(self.cache, self.sampler, self.cond, actions[None], self._noise, index)

    def next_chunk(self, actions: torch.Tensor | np.ndarray) -> ChunkOutput:
        """actions [F, A] (F = chunk frames) -> ChunkOutput with latents [F, C, h, w]."""
        return next_chunks([self], [actions])[0]

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """latents [F, C, h, w] -> frames [F, H, W, 3] uint8."""
        from model.common.images import tensor_to_frames

        return tensor_to_frames(self.autoencoder.decode(latents.float()))


def batch_key(stream: WorldStream) -> tuple:
    """Streams with equal keys may share batched chunks: the same network (one loaded copy), device
    and sampler (a sampler with other step counts would make the others wait for its longer chunks;
    the whole sampler is the key, so its guidance and guide too, though each job's rows are its own)."""
    return (id(stream.dit), str(stream.device), stream.sampler)


@torch.inference_mode()
def next_chunks(streams: Sequence[WorldStream], actions: Sequence[torch.Tensor | np.ndarray]) -> list[ChunkOutput]:
    """Several streams' next chunks, their forwards batched (`generate_chunks`): actions[i] [F, A] for
    streams[i]; each output (latents [F, C, h, w]) is identical to streams[i].next_chunk(actions[i]).
    The streams must share one network and device; a bad input raises before anything runs."""
    first = streams[0]
    if any(s.dit is not first.dit or s.device != first.device for s in streams):
        raise ValueError("batched streams must share one network on one device")
    jobs = [stream._job(a) for stream, a in zip(streams, actions, strict=True)]
    with autocast(first.device):  # bf16 on CUDA, plain fp32 on CPU
        outs = generate_chunks(first.dit, jobs)
    for stream, out in zip(streams, outs):
        stream.chunks_since_switch += 1
        out.latents = out.latents[0].float()
    return outs
