"""Student initialisation data: many-step teacher trajectories, generated once and cached (CausVid).

A pair is one teacher rollout from scratch, chunk by chunk with the KV cache, exactly as a stream
runs (the teacher sampler: Euler, guidance, clean refresh context), under a clip's actions from
the latent cache: as recorded (changing) or one of its actions held for the whole clip. The
teacher's Euler grid is its usual `teacher_steps` levels plus the student's diagonal grid, so the
ODE state entering each student level is recorded exactly, not interpolated.

Directory layout (every file written to a temporary name and renamed):

    meta.json                 OdePairsConfig, the student grid, shift, teacher identity, shard count
    text.safetensors          "tokens" [P, L, 384] fp16, "mask" [P, L]: the latent cache's prompts
    pairs_XXXX.safetensors    one batched rollout of `shard` pairs:
                              "states" [b, K, F, C, h, w] fp16: ODE state entering grid level k
                                       (k = 0 is the pure noise each chunk starts from)
                              "x0" [b, F, C, h, w] fp16: the teacher's output
                              "actions" [b, F, A] float32, "prompt_ids" [b] int64, "held" [b] bool

Shard i depends only on (seed, i), so a killed or time-limited run resumes per shard.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.utils.data import Dataset

from model.common.configs import option
from model.common.device import autocast
from model.common.runlog import progress
from model.common.tensor_files import atomic_save_safetensors, atomic_write_json
from model.diffusion.flow import level_grid
from model.diffusion.samplers import TEACHER_GUIDANCE, TEACHER_STEPS, Sampler
from model.runtime.stream import Conditioning, generate_chunk

META_FILE = "meta.json"
TEXT_FILE = "text.safetensors"
SHARD_PATTERN = "pairs_{:04d}.safetensors"
FORMAT = "gworld-ode-pairs"
VERSION = 1


class OdePairsError(RuntimeError):
    """ODE pairs that are missing, damaged or were made for another teacher/grid."""


@dataclass
class OdePairsConfig:
    pairs: int = option(256, help="init: teacher rollouts to cache (rounded up to whole shards)")
    clip_chunks: int = option(3, help="init: chunks per pair rollout (the dmd stage rolls out as many as its "
                              "pairs have)")
    shard: int = option(8, flag="pair-shard", help="init: rollouts per batched teacher run (and per file)")
    teacher_steps: int = option(TEACHER_STEPS, help="init: teacher Euler steps (plus the student grid)")
    guidance: float = option(TEACHER_GUIDANCE, flag="teacher-guidance", help="init: teacher guidance")
    held_fraction: float = option(0.5, help="init: share of rollouts holding one action throughout")
    seed: int = 0  # the run's --seed

    def __post_init__(self) -> None:
        if min(self.pairs, self.clip_chunks, self.shard, self.teacher_steps) < 1:
            raise ValueError("pairs, clip_chunks, shard and teacher_steps must be >= 1")
        if not 0 <= self.held_fraction <= 1:
            raise ValueError(f"held_fraction must be in [0, 1], got {self.held_fraction}")

    @property
    def shards(self) -> int:
        return -(-self.pairs // self.shard)


@dataclass
class PairBatch:
    states: torch.Tensor  # [B, K, F, C, h, w]
    x0: torch.Tensor  # [B, F, C, h, w] teacher output
    actions: torch.Tensor  # [B, F, A]
    text: torch.Tensor  # [B, L, text_dim]
    text_mask: torch.Tensor  # [B, L] bool

    @property
    def noise(self) -> torch.Tensor:
        """[B, F, C, h, w]: the pure noise each chunk started from (grid level 0)."""
        return self.states[:, 0]

    def leading(self, frames: int) -> PairBatch:
        """The first `frames` frames of every rollout (whole chunks): a shorter rollout of the same pairs.
        The teacher's rollout is causal, so its first chunks are the pair of that shorter rollout."""
        if not 0 < frames <= self.x0.shape[1]:
            raise ValueError(f"pairs hold {self.x0.shape[1]} frames, asked for the first {frames}")
        return PairBatch(self.states[:, :, :frames], self.x0[:, :frames], self.actions[:, :frames], self.text,
                         self.text_mask)


# ----------------------------------------------------------------------------- the teacher's ODE


def teacher_ode_sampler(grid: tuple[float, ...], steps: int, shift: float, guidance: float) -> Sampler:
    """Teacher sampler whose Euler levels include every student grid level exactly."""
    extra = [s for s in level_grid(steps, shift) if all(abs(s - g) > 1e-6 for g in grid)]
    levels = tuple(sorted({*grid, *extra}, reverse=True))
    return Sampler("teacher", (levels,), "euler", refresh=True, guidance=guidance)


@torch.no_grad()
def teacher_trajectories(teacher, sampler: Sampler, grid: tuple[float, ...], noise: torch.Tensor,
                         actions: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll the teacher out from `noise` [B, F, C, h, w]; returns (states [B, K, F, ...], x0 [B, F, ...])."""
    C = teacher.config.chunk_frames
    B, Fr = noise.shape[:2]
    cache = teacher.new_cache()
    cond = Conditioning.build(text, text_mask, sampler.guidance > 0, sampler.guide)
    states = noise.new_zeros(B, len(grid), Fr, *noise.shape[2:])
    where = {round(g, 9): k for k, g in enumerate(grid)}
    outs = []
    for i in range(Fr // C):
        f = slice(i * C, (i + 1) * C)

        def record(s: float, x: torch.Tensor, f: slice = f) -> None:
            k = where.get(round(s, 9))
            if k is not None:
                states[:, k, f] = x.float()

        out = generate_chunk(teacher, cache, sampler, cond, actions[:, f], _no_noise, initial=noise[:, f],
                             on_step=record)
        outs.append(out.latents.float())
    return states, torch.cat(outs, 1)


def _no_noise(shape: tuple[int, ...]) -> torch.Tensor:
    raise AssertionError("the Euler teacher draws no noise after its initial state")


# ----------------------------------------------------------------------------- which rollouts


def shard_spec(clips: Dataset, index: int, cfg: OdePairsConfig, latent_shape: tuple[int, ...]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shard `index`: (actions [b, F, A], prompt_ids [b], held [b] bool, noise [b, F, C, h, w]).

    Clips follow one seeded permutation; a `held_fraction` of rows hold one random frame's action
    for the whole clip. Clips crossing a prompt switch take their last frame's prompt (as teacher
    training does).
    """
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index)
    order = torch.randperm(len(clips), generator=torch.Generator().manual_seed(cfg.seed))
    rows = [int(order[(index * cfg.shard + r) % len(clips)]) for r in range(cfg.shard)]
    items = [clips[r] for r in rows]
    actions = torch.stack([torch.as_tensor(it["actions"]).float() for it in items])  # [b, F, A]
    prompt_ids = torch.stack([torch.as_tensor(it["prompt_ids"])[-1] for it in items]).long()
    b, Fr = actions.shape[:2]
    held = torch.rand(b, generator=gen) < cfg.held_fraction
    frame = torch.randint(Fr, (b,), generator=gen)
    hold = actions[torch.arange(b), frame][:, None].expand(b, Fr, -1)
    actions = torch.where(held[:, None, None], hold, actions)
    noise = torch.randn(b, Fr, *latent_shape, generator=gen)
    return actions, prompt_ids, held, noise


# ----------------------------------------------------------------------------- building the cache


def _write_meta(out: Path, meta: dict) -> None:
    atomic_write_json(out / META_FILE, meta)


def pairs_meta(cfg: OdePairsConfig, grid: tuple[float, ...], shift: float, teacher: dict) -> dict:
    """What the pairs depend on; a resumed build must match it exactly."""
    return {"format": FORMAT, "version": VERSION, "config": asdict(cfg), "grid": list(grid), "shift": shift,
            "teacher": teacher}


def _check_meta(out: Path, meta: dict) -> None:
    path = out / META_FILE
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise OdePairsError(f"{path}: unreadable ({e})") from None
    different = sorted(k for k in meta if old.get(k) != meta[k])
    if different:
        raise OdePairsError(f"{path}: these ODE pairs were made with other {different} "
                            f"({[old.get(k) for k in different]} vs {[meta[k] for k in different]}); "
                            f"delete {out} or choose another --out")


def pairs_complete(out: str | os.PathLike, meta: dict) -> bool:
    """Whether `out` holds a complete set of pairs made exactly as `meta` says."""
    try:
        old = json.loads((Path(out) / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return bool(old.get("complete")) and all(old.get(k) == v for k, v in meta.items())


def _shard_intact(path: Path, rows: int) -> bool:
    try:
        data = load_file(str(path))
    except (FileNotFoundError, SafetensorError, OSError):
        return False
    return {len(v) for v in data.values()} == {rows}


def build_ode_pairs(teacher, clips: Dataset, tokens: torch.Tensor, mask: torch.Tensor, out: str | os.PathLike,
                    cfg: OdePairsConfig, grid: tuple[float, ...], shift: float, teacher_id: dict,
                    device: torch.device, deadline: float | None = None) -> bool:
    """Generate the missing shards into `out`; returns True when every shard is there.

    teacher: the frozen teacher DiT; clips: LatentClips-like items of clip_chunks chunks; tokens
    [P, L, D] / mask [P, L]: prompt table. Stops (returning False) at `deadline` (time.monotonic()).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = pairs_meta(cfg, grid, shift, teacher_id)
    _check_meta(out, meta)
    _write_meta(out, {**meta, "complete": False})
    if not (out / TEXT_FILE).exists():
        atomic_save_safetensors(out / TEXT_FILE, {"tokens": tokens.half(), "mask": mask.bool()})
    sampler = teacher_ode_sampler(grid, cfg.teacher_steps, shift, cfg.guidance)
    bar = progress(cfg.shards, desc="ode pairs", unit="shard")
    try:
        for index in range(cfg.shards):
            path = out / SHARD_PATTERN.format(index)
            if not _shard_intact(path, cfg.shard):
                if deadline is not None and time.monotonic() > deadline:
                    return False
                _build_shard(teacher, sampler, clips, tokens, mask, cfg, grid, index, device, path)
            bar.update(1)
    finally:
        bar.close()
    _write_meta(out, {**meta, "complete": True})
    return True


def _build_shard(teacher, sampler: Sampler, clips: Dataset, tokens: torch.Tensor, mask: torch.Tensor,
                 cfg: OdePairsConfig, grid: tuple[float, ...], index: int, device: torch.device, path: Path) -> None:
    actions, prompt_ids, held, noise = shard_spec(clips, index, cfg, teacher.config.latent_shape)
    with autocast(device):
        states, x0 = teacher_trajectories(teacher, sampler, grid, noise.to(device), actions.to(device),
                                          tokens[prompt_ids].float().to(device), mask[prompt_ids].to(device))
    atomic_save_safetensors(path, {"states": states.cpu().half(), "x0": x0.cpu().half(), "actions": actions,
                        "prompt_ids": prompt_ids, "held": held})


# ----------------------------------------------------------------------------- reading


class OdePairs:
    """Every shard of a complete pairs directory, in RAM (fp16); batches are a function of the step."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        path = self.directory / META_FILE
        try:
            self.meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise OdePairsError(f"{path}: missing; generate the pairs with `train student --stage init`") from None
        except (OSError, json.JSONDecodeError) as e:
            raise OdePairsError(f"{path}: unreadable ({e})") from None
        if self.meta.get("format") != FORMAT or not self.meta.get("complete"):
            raise OdePairsError(f"{path}: not a complete {FORMAT} directory; rerun `train student --stage init`")
        self.grid = tuple(self.meta["grid"])
        self.config = OdePairsConfig(**self.meta["config"])
        shards = [self._load(i) for i in range(self.config.shards)]
        cat = {k: torch.cat([s[k] for s in shards]) for k in shards[0]}
        self.states, self.x0, self.actions = cat["states"], cat["x0"], cat["actions"]
        self.prompt_ids, self.held = cat["prompt_ids"], cat["held"]
        text = load_file(str(self.directory / TEXT_FILE))
        self.tokens, self.mask = text["tokens"].float(), text["mask"].bool()

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        path = self.directory / SHARD_PATTERN.format(index)
        try:
            return load_file(str(path))
        except (FileNotFoundError, SafetensorError, OSError) as e:
            raise OdePairsError(f"{path}: missing or damaged ({e}); rerun `train student --stage init`") from None

    def __len__(self) -> int:
        return len(self.x0)

    def indices(self, step: int, batch: int, seed: int) -> torch.Tensor:
        """Rows of step `step`: epoch e = step // per_epoch walks a permutation seeded by (seed, e)."""
        per_epoch = max(1, len(self) // batch)
        epoch, index = divmod(step, per_epoch)
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        return order[(torch.arange(batch) + index * batch) % len(self)]

    def batch(self, step: int, batch: int, seed: int, device: torch.device) -> PairBatch:
        rows = self.indices(step, batch, seed)
        ids = self.prompt_ids[rows]
        return PairBatch(self.states[rows].float().to(device), self.x0[rows].float().to(device),
                         self.actions[rows].float().to(device), self.tokens[ids].to(device),
                         self.mask[ids].to(device))
