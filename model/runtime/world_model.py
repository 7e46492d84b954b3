"""A generated world in one checkpoint directory: autoencoder + world network + text encoder choice.

Layout (model/common/checkpoint.py, kind "world"):

    config.json               configs {"dit": NetConfig, "autoencoder": AutoencoderConfig,
                              "world": WorldConfig}, modules {"dit", "autoencoder", ...}
    dit.safetensors           the release network's weights (EMA weights when written by training)

The world network's module is "dit" whatever its family: the name of its slot in every checkpoint
(the release tool, recordings' weight hashes, the student's and evaluation's readers use it), not a
claim about the architecture; its config's `family` says which network it is ("unet" for every
release since the U-Net, "dit" for the first ones; model/nets/families.py reads configs written
before the field existed).
    autoencoder.safetensors   the autoencoder the latents were made with
    train_state.*             optional, for resuming training

Training writes this layout directly, so every periodic checkpoint is playable by the generated
backend. The text encoder is not stored: `WorldConfig.text_encoder` names it ("minilm" in
releases, "hash" in tests), and it must be the one that made the training prompts' tokens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model.common.checkpoint import (
    CONFIG_FILE,
    CheckpointError,
    config_from_dict,
    load_module,
    read_checkpoint_config,
    save_checkpoint,
)
from model.diffusion.samplers import Sampler, make_sampler
from model.nets.families import build_net, net_config, net_config_from_dict
from model.nets.world_net import NetConfig, WorldNet
from model.runtime.stream import WorldStream

KIND = "world"


@dataclass
class WorldConfig:
    text_encoder: str = "minilm"  # model.nets.text_encoder.create_text_encoder name
    sampler: str = "teacher"  # default sampler of this checkpoint (a teacher, or a distilled student)
    steps: int | None = None  # sampler's steps (None: the sampler's own default)
    schedule: list[int] | None = None  # per-chunk step counts for "diagonal"
    # Network time of the diagonal sampler's context K/V (None: model.diffusion.samplers.CONTEXT_NOISE). A
    # property of the weights: the distillation run writes the value it trained with, and every
    # diagonal sampler built from this checkpoint uses it (docs/design.md §3, diagonal forcing) unless a
    # session names another one explicitly (an inference-time ablation, WorldModel.sampler).
    context_noise: float | None = None
    guidance: float | None = None  # None: the sampler's own default (teacher 3, students 0)
    # What guidance's uncond rows leave out (model/diffusion/samplers.py GUIDES); None: "all", what every
    # checkpoint written before the option (it has no such key) sampled with.
    guide: str | None = None
    shift: float = 3.0  # flow shift k the model was trained with (model/diffusion/flow.py)
    fps: float = 30.0  # world frames per second (display rate)
    chunk_frames: int = 3
    notes: dict = field(default_factory=dict)  # free-form provenance (data, steps, losses)


@dataclass
class WorldModel:
    dit: WorldNet  # the world network, of any family (module docstring)
    autoencoder: torch.nn.Module
    text_encoder: object
    config: WorldConfig
    directory: Path
    step: int
    device: torch.device

    def sampler(self, name: str | None = None, steps: int | None = None, schedule: list[int] | None = None,
                guidance: float | None = None, context_noise: float | None = None,
                rewarm: bool | None = None, guide: str | None = None) -> Sampler:
        """The checkpoint's default sampler, or `name` with its own defaults; explicit options win.

        context_noise (diagonal only; make_sampler refuses it for the refresh samplers) defaults to
        the checkpoint's WorldConfig.context_noise whichever schedule is asked for: it belongs to the
        weights, so another value is an explicit ablation, never a silent default."""
        return world_sampler(self.config, name, steps, schedule, guidance, context_noise, rewarm, guide)

    def stream(self, sampler: Sampler | None = None) -> WorldStream:
        return WorldStream(self.dit, self.autoencoder, self.text_encoder, sampler or self.sampler(), self.device)

    @property
    def image_size(self) -> int:
        return self.autoencoder.config.image_size


def world_sampler(cfg: WorldConfig, name: str | None = None, steps: int | None = None,
                  schedule: list[int] | None = None, guidance: float | None = None,
                  context_noise: float | None = None, rewarm: bool | None = None, guide: str | None = None) -> Sampler:
    """`WorldModel.sampler` from the checkpoint's WorldConfig alone: a worker checks a session's
    sampler options with it before loading any weights (ValueError)."""
    if name is None or name == cfg.sampler:
        name = cfg.sampler
        steps = cfg.steps if steps is None else steps
        schedule = cfg.schedule if schedule is None else schedule
        guidance = cfg.guidance if guidance is None else guidance
        if guide is None and guidance != 0:  # guidance 0 asked for: no guidance, so no checkpoint guide
            guide = cfg.guide
    if name == "diagonal" and context_noise is None:
        context_noise = cfg.context_noise
    return make_sampler(name, steps=steps, schedule=schedule, guidance=guidance, shift=cfg.shift,
                        context_noise=context_noise, rewarm=rewarm, guide=guide)


def read_world_configs(directory: str | os.PathLike) -> tuple[NetConfig, object, WorldConfig]:
    """(dit, autoencoder, world) configs of a world checkpoint, from config.json only (no weights)."""
    from model.common.checkpoint import checkpoint_dir

    directory = checkpoint_dir(directory)
    return _configs(directory, read_checkpoint_config(directory, kind=KIND))


def create_text_encoder(name: str, device: torch.device):
    """model.nets.text_encoder.create_text_encoder, imported only when a world is loaded."""
    from model.nets.text_encoder import create_text_encoder as create

    return create(name, device)


def _configs(directory: Path, meta: dict) -> tuple[NetConfig, object, WorldConfig]:
    from model.nets.autoencoder import AutoencoderConfig

    where = directory / CONFIG_FILE
    configs = meta["configs"]
    missing = sorted({"dit", "autoencoder", "world"} - set(configs))
    if missing:
        raise CheckpointError(f"{where}: configs {missing} missing; a world needs dit, autoencoder and world")
    try:
        dit_cfg = net_config_from_dict(configs["dit"], f"{where}: configs.dit")
        ae_cfg = config_from_dict(AutoencoderConfig, configs["autoencoder"], f"{where}: configs.autoencoder")
        world_cfg = config_from_dict(WorldConfig, configs["world"], f"{where}: configs.world")
    except (TypeError, ValueError) as e:  # a config's own validation (__post_init__)
        raise CheckpointError(f"{where}: invalid config ({e})") from None
    if ae_cfg.latent_shape != dit_cfg.latent_shape:
        raise CheckpointError(
            f"{where}: autoencoder latents {ae_cfg.latent_shape} != DiT latents {dit_cfg.latent_shape}"
        )
    if world_cfg.chunk_frames != dit_cfg.chunk_frames:
        raise CheckpointError(f"{where}: world chunk_frames {world_cfg.chunk_frames} != DiT {dit_cfg.chunk_frames}")
    return dit_cfg, ae_cfg, world_cfg


def load_world_model(directory: str | os.PathLike, device: str | torch.device = "cpu",
                     with_text_encoder: bool = True) -> WorldModel:
    """Load a kind="world" checkpoint (or a training run directory holding one in checkpoint/) for
    inference (eval mode, no grad); training that reads cached prompt tokens passes
    with_text_encoder=False (text_encoder is then None). Raises CheckpointError
    naming the file for a missing directory, truncated weights, wrong shapes, unknown config keys
    or another kind of checkpoint."""
    from model.common.checkpoint import checkpoint_dir
    from model.nets.autoencoder import Autoencoder

    directory = checkpoint_dir(directory)  # a training run directory holds it in checkpoint/
    device = torch.device(device)
    meta = read_checkpoint_config(directory, kind=KIND)
    dit_cfg, ae_cfg, world_cfg = _configs(directory, meta)
    dit, ae = build_net(dit_cfg), Autoencoder(ae_cfg)
    load_module(directory, "dit", dit)
    load_module(directory, "autoencoder", ae)
    dit.to(device).eval().requires_grad_(False)
    ae.to(device).eval().requires_grad_(False)
    text_encoder = create_text_encoder(world_cfg.text_encoder, device) if with_text_encoder else None
    return WorldModel(dit, ae, text_encoder, world_cfg, directory, int(meta["step"]), device)


def save_world(directory: str | os.PathLike, dit: torch.nn.Module, autoencoder: torch.nn.Module,
               world: WorldConfig, step: int = 0, *, extra_modules: dict | None = None,
               extra_configs: dict | None = None, **kwargs) -> Path:
    """Write a playable world checkpoint atomically. extra_modules/extra_configs (e.g. the online
    weights and the training config) ride along; kwargs go to save_checkpoint (optimizers, extra)."""
    modules = {"dit": dit, "autoencoder": autoencoder, **(extra_modules or {})}
    inner = getattr(dit, "module", dit)
    configs = {"dit": inner.config, "autoencoder": autoencoder.config, "world": world, **(extra_configs or {})}
    return save_checkpoint(directory, kind=KIND, modules=modules, configs=configs, step=step, **kwargs)


def make_random_world(directory: str | os.PathLike, preset: str = "tiny", text_encoder: str = "hash",
                      seed: int = 0, dit_options: dict | None = None, autoencoder: str | None = None,
                      **world_options) -> Path:
    """A randomly initialised world checkpoint for tests and benchmarks.

    Every parameter gets small random noise on top of the normal initialisation (whose adaLN-Zero
    gates and output layer are exactly zero), so the output depends on every input. dit_options
    override the preset's NetConfig fields (e.g. {"copy_path": True}). autoencoder: its preset (default:
    the network preset's name where the autoencoders have one, else "tiny": "tiny-unet" is a test net).
    """
    from model.nets.autoencoder import AUTOENCODER_PRESETS, Autoencoder, autoencoder_config

    torch.manual_seed(seed)
    dit_cfg = net_config(preset)
    for name, value in (dit_options or {}).items():
        if not hasattr(dit_cfg, name):
            raise ValueError(f"{type(dit_cfg).__name__} has no field {name!r}")
        setattr(dit_cfg, name, value)
    dit = build_net(dit_cfg)
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if autoencoder is None:
        autoencoder = preset if preset in AUTOENCODER_PRESETS else "tiny"
    ae = Autoencoder(autoencoder_config(autoencoder))
    world = WorldConfig(text_encoder=text_encoder, chunk_frames=dit.config.chunk_frames, **world_options)
    return save_world(directory, dit, ae, world)
