"""Train the teacher: a world network (model/nets/families.py) with diffusion forcing on cached latent clips.

    python run_world.py train teacher --latents CACHE --out RUN [--autoencoder AE] [--recipe unet-teacher]
        [--preset default] [--steps N] [--batch 8] [--clip-chunks 3] [--lr] [--device auto] [--resume]
        [--ckpt-every N] [--teacher-forcing-prob P]

`--recipe NAME` starts from a named recipe (model/training/recipes.py: the options a release was
trained with); every option given on the command line still wins over it.
    torchrun --nproc_per_node=2 run_world.py train teacher ...          (DDP: gloo on CPU, nccl on CUDA)

Writes into RUN: `checkpoint/` (a kind="world" checkpoint: pass RUN or RUN/checkpoint to the
generated backend) and `teacher.csv` / `teacher.png`. Ctrl-C saves a checkpoint before exiting.

Objective (docs/design.md §3, "Teacher: causal diffusion forcing / teacher forcing with independent
noise per chunk"): each chunk of a clip gets its own noise level (model/diffusion/flow.py), the network
predicts v = eps - x0 for every frame under the block-causal sink/window attention it uses when
streaming. With probability --teacher-forcing-prob a clip's first k chunks (k random) are clean
(t = 0) and carry no loss: that is exactly the context the teacher sampler's refresh pass writes.
The prompt and the actions are dropped per clip for classifier-free guidance. --first-frame-weight W
weighs the first frame of every chunk with loss W against 1 for the others, in a weighted mean.
--prompt-paraphrases K, --word-dropout P: a clip reads its prompt or one of K variants (prompt_variants.py).

Every save is a playable kind="world" checkpoint (model/runtime/world_model.py) whose "dit" is the EMA
weights; "dit_online" plus the optimiser state make resuming exact. All randomness of step s
comes from a generator seeded by (seed, s, rank) and the data order from the step number, so a
resumed run continues the same sequence of batches and noise. Only rank 0 writes.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from model.common.checkpoint import (
    CheckpointError,
    has_train_state,
    module_sha256,
    read_checkpoint_config,
)
from model.common.configs import ConfigError, add_options, given_options, option, replace_config
from model.common.device import PRECISIONS, resolve_device, training_precision
from model.common.runlog import RunLog
from model.diffusion.flow import (
    FlowConfig,
    add_noise,
    flow_loss,
    level_grid,
    network_time,
    predict_x0,
    sample_levels,
    velocity_target,
)
from model.diffusion.guidance import apply_guidance, apply_projected_guidance
from model.nets import count_parameters
from model.nets.families import PRESETS, build_net, net_config, net_config_from_dict
from model.nets.world_net import NetConfig, WorldNet, stacked_previous
from model.runtime.stream import Conditioning
from model.runtime.world_model import KIND, WorldConfig, save_world
from model.training.loop import (
    Budget,
    LoopConfig,
    TrainLoop,
    autocast_for,
    optimizer_step,
    resume_step,
    set_learning_rate,
    step_generator,
    update_ema,
)
from model.training.own_rollout import own_context
from model.training.prompt_variants import build_variants
from model.training.prompt_variants import check_options as check_prompt_options
from model.training.recipes import TEACHER_RECIPES, teacher_recipe

COPY_CONTEXTS = ("input", "clean")
GUIDANCE_TARGETS = ("reference", "data")
# TeacherTrainConfig fields that are the fresh network's switches (fresh_dit_config).
NETWORK_SWITCHES = ("copy_path", "action_tokens", "text_film", "coord_planes", "flow_warp")


@dataclass
class TeacherTrainConfig:
    """The run's settings; a field with help is also a `train teacher` option (model/common/configs.py)."""

    preset: str = option("default", help="network preset of a fresh run (model/nets/families.py)",
                         choices=sorted(PRESETS))
    steps: int = option(4000, help="total optimiser steps")
    batch: int = option(8, help="global batch of clips (split across DDP processes)")
    clip_chunks: int = option(3, help="chunks per clip")
    lr: float = option(3e-4, help="AdamW learning rate")
    warmup: int = 200  # linear warm-up steps, then constant (no end date: runs continue across days)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    teacher_forcing_prob: float = option(0.5, help="fraction of clips with a clean context prefix")
    # Context-noise augmentation (GameNGen): the clean prefix of a teacher-forced clip is noised to a
    # level drawn uniformly in [0, context_noise_max] per clip, the level given to the network as its
    # time; 0 keeps the prefix clean. Must cover the diagonal sampler's context level (t = 100: 0.1).
    context_noise_max: float = option(0.0, help="noise the teacher-forced prefix to a level in [0, this] per clip "
                                      "(GameNGen context-noise augmentation; 0: clean prefix)")
    # The fresh network's switches; None (not given): the preset's value, so `--preset unet` alone is
    # the shipped network. --no-copy-path etc. turn a preset's switch off.
    copy_path: bool | None = option(None, help="fresh model: the previous frames as extra input (NetConfig.copy_path; "
                                    "default: the preset's)")
    action_tokens: bool | None = option(None, help="fresh model: action embedding added to the frame's tokens as well "
                                        "as to adaLN (NetConfig.action_tokens; default: the preset's)")
    text_film: bool | None = option(None, help="fresh model: the pooled prompt also conditions the conv blocks' "
                                    "adaptive group norms (UNetConfig.text_film; U-Net presets; default: the preset's)")
    coord_planes: bool | None = option(None, help="fresh model: x/y coordinate planes join every conv block's first "
                                       "convolution (UNetConfig.coord_planes; U-Net presets; zero-initialised, so "
                                       "--init-from starts where the checkpoint was; default: the preset's)")
    flow_warp: bool | None = option(None, help="fresh model: the most recent previous frame, resampled along a flow "
                                    "field predicted from the previous frames and the actions, joins the input "
                                    "(UNetConfig.flow_warp; U-Net presets with the copy path; zero-initialised, so "
                                    "--init-from starts where the checkpoint was; default: the preset's)")
    # A zero-initialised warp path is read by nothing at first, so its flow head gets no gradient until
    # warp_in has grown from zero (a second-order start: 432 steps left it unused). At flow 0 the warped
    # frame IS the most recent previous frame, so moving conv_in's weights for that frame onto warp_in
    # keeps the function and gives the flow head a first-order gradient from the first step.
    flow_warp_transfer: bool = option(False, help="--init-from with --flow-warp: move the input convolution's "
                                      "weights for the most recent previous frame onto the warped frame's (the "
                                      "same function at flow 0, and the flow head learns from the first step)")
    # The first frame of a chunk is one frame's motion away from the context the copy path reads: its
    # target is the most exactly determined by the actions, and the one whose motion is smallest, so
    # an unweighted mean lets the larger errors of the later frames drown it (docs/world-model.md).
    first_frame_weight: float = option(1.0, help="loss weight of the first frame of every chunk that carries loss "
                                       "(the other frames 1; a weighted mean, so 1 is the plain loss)")
    # Clips that cross a prompt switch are 1% of the data, and their loss chunks mostly lie on one
    # side of it. Oversampled, with the chunks before the switch as the clean context, they train the
    # situation a switch creates when streaming: the old picture in the context, the new prompt.
    switch_share: float = option(0.0, help="fraction of each batch drawn from clips that cross a prompt switch, "
                                 "the chunks before the switch their clean context")
    # What the copy path (the stacked previous frames of the conv presets) reads in training. "input":
    # the previous chunk as this clip holds it, noised to that chunk's own level unless it is in the
    # teacher-forced prefix. "clean": for every chunk, the clip's clean frames at the clip's context
    # level, which is what the refresh pass stores and the copy path reads when streaming; so every
    # chunk that carries loss learns its motion from a clean predecessor (a one-step world model's
    # setting), while attention still sees diffusion forcing's noisy chunks.
    copy_context: str = option("input", choices=COPY_CONTEXTS,
                               help="copy path in training: 'input' (the noisy previous chunk) or 'clean' (the "
                               "clean previous frames at the context level, as streaming stores them)")
    # The network answers the keys with the right sign but too weakly: its futures under 5 held keys
    # spread about a fifth as far apart as the engine's, while c + 2 (c - u_a) (guidance on the
    # actions alone) spreads them as far as the engine does (docs/world-model.md). Guidance
    # distillation (Meng et al. 2023) trains the network to produce that guided velocity itself,
    # so the world answers at full strength at one network evaluation per step and no guidance.
    action_guidance: float = option(0.0, help="distil action guidance: the target is the reference network's "
                                    "c + g (c - u_a) (u_a: the null action, same prompt) instead of the data's "
                                    "velocity; rows whose actions are dropped learn u_a (0: learn from data)")
    guidance_reference: str = option("", help="with --action-guidance: the world checkpoint whose guided velocity "
                                     "is the target (default: --init-from)")
    # The reference's guided velocity as the whole target teaches nothing the reference does not
    # draw (its walking included). "data": the data's velocity plus the reference's guidance term
    # g (c - u_a), so the keys still answer at full strength while the velocity is learnt from data
    # (model guidance, Tang et al. 2025, with a frozen reference's guidance term).
    guidance_target: str = option("reference", choices=GUIDANCE_TARGETS,
                                  help="with --action-guidance: 'reference' (its guided velocity c + g (c - u_a)) or "
                                  "'data' (the data's velocity + g (c - u_a); action-dropped rows learn the data's)")
    # The teacher reads prompts weakly (a text start shows the prompt's theme 0.2 of the time against
    # the engine's 0.92, docs/teacher-own-rollouts.md); guidance on the prompt, distilled like the
    # actions', makes the prompt's effect on the velocity larger at one network evaluation a step.
    text_guidance: float = option(0.0, help="distil prompt guidance as well: the target gains g_t (c - u_t), u_t the "
                                  "reference with no prompt tokens and the same actions (needs --guidance-reference "
                                  "or --init-from; 0: none)")
    # Held keys saturate the distilled teacher into blobs (docs/world-model.md). The guidance's part
    # along the conditional prediction only scales the picture's values up; dropping it (APG,
    # model/diffusion/guidance.py) keeps the part that moves the picture.
    guidance_parallel: float = option(1.0, help="with --action-guidance: weight of the guidance's part along the "
                                      "conditional x0 prediction (1: plain guidance; 0: adaptive projected "
                                      "guidance, that part dropped)")
    # Exposure bias (model/training/own_rollout.py): streaming, the network reads its own pictures;
    # trained only on data context it never learnt to continue from them, and they fade or saturate.
    own_rollout_share: float = option(0.0, help="fraction of clips whose chunks 1..n-2 are the network's own "
                                      "rollout (no gradient) and only the last chunk carries loss (0: off)")
    own_rollout_steps: int = option(8, help="Euler steps of each own-rollout chunk (the release's sampler)")
    # The cache holds one phrasing per prompt, and the teacher reads prompts poorly, phrasings it never
    # saw not at all: each clip may read one of K variants of its prompt instead, the theme composed anew
    # from the training synonyms (model/training/prompt_variants.py; the held-out half never enters).
    prompt_paraphrases: int = option(0, help="variants of each cached prompt, drawn once at the start: the theme "
                                     "re-composed from the training synonyms; each clip reads its prompt or one "
                                     "of them (0: the cached prompts only)")
    # Without a word, a prompt must be read from the words left: no single word can carry it alone.
    word_dropout: float = option(0.0, help="with --prompt-paraphrases: each variant drops each word with this "
                                 "probability (never all of them; 0: none)")
    precision: str = option("auto", choices=PRECISIONS,
                            help="auto: bf16 autocast on CUDA and on CPUs with AMX/AVX512-BF16, else fp32")
    init_from: str = option("", help="fresh run only: world checkpoint whose matching DiT weights seed the model")
    # A network for another autoencoder (more latent channels) differs from the checkpoint only in the
    # layers that read and write latents; "fresh" starts those from scratch and copies the rest.
    init_mismatched: str = option("refuse", choices=("refuse", "fresh"),
                                  help="--init-from weights of another shape (another latent width): refuse, or "
                                  "leave those layers fresh and copy the rest")
    shift: float = option(3.0, help="flow shift k")
    # How training levels are drawn before the shift (model/diffusion/flow.py). Logit-normal trains
    # mostly mid levels, where the noisy frame already shows which way the view moved; the keys
    # decide the picture only near pure noise, which "uniform" (and a larger shift) trains more.
    level_sampling: str = option("logit_normal", choices=("logit_normal", "uniform"),
                                 help="training noise levels before the shift: logit_normal (SD3) or uniform")
    seed: int = option(0, help="seed of the initial weights, data order and noise")
    max_minutes: float = option(0.0, help="stop and save after this much wall time (0: run to --steps; "
                                "equal-time ablations)")
    ckpt_every: int = option(250, help="steps between checkpoints")
    log_every: int = option(10, help="steps between metric rows")
    text_encoder: str = "minilm"  # the encoder that made the cache's prompt tokens (from cache.json)


@dataclass
class Batch:
    latents: torch.Tensor  # [B, F, C, h, w] clean latents
    actions: torch.Tensor  # [B, F, A]
    text: torch.Tensor  # [B, L, text_dim]
    text_mask: torch.Tensor  # [B, L] bool
    context_chunks: torch.Tensor | None = None  # [B] chunks before a prompt switch (the clip's context); -1: none


# ----------------------------------------------------------------------------- data


class ClipBatches:
    """Step -> batch, deterministic: epoch e = step // per_epoch is a DistributedSampler permutation;
    with switch_share > 0, each slot is drawn from the clips that cross a prompt switch with that
    probability, and with `variants` ([P, K + 1] rows of the text table per prompt id) each clip reads
    one of its prompt's K + 1 phrasings (draws seeded by seed, step and rank)."""

    def __init__(self, dataset: Dataset, text_tokens: torch.Tensor, text_mask: torch.Tensor, batch: int,
                 rank: int, world_size: int, seed: int, switch_share: float = 0.0,
                 variants: torch.Tensor | None = None):
        if batch % world_size:
            raise ValueError(f"--batch {batch} does not split over {world_size} processes")
        self.dataset, self.text_tokens, self.text_mask = dataset, text_tokens, text_mask.bool()
        self.variants = variants
        self.batch = batch // world_size
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                          drop_last=True)
        self.per_epoch = len(self.sampler) // self.batch
        if self.per_epoch == 0:
            raise ValueError(f"{len(dataset)} clips are too few for a batch of {batch} over {world_size} processes")
        self._epoch, self._order = -1, []
        if not 0.0 <= switch_share <= 1.0:
            raise ValueError(f"switch_share must be in [0, 1], got {switch_share}")
        self.switch_share, self.rank, self.seed = switch_share, rank, seed
        self.switch_clips, self.switch_chunks = switch_clips(dataset) if switch_share else ([], [])
        if switch_share and not self.switch_clips:
            raise ValueError("switch_share > 0, but no clip of the data crosses a prompt switch with a chunk on "
                             "each side (datagen without --no-prompt-switch makes them)")

    def __call__(self, step: int, device: torch.device) -> Batch:
        epoch, index = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._epoch, self._order = epoch, list(self.sampler)
        rows = self._order[index * self.batch : (index + 1) * self.batch]
        context = [-1] * len(rows)
        gen = torch.Generator().manual_seed((self.seed << 40) ^ (step << 8) ^ self.rank)
        if self.switch_share:
            use = torch.rand(len(rows), generator=gen) < self.switch_share
            picks = torch.randint(len(self.switch_clips), (len(rows),), generator=gen)
            for j in torch.nonzero(use).flatten().tolist():
                rows[j], context[j] = self.switch_clips[picks[j]], self.switch_chunks[picks[j]]
        items = [self.dataset[i] for i in rows]
        # Clips that cross a prompt switch take the prompt of their last frame: after a switch the
        # stream re-runs its whole window with the new prompt (KV-recache), which is this situation.
        ids = torch.stack([torch.as_tensor(it["prompt_ids"])[-1] for it in items])
        if self.variants is not None:  # after the switch draws, so those stay what they were without variants
            ids = self.variants[ids, torch.randint(self.variants.shape[1], (len(ids),), generator=gen)]
        return Batch(
            torch.stack([torch.as_tensor(it["latents"]) for it in items]).float().to(device),
            torch.stack([torch.as_tensor(it["actions"]) for it in items]).float().to(device),
            self.text_tokens[ids].float().to(device),
            self.text_mask[ids].to(device),
            torch.tensor(context),
        )


def switch_clips(dataset: Dataset) -> tuple[list[int], list[int]]:
    """The clips whose prompt changes inside them, with a whole chunk before the change and the
    change's chunk inside: (indices, chunks before the change). The clip's prompt is its last frame's;
    the chunks before the frame where that prompt begins are the context."""
    if hasattr(dataset, "starts"):  # LatentClips: from its tables at once
        starts = torch.as_tensor(dataset.starts)
        ids = torch.as_tensor(dataset.prompt_ids)[starts[:, None] + torch.arange(dataset.clip_frames)]  # [N, T]
    else:
        ids = torch.stack([torch.as_tensor(dataset[i]["prompt_ids"]) for i in range(len(dataset))])
    C, T = dataset.chunk_frames, ids.shape[1]
    # The frame where the last prompt begins: after the last frame that differs (T when none does).
    begins = T - (ids != ids[:, -1:]).int().flip(1).argmax(1)
    chunks = begins // C
    keep = (chunks >= 1) & (chunks < T // C)
    return torch.nonzero(keep).flatten().tolist(), chunks[keep].tolist()


# ----------------------------------------------------------------------------- objective


def teacher_loss(model: torch.nn.Module, batch: Batch, dit_cfg: NetConfig, cfg: TeacherTrainConfig,
                 gen: torch.Generator, reference: torch.nn.Module | None = None) -> torch.Tensor:
    """Diffusion-forcing flow loss on one batch; every random draw comes from `gen` (CPU). With a
    `reference` (cfg.action_guidance > 0) the target is its action-guided velocity, not the data's."""
    x0 = batch.latents
    B, Fr = x0.shape[:2]
    C = dit_cfg.chunk_frames
    n_chunks = Fr // C
    s = sample_levels(B, n_chunks, C, FlowConfig(shift=cfg.shift, level_sampling=cfg.level_sampling), gen)  # [B, F]
    weight = torch.ones(B, Fr)
    prefix = teacher_forcing_prefix(B, n_chunks, cfg.teacher_forcing_prob, gen)
    if batch.context_chunks is not None:  # clips across a prompt switch: the chunks before it are the context
        k = batch.context_chunks[:, None]
        prefix = torch.where(k >= 0, torch.arange(n_chunks)[None] < k, prefix)
    own = own_rollout_rows(B, cfg.own_rollout_share, batch.context_chunks, gen)  # [B] bool
    if own.any():  # the whole clip but its last chunk is context: data chunk 0, then the own rollout
        prefix = torch.where(own[:, None], torch.arange(n_chunks)[None] < n_chunks - 1, prefix)
    prefix = prefix.repeat_interleave(C, 1)
    s_ctx = context_levels(B, cfg.context_noise_max, gen)[:, None].expand(B, Fr)
    s, weight = torch.where(prefix, s_ctx, s), weight.masked_fill(prefix, 0.0) * chunk_frame_weights(Fr, C, cfg)
    eps = torch.randn(x0.shape, generator=gen)
    x_in = x0  # what the network reads; own-rollout rows read their own chunks as context
    if own.any():
        rows = own.nonzero().flatten().to(x0.device)
        net = getattr(model, "module", model)  # unwrapped: no DDP bookkeeping for a no-grad rollout
        x_in = x0.index_copy(0, rows, own_context(
            net, dit_cfg, x0[rows], batch.actions[rows], batch.text[rows], batch.text_mask[rows],
            level_grid(cfg.own_rollout_steps, cfg.shift), gen))
    drop_text = torch.rand(B, generator=gen) < dit_cfg.cfg_dropout_text
    drop_actions = torch.rand(B, generator=gen) < dit_cfg.cfg_dropout_actions
    dev = x0.device
    s, s_ctx, weight, eps = s.to(dev), s_ctx.to(dev), weight.to(dev), eps.to(dev)
    mask = batch.text_mask & ~drop_text.to(dev)[:, None]
    if cfg.copy_context not in COPY_CONTEXTS:
        raise ValueError(f"copy_context must be one of {COPY_CONTEXTS}, got {cfg.copy_context!r}")
    clean_copy = cfg.copy_context == "clean" and dit_cfg.copy_path
    prev = stacked_previous(add_noise(x_in, eps, s_ctx), C, dit_cfg.copy_frames) if clean_copy else None
    x_s, drop_actions = add_noise(x_in, eps, s), drop_actions.to(dev)
    v = model(x_s, network_time(s), batch.actions, batch.text, mask, drop_actions=drop_actions, prev=prev)
    if reference is None:  # the loss chunk is data in every row, so the data's velocity is its target
        return flow_loss(v, velocity_target(x0, eps), weight)
    if x_in is not x0:  # the reference is asked what follows the TRUE context, not the rollout
        x_s = add_noise(x0, eps, s)
        prev = stacked_previous(add_noise(x0, eps, s_ctx), C, dit_cfg.copy_frames) if clean_copy else None
    data = velocity_target(x0, eps) if cfg.guidance_target == "data" else None
    target = guided_target(reference, x_s, s, batch.actions, batch.text, mask, drop_actions, prev,
                           cfg.action_guidance, cfg.guidance_parallel, data, cfg.text_guidance)
    return flow_loss(v, target, weight)


@torch.no_grad()
def guided_target(reference: torch.nn.Module, x_s: torch.Tensor, s: torch.Tensor, actions: torch.Tensor,
                  text: torch.Tensor, mask: torch.Tensor, drop_actions: torch.Tensor, prev: torch.Tensor | None,
                  guidance: float, parallel: float = 1.0, data: torch.Tensor | None = None,
                  text_guidance: float = 0.0) -> torch.Tensor:
    """[B, F, C, h, w] the reference's velocity guided on the actions, c + g (c - u_a), with u_a its
    velocity under the null action and the same prompt (the sampler's guide "actions"); `parallel`
    weighs the part of c - u_a along the conditional x0 prediction (apply_projected_guidance). Rows
    whose actions are dropped get u_a itself, so the distilled network keeps the unconditional
    branch that guidance at play time needs. With `data` (the data's velocity [B, F, C, h, w]) the
    reference gives only the guidance term: data + g (c - u_a), and dropped rows get data itself.
    With `text_guidance` g_t > 0 the non-dropped rows also gain g_t (c - u_t), u_t the reference with
    no prompt tokens and the same actions (the sampler's guide "text"); rows whose prompt is
    dropped (an empty mask) have c = u_t, so they gain nothing. One batch of 2B rows (3B with
    text guidance): conditional first, then u_a, then u_t."""
    B = x_s.shape[0]
    cond = Conditioning.build(text, mask, True, guide="actions")
    texts, masks, drops = [cond.text], [cond.text_mask], [cond.drop_actions]
    if text_guidance:
        texts.append(text)
        masks.append(torch.zeros_like(mask, dtype=torch.bool))
        drops.append(torch.zeros(B, dtype=torch.bool, device=drop_actions.device))
    n = 3 if text_guidance else 2
    rows = lambda x: torch.cat([x] * n)  # noqa: E731
    v = reference(rows(x_s), rows(network_time(s)), rows(actions), torch.cat(texts), torch.cat(masks),
                  drop_actions=torch.cat(drops), prev=None if prev is None else rows(prev)).float()
    c, u = v[:B], v[B:2 * B]
    guided = apply_guidance(v[:2 * B], guidance) if parallel == 1.0 else \
        apply_projected_guidance(v[:2 * B], guidance, predict_x0(x_s.float(), c, s), parallel)
    if text_guidance:
        guided = guided + text_guidance * (c - v[2 * B:])
    if data is not None:  # the velocity is the data's; the reference adds only its guidance term
        guided, u = data.float() + (guided - c), data.float()
    return torch.where(drop_actions[:, None, None, None, None], u, guided)


def own_rollout_rows(batch: int, share: float, context_chunks: torch.Tensor | None,
                     gen: torch.Generator) -> torch.Tensor:
    """[B] bool: the clips whose middle chunks become the network's own rollout (model/training/own_rollout.py),
    a `share` of the batch; clips across a prompt switch keep their own context. Draws nothing at 0."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"own_rollout_share must be in [0, 1], got {share}")
    if share == 0.0:
        return torch.zeros(batch, dtype=torch.bool)
    own = torch.rand(batch, generator=gen) < share
    return own if context_chunks is None else own & (context_chunks < 0)


def chunk_frame_weights(frames: int, chunk_frames: int, cfg: TeacherTrainConfig) -> torch.Tensor:
    """[F] loss weight of each frame of a clip: cfg.first_frame_weight for the first frame of every
    chunk, 1 for the others. The context prefix's zeros multiply it, so only chunks with loss keep
    it; flow_loss divides by the weights' sum, so 1 is exactly the unweighted loss."""
    w = cfg.first_frame_weight
    if not (math.isfinite(w) and w > 0):
        raise ValueError(f"first_frame_weight (--first-frame-weight) must be a finite number > 0, got {w}")
    first = torch.arange(frames) % chunk_frames == 0
    return torch.ones(frames).masked_fill(first, w)


def context_levels(batch: int, most: float, gen: torch.Generator) -> torch.Tensor:
    """[B] level of each clip's context prefix: uniform in [0, most] (0 = clean, no augmentation)."""
    if not 0.0 <= most < 1.0:
        raise ValueError(f"context_noise_max must be in [0, 1), got {most}")
    return torch.rand(batch, generator=gen) * most


def teacher_forcing_prefix(batch: int, n_chunks: int, prob: float, gen: torch.Generator) -> torch.Tensor:
    """[B, n_chunks] bool: a clean prefix of 1..n-1 chunks for a `prob` fraction of clips."""
    use = torch.rand(batch, generator=gen) < prob
    if n_chunks < 2:
        return torch.zeros(batch, n_chunks, dtype=torch.bool)
    k = torch.randint(1, n_chunks, (batch,), generator=gen)
    return (torch.arange(n_chunks)[None] < k[:, None]) & use[:, None]


def fresh_dit_config(cfg: TeacherTrainConfig, latent_channels: int | None = None) -> NetConfig:
    """The preset's network with the switches the run gives (None: the preset's); its latent width
    follows the autoencoder's. A switch the preset's family lacks (--text-film, --coord-planes or --flow-warp
    on a DiT) is refused; --flow-warp without the copy path too (there is no previous frame to warp)."""
    preset = net_config(cfg.preset)
    switches = {name: getattr(cfg, name) for name in NETWORK_SWITCHES if getattr(cfg, name) is not None}
    if latent_channels is not None:
        switches["latent_channels"] = latent_channels
    try:
        return replace_config(preset, switches, f"--preset {cfg.preset}")
    except ConfigError as e:
        conv_only = " and ".join(name for name in ("text_film", "coord_planes", "flow_warp") if name in str(e))
        raise ValueError(f"{e} ({conv_only} reach the U-Net's conv blocks: a U-Net preset's switches)"
                         if conv_only else str(e)) from None


def warm_start(model: WorldNet, checkpoint: str, mismatched_policy: str = "refuse") -> list[str]:
    """Copy every weight of a world checkpoint's DiT whose name and shape match; parameters the
    checkpoint lacks (a new copy path, action tokens, the prompt's FiLM, the conv blocks' coordinate
    planes, the warped previous frame's input convolution and flow head) keep their zero init, so the
    warm-started network starts out computing exactly what the checkpoint did (the flow head's first
    convolution is random, but its last one and the warped frame's input are zero). With
    mismatched_policy "fresh", weights of another shape (the latent layers of a network for another
    autoencoder) keep their initialisation too. Returns the names left fresh."""
    from model.runtime.world_model import load_world_model

    source = load_world_model(checkpoint, "cpu", with_text_encoder=False).dit.state_dict()
    own = model.state_dict()
    mismatched = [k for k in source if k in own and own[k].shape != source[k].shape]
    unknown = [k for k in source if k not in own]
    if unknown or (mismatched and mismatched_policy != "fresh"):
        raise CheckpointError(f"{checkpoint}: its DiT does not fit this one (other shapes: {mismatched[:4]}, "
                              f"unknown: {unknown[:4]}); warm starts need the same preset (another latent "
                              f"width: --init-mismatched fresh)")
    source = {k: v for k, v in source.items() if k not in mismatched}
    model.load_state_dict(source, strict=False)
    fresh = [k for k in own if k not in source]
    print(f"warm start from {checkpoint}: {len(source)} tensors copied, fresh: {fresh or 'none'}", flush=True)
    return fresh


def transfer_to_warp(model: WorldNet) -> None:
    """The warped previous frame takes over the input convolution's weights for the most recent previous
    frame (`flow_warp_transfer`): conv_in reads [x (c); previous frames oldest first (K * c); actions], so
    that frame is channels [K * c, (K + 1) * c). At flow 0 the warped frame equals it, so the network
    computes what it did (up to the order of a sum); the flow head then gets gradient at once."""
    conv = getattr(model, "conv_in", None)
    if conv is None or getattr(conv, "warp_in", None) is None:
        raise ValueError("--flow-warp-transfer needs a U-Net with flow_warp (--flow-warp)")
    c, K = model.config.latent_channels, model.config.copy_frames
    with torch.no_grad():
        recent = conv.conv_in.weight[:, K * c : (K + 1) * c]
        conv.warp_in.weight.copy_(recent)
        recent.zero_()
    print(f"flow warp: the input convolution's weights for the most recent previous frame (channels "
          f"{K * c}-{(K + 1) * c - 1}) moved to the warped frame's", flush=True)


# Options a guidance reference may differ in: inputs that start silent (zero-initialised), so the run's
# network warm-started from the reference computes the reference's velocity at its first step, and the
# guided target stays the one the reference was trained towards.
SILENT_OPTIONS = ("coord_planes", "flow_warp")


def same_network(reference: NetConfig, run: NetConfig) -> bool:
    """Whether `reference` can give `run` its guided target: the same network up to SILENT_OPTIONS."""
    if type(reference) is not type(run):
        return False
    return replace(reference, **{k: getattr(run, k) for k in SILENT_OPTIONS if hasattr(run, k)}) == run


def guidance_reference(cfg: TeacherTrainConfig, dit_cfg: NetConfig, device: torch.device) -> WorldNet | None:
    """The frozen network whose action-guided velocity the run distils (None: the run learns from data).
    Its path is kept in cfg.guidance_reference, so the saved train config says what was distilled."""
    if cfg.action_guidance < 0:
        raise ValueError(f"action_guidance must be >= 0, got {cfg.action_guidance}")
    if cfg.guidance_target not in GUIDANCE_TARGETS:
        raise ValueError(f"guidance_target must be one of {GUIDANCE_TARGETS}, got {cfg.guidance_target!r}")
    if not 0.0 <= cfg.guidance_parallel <= 1.0:
        raise ValueError(f"guidance_parallel must be in [0, 1], got {cfg.guidance_parallel}")
    if cfg.text_guidance < 0:
        raise ValueError(f"text_guidance must be >= 0, got {cfg.text_guidance}")
    if cfg.action_guidance == 0 and cfg.text_guidance == 0:
        return None
    from model.runtime.world_model import load_world_model

    cfg.guidance_reference = cfg.guidance_reference or cfg.init_from
    if not cfg.guidance_reference:
        raise ValueError("--action-guidance / --text-guidance distil a reference network's guided velocity: give "
                         "--guidance-reference (or --init-from) a world checkpoint")
    reference = load_world_model(cfg.guidance_reference, "cpu", with_text_encoder=False).dit.float()
    if not same_network(reference.config, dit_cfg):
        raise CheckpointError(f"{cfg.guidance_reference}: its network is not this run's; a distilled guidance "
                              f"target needs the same architecture")
    return reference.to(device).eval().requires_grad_(False)


def learning_rate(cfg: TeacherTrainConfig, step: int) -> float:
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))


# ----------------------------------------------------------------------------- the run


@dataclass
class Trainer:
    """Model, EMA, optimiser and where they are saved; `train` runs the loop."""

    cfg: TeacherTrainConfig
    dit_cfg: NetConfig
    model: WorldNet
    ema: WorldNet
    autoencoder: torch.nn.Module
    optimizer: torch.optim.Optimizer
    out: Path
    device: torch.device
    rank: int = 0
    world_size: int = 1  # DDP processes
    reference: WorldNet | None = None  # frozen network whose guided velocity is the target (action_guidance)
    step: int = 0
    _net: torch.nn.Module | None = None  # set by train(): the model, DDP-wrapped when distributed
    _batches: ClipBatches | None = None
    _log: RunLog | None = None

    @classmethod
    def create(cls, cfg: TeacherTrainConfig, autoencoder: torch.nn.Module, out: str | Path, device: torch.device,
               rank: int = 0, world_size: int = 1, resume: bool = False) -> Trainer:
        """Fresh model, or (resume and a train state in `out`) the saved one: its architecture wins."""
        out = Path(out)
        chunk_frame_weights(1, 1, cfg)  # a bad --first-frame-weight fails here, not at the first step
        check_prompt_options(cfg.prompt_paraphrases, cfg.word_dropout)  # and bad prompt variants
        resuming = resume and has_train_state(out)
        dit_cfg = _resume_config(out) if resuming else fresh_dit_config(cfg, autoencoder.config.latent_channels)
        if dit_cfg.latent_channels != autoencoder.config.latent_channels:
            raise CheckpointError(f"{out}: its network reads {dit_cfg.latent_channels} latent channels, the "
                                  f"autoencoder of the latent cache {autoencoder.config.latent_channels}")
        torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts them)
        model = build_net(dit_cfg).to(device)
        if cfg.init_from and not resuming:
            warm_start(model, cfg.init_from, cfg.init_mismatched)
            if cfg.flow_warp_transfer:
                transfer_to_warp(model)
        elif cfg.flow_warp_transfer and not resuming:
            raise ValueError("--flow-warp-transfer moves warm-started weights: it needs --init-from")
        ema = copy.deepcopy(model).requires_grad_(False)
        autoencoder = autoencoder.to(device).requires_grad_(False)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
        if resuming and not (cfg.guidance_reference or cfg.init_from):  # the run's own record of what it distils
            saved = read_checkpoint_config(out, kind=KIND)["configs"].get("train", {})
            cfg.guidance_reference = saved.get("guidance_reference", "")
        reference = guidance_reference(cfg, dit_cfg, device)
        trainer = cls(cfg, dit_cfg, model, ema, autoencoder, opt, out, device, rank, world_size, reference)
        if resume:
            trainer.step = resume_step(out, trainer._modules(), {"dit": opt})
        return trainer

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"dit": self.ema, "dit_online": self.model, "autoencoder": self.autoencoder}

    def save(self, reason: str = "periodic") -> None:
        """Rank 0 writes a playable world checkpoint (EMA as "dit") plus the resume state."""
        if self.rank != 0:
            return
        world_cfg = WorldConfig(text_encoder=self.cfg.text_encoder, sampler="teacher", shift=self.cfg.shift,
                                chunk_frames=self.dit_cfg.chunk_frames, notes={"trained_steps": self.step})
        save_world(self.out, self.ema, self.autoencoder, world_cfg, self.step,
                   extra_modules={"dit_online": self.model}, extra_configs={"train": self.cfg},
                   optimizers={"dit": self.optimizer})
        if self._log is not None:
            self._log.plot(["loss", "grad_norm", "frames_per_s"], title="teacher")

    def train(self, batches: ClipBatches, log: RunLog | None = None) -> dict[str, float]:
        """Run to cfg.steps (or cfg.max_minutes) in the training loop; returns the last step's metrics."""
        cfg = self.cfg
        self._net, self._batches, self._log = self._wrapped(), batches, (log if self.rank == 0 else None)
        loop = LoopConfig(steps=cfg.steps, desc="teacher", log_every=cfg.log_every, ckpt_every=cfg.ckpt_every,
                          postfix=("loss", "steps_per_s", "frames_per_s"))
        return TrainLoop(self, loop, self._log, budget=Budget.minutes(cfg.max_minutes, self.world_size),
                         rank=self.rank).run()

    @property
    def frames_per_step(self) -> int:
        return self.cfg.batch * self.cfg.clip_chunks * self.dit_cfg.chunk_frames

    def train_step(self) -> dict[str, float]:
        lr = learning_rate(self.cfg, self.step)
        loss, grad_norm = self._one_step(self._net, self._batches(self.step, self.device), lr)
        return {"loss": loss, "grad_norm": grad_norm, "lr": lr}

    def _wrapped(self) -> torch.nn.Module:
        if self.world_size == 1:
            return self.model
        ids = [self.device.index] if self.device.type == "cuda" else None
        # Buffers (RoPE tables) are derived from the config and never change: no per-step sync.
        # Newer torch renames the switch; both spellings mean the same here.
        params = inspect.signature(DistributedDataParallel).parameters
        sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        return DistributedDataParallel(self.model, device_ids=ids, **sync)

    def _one_step(self, net: torch.nn.Module, batch: Batch, lr: float) -> tuple[float, float]:
        set_learning_rate(self.optimizer, lr)
        gen = step_generator(self.cfg.seed, self.step, self.rank)
        with autocast_for(self.device, self.cfg.precision):
            loss = teacher_loss(net, batch, self.dit_cfg, self.cfg, gen, self.reference)
        grad_norm = optimizer_step(self.optimizer, loss, self.model.parameters(), self.cfg.grad_clip)
        update_ema(self.ema, self.model, self.cfg.ema_decay, self.step)
        if self.world_size > 1:  # report the mean loss over ranks
            loss = loss.detach().clone()
            dist.all_reduce(loss)
            loss /= self.world_size
        return float(loss.detach()), grad_norm


def _resume_config(out: Path) -> NetConfig:
    meta = read_checkpoint_config(out, kind=KIND)
    try:
        return net_config_from_dict(meta["configs"].get("dit"), f"{out}/config.json: configs.dit")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--latents", required=True, help="latent cache directory (run_world.py encode-latents)")
    parser.add_argument("--autoencoder", default=None,
                        help="autoencoder the cache was encoded with (default: the one the cache records)")
    parser.add_argument("--out", required=True, help="run directory: checkpoint/ (a playable world), teacher.csv/png")
    parser.add_argument("--recipe", default=None, choices=sorted(TEACHER_RECIPES),
                        help="start from a named recipe (model/training/recipes.py: what a release was trained "
                        "with); options given here still win")
    # Not given: None, so only what the command line names overrides the recipe (help shows the defaults).
    add_options(parser, TeacherTrainConfig, shown=TeacherTrainConfig())
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint if it is there")


def config_from_args(args: argparse.Namespace, text_encoder: str) -> TeacherTrainConfig:
    """TeacherTrainConfig's defaults, then the --recipe's values, then the options given."""
    cfg = TeacherTrainConfig(text_encoder=text_encoder)
    if getattr(args, "recipe", None):
        cfg = replace_config(cfg, teacher_recipe(args.recipe), f"recipe {args.recipe}")
    return replace_config(cfg, given_options(args, TeacherTrainConfig), "train teacher")


def _distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every step has the same shapes: let cuDNN pick its fastest convs
    if world_size == 1:
        return 0, 1, device
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return dist.get_rank(), world_size, device


def _cache_autoencoder(cache_meta: dict, given: str | None) -> str:
    """The autoencoder directory to bundle: it must be the one that encoded the cache."""
    from model.common.checkpoint import checkpoint_dir

    recorded = cache_meta.get("autoencoder", {})
    path = checkpoint_dir(given if given is not None else recorded.get("path", ""))
    meta = read_checkpoint_config(path, kind="autoencoder")
    if recorded.get("sha256") and module_sha256(path, "autoencoder", meta) != recorded["sha256"]:
        weights = path / meta["modules"]["autoencoder"]["file"]
        raise CheckpointError(f"{weights}: not the autoencoder the latent cache was encoded with "
                              f"({recorded.get('path')}); its latents would decode wrongly")
    return str(path)


def prompt_table(cfg: TeacherTrainConfig, cache_dir: str | os.PathLike,
                 rank: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The text table ClipBatches reads: the cache's tokens [P, L, dim] and mask [P, L], and None; with
    cfg.prompt_paraphrases K > 0, the table extended by each prompt's K variants (every rank draws the
    same ones) and their rows [P, K + 1], column 0 the cached prompt."""
    from model.training.encode_latents import load_prompts, text_table

    tokens, mask = text_table(cache_dir)
    if cfg.prompt_paraphrases == 0:
        return tokens, mask, None
    started = time.perf_counter()
    table = build_variants(load_prompts(cache_dir), tokens, mask, cfg.prompt_paraphrases, cfg.word_dropout,
                           cfg.seed, cfg.text_encoder)
    if rank == 0:
        print(f"prompt variants: {len(table.rows)} prompts x {cfg.prompt_paraphrases} (word dropout "
              f"{cfg.word_dropout}), encoded with {cfg.text_encoder} in {time.perf_counter() - started:.1f} s",
              flush=True)
    return table.tokens, table.mask, table.rows


def run(args: argparse.Namespace) -> int:
    from model.common.checkpoint import CHECKPOINT_SUBDIR
    from model.training.autoencoder import load_autoencoder
    from model.training.encode_latents import LatentClips, read_cache_meta

    cache_meta = read_cache_meta(args.latents)
    cfg = config_from_args(args, cache_meta.get("text_encoder", "minilm"))
    rank, world_size, device = _distributed(args.device)
    try:
        out = Path(args.out)
        autoencoder = load_autoencoder(_cache_autoencoder(cache_meta, args.autoencoder), device)
        trainer = Trainer.create(cfg, autoencoder, out / CHECKPOINT_SUBDIR, device, rank, world_size,
                                 resume=args.resume)
        dataset = LatentClips(args.latents, cfg.clip_chunks, trainer.dit_cfg.chunk_frames)
        tokens, mask, variants = prompt_table(cfg, args.latents, rank)
        batches = ClipBatches(dataset, tokens, mask, cfg.batch, rank, world_size, cfg.seed, cfg.switch_share,
                              variants)
        log = RunLog(out, "teacher", resume_step=trainer.step + 1 if args.resume else None) if rank == 0 else None
        if rank == 0:
            print(f"teacher: {count_parameters(trainer.model) / 1e6:.2f}M parameters, {len(dataset)} clips, "
                  f"{world_size} process(es) on {device} ({training_precision(device, cfg.precision)}), "
                  f"from step {trainer.step}", flush=True)
        metrics = trainer.train(batches, log)
        if rank == 0 and metrics:
            print(f"teacher: step {trainer.step}, loss {metrics['loss']:.4f}, {metrics['steps_per_s']:.2f} steps/s, "
                  f"{metrics['frames_per_s']:.1f} frames/s -> {trainer.out}", flush=True)
    finally:
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return 0
