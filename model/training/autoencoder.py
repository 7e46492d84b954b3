"""Train the frame autoencoder on a dataset's frames.

    python run_world.py train autoencoder --data DIR --out DIR [--preset default] [--steps N]
        [--batch 64] [--lr 2e-3] [--device auto] [--resume] [--eval-every N] [--ckpt-every N]

Writes into --out: `checkpoint/` (atomic; release fp16 weights + fp32 train state),
`metrics.csv` / `metrics.png` (loss terms, lr, held-out PSNR), `recon.png` (held-out originals
above their reconstructions). Killed at any moment, `--resume` continues from the last checkpoint
exactly: batches, flips and latent noise are drawn from generators seeded by (seed, step), so the
resumed run sees what the uninterrupted one would have. Ctrl-C saves a checkpoint before exiting.

The last episodes (sorted by name, `val_fraction` of them, at least one) are held out for PSNR;
a dataset of one episode holds out the last `val_fraction` of its frames instead.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.common.checkpoint import (
    CHECKPOINT_SUBDIR,
    CONFIG_FILE,
    CheckpointError,
    checkpoint_dir,
    config_from_dict,
    has_train_state,
    load_module,
    load_train_state,
    read_checkpoint_config,
    save_checkpoint,
)
from model.common.configs import add_options, given_options, option, replace_config
from model.common.device import autocast, resolve_device, torch_threads
from model.common.images import frames_to_tensor, psnr, tensor_to_frames
from model.common.runlog import RunLog
from model.nets import count_parameters
from model.nets.autoencoder import AUTOENCODER_PRESETS, Autoencoder, AutoencoderConfig, autoencoder_config
from model.training.loop import Budget, LoopConfig, TrainLoop, autocast_for, optimizer_step, set_learning_rate

__all__ = ["AutoencoderTrainConfig", "TRAIN_PRESETS", "FrameSplit", "AutoencoderTrainer", "load_autoencoder",
           "add_arguments", "run"]


# ----------------------------------------------------------------------------- losses


@dataclass
class LossWeights:
    """Reconstruction loss weights: L1 + MSE + a small image-gradient (edge) term; no GAN."""

    l1: float = 1.0
    mse: float = 1.0
    edge: float = 0.5


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, w: LossWeights) -> tuple[torch.Tensor, dict]:
    """Weighted loss between images [B, 3, H, W] and its terms (floats, for logging)."""
    l1 = (recon - target).abs().mean()
    mse = (recon - target).pow(2).mean()
    edge = _edge_l1(recon, target)
    loss = w.l1 * l1 + w.mse * mse + w.edge * edge
    return loss, {"l1": l1.item(), "mse": mse.item(), "edge": edge.item()}


def _edge_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Matching finite differences sharpens the high-frequency terrain texture that L1/MSE blur.
    dx = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    return 0.5 * (dx.abs().mean() + dy.abs().mean())


def autoencoder_loss(
    ae: Autoencoder, x: torch.Tensor, weights: LossWeights, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Training loss for a batch x [B, 3, H, W] in [-1, 1]: reconstruction through noised latents."""
    z = ae.encode_raw(x)  # [B, C, h, w]
    noise = torch.randn(z.shape, generator=generator, device="cpu").to(z.device, z.dtype)
    # Relative to the per-channel std (detached), the noise cannot be outgrown by inflating the latents.
    scale = z.detach().float().std(dim=(0, 2, 3), keepdim=True).to(z.dtype)
    recon = ae.decode_raw(z + ae.config.latent_noise * scale * noise)
    reg = z.float().pow(2).mean()
    recon_term, terms = reconstruction_loss(recon.float(), x.float(), weights)
    return recon_term + ae.config.latent_l2 * reg, {**terms, "latent_rms": reg.sqrt().item()}


# ----------------------------------------------------------------------------- checkpoints

CHECKPOINT_KIND = "autoencoder"


def load_autoencoder(ckpt_dir: str | os.PathLike, device: str | torch.device = "cpu") -> Autoencoder:
    """Build the autoencoder a checkpoint describes and load its weights; eval mode, on `device`.

    Raises CheckpointError naming the file when the directory, config or weights are wrong.
    """
    directory = checkpoint_dir(ckpt_dir)
    meta = read_checkpoint_config(directory, kind=CHECKPOINT_KIND)
    source = str(directory / CONFIG_FILE)
    if "autoencoder" not in meta["configs"]:
        raise CheckpointError(f"{source}: no 'autoencoder' config")
    try:
        config = config_from_dict(AutoencoderConfig, meta["configs"]["autoencoder"], source)
    except ValueError as e:  # __post_init__ rejects inconsistent sizes
        raise CheckpointError(f"{source}: invalid autoencoder config ({e})") from None
    ae = Autoencoder(config)
    load_module(directory, "autoencoder", ae)
    return ae.to(device).eval()


# ----------------------------------------------------------------------------- speed


@torch.inference_mode()
def decode_ms_per_frame(ae: Autoencoder, batch: int = 3, threads: int | None = None, repeats: int = 20) -> float:
    """Best-of-5 CPU fp32 decode time per frame for a `batch`-frame chunk (the real-time path)."""
    model = copy.deepcopy(ae).float().cpu().eval()
    z = torch.randn(batch, *ae.config.latent_shape)
    with torch_threads(threads):
        for _ in range(3):  # warm-up: oneDNN picks kernels on first calls
            model.decode(z)
        best = math.inf
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(repeats):
                model.decode(z)
            best = min(best, (time.perf_counter() - t0) / repeats)
    return 1000.0 * best / batch


@dataclass
class AutoencoderTrainConfig:
    """The run's settings; a field with help is also a `train autoencoder` option, given over the
    preset (or the resumed checkpoint's settings) when given (model/common/configs.py)."""

    steps: int = option(4000, help="total optimiser steps (a resumed run may raise it)")
    # small batches: more updates per CPU-second, which is what a conv AE needs early
    batch: int = option(32, help="frames per step")
    lr: float = option(2e-3, help="peak learning rate")
    min_lr_ratio: float = 0.05  # cosine decay to lr * min_lr_ratio
    warmup: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = option(250, help="steps between held-out PSNR evaluations")
    ckpt_every: int = option(250, help="steps between checkpoints")
    log_every: int = option(25, help="steps between metric rows")
    val_fraction: float = 0.1
    val_frames: int = 256  # held-out frames scored for PSNR (evenly spaced)
    stats_frames: int = 2048  # frames encoded for the final latent mean/std
    flip: bool = True  # random horizontal flips: mirrored terrain is still terrain
    seed: int = option(0, help="seed for init, batches, flips and latent noise")
    loss: LossWeights = field(default_factory=LossWeights)


TRAIN_PRESETS: dict[str, AutoencoderTrainConfig] = {
    "tiny": AutoencoderTrainConfig(steps=30, batch=8, lr=3e-3, warmup=0, eval_every=10, ckpt_every=10, log_every=1,
                        val_frames=16, stats_frames=64),
    "default": AutoencoderTrainConfig(),
    "sharp8": AutoencoderTrainConfig(),  # the default schedule; only the network differs
}

# ----------------------------------------------------------------------------- data


class FrameSplit:
    """Random training batches and a fixed held-out set from a dataset's frames (memmapped)."""

    def __init__(self, readers: list, cfg: AutoencoderTrainConfig):
        if not readers or sum(len(r) for r in readers) < 2:
            raise ValueError("the dataset holds fewer than 2 frames; generate data first (run_world.py datagen)")
        train, val = self._split(readers, cfg.val_fraction)
        self.readers = readers
        self.train = train  # [M, 2] int64 rows of (reader index, frame index)
        self.val = val[np.linspace(0, len(val) - 1, min(cfg.val_frames, len(val))).round().astype(int)]
        self.val_episodes = sorted({readers[int(e)].id for e in self.val[:, 0]})

    @staticmethod
    def _split(readers: list, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        rows = [np.stack([np.full(len(r), i), np.arange(len(r))], 1) for i, r in enumerate(readers) if len(r)]
        if len(rows) == 1:  # one episode: hold out its tail
            cut = min(len(rows[0]) - 1, max(1, int(len(rows[0]) * (1 - fraction))))
            return rows[0][:cut], rows[0][cut:]
        n_val = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
        return np.concatenate(rows[:-n_val]), np.concatenate(rows[-n_val:])

    def frames(self, rows: np.ndarray) -> np.ndarray:
        """(reader, frame) rows [B, 2] -> uint8 [B, H, W, 3]."""
        return np.stack([self.readers[int(e)].frames[int(f)] for e, f in rows])

    def batch(self, step: int, cfg: AutoencoderTrainConfig) -> torch.Tensor:
        """The training batch of `step` (a pure function of seed and step): [B, 3, H, W] in [-1, 1]."""
        rng = np.random.default_rng([cfg.seed, step])
        rows = self.train[rng.integers(0, len(self.train), cfg.batch)]
        x = frames_to_tensor(self.frames(rows))
        if cfg.flip:
            flip = torch.from_numpy(rng.random(cfg.batch) < 0.5)
            x[flip] = x[flip].flip(-1)
        return x

    def val_tensor(self) -> torch.Tensor:
        return frames_to_tensor(self.frames(self.val))

    def stats_sample(self, count: int, seed: int) -> torch.Tensor:
        rng = np.random.default_rng([seed, 1 << 30])
        rows = self.train[np.sort(rng.choice(len(self.train), min(count, len(self.train)), replace=False))]
        return frames_to_tensor(self.frames(rows))  # sorted rows: memmap reads in file order


# ----------------------------------------------------------------------------- training


def lr_at(step: int, cfg: AutoencoderTrainConfig) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress_ = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress_)))


@dataclass
class AutoencoderTrainer:
    ae: Autoencoder
    optimizer: torch.optim.Optimizer
    cfg: AutoencoderTrainConfig
    data: FrameSplit
    out: Path
    device: torch.device
    step: int = 0
    val_psnr: float | None = None  # the latest held-out PSNR, stored with each checkpoint

    @property
    def ckpt_dir(self) -> Path:
        return self.out / CHECKPOINT_SUBDIR

    def train_step(self) -> dict[str, float]:
        """One optimiser step on the batch of `self.step` (the training loop counts it)."""
        self.ae.train()
        lr = lr_at(self.step, self.cfg)
        set_learning_rate(self.optimizer, lr)
        x = self.data.batch(self.step, self.cfg).to(self.device)
        # Its own per-step seed (not loop.step_generator's), so runs made before draw the same noise.
        noise_gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.step)
        with autocast_for(self.device):
            loss, terms = autoencoder_loss(self.ae, x, self.cfg.loss, noise_gen)
        optimizer_step(self.optimizer, loss, self.ae.parameters(), self.cfg.grad_clip)
        return {"loss": loss.item(), **terms, "lr": lr}

    def after_step(self, step: int) -> dict[str, float]:
        """Held-out PSNR every eval_every steps and at the last one (a column of that step's row)."""
        if step % self.cfg.eval_every == 0 or step == self.cfg.steps:
            self.val_psnr = self.evaluate()[0]
            return {"val_psnr": self.val_psnr}
        return {}

    @torch.no_grad()
    def evaluate(self) -> tuple[float, np.ndarray, np.ndarray]:
        """Held-out PSNR (dB, on uint8 frames) with the originals and reconstructions."""
        self.ae.eval()
        x = self.data.val_tensor()
        recon = torch.cat([self._reconstruct(x[i : i + 256]) for i in range(0, len(x), 256)])
        original, rebuilt = tensor_to_frames(x), tensor_to_frames(recon)
        # on uint8 frames (what the window shows); no cap, the MSE floored at 1e-10
        return psnr(original, rebuilt, data_range=255.0, min_mse=1e-10), original, rebuilt

    def _reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device):
            return self.ae.decode_raw(self.ae.encode_raw(x.to(self.device))).float().cpu()

    @torch.no_grad()
    def update_latent_stats(self, count: int) -> None:
        """Fill the latent mean/std buffers from `count` training frames, so every checkpoint is usable."""
        self.ae.eval()
        x = self.data.stats_sample(count, self.cfg.seed)
        with autocast(self.device):
            z = torch.cat([self.ae.encode_raw(x[i : i + 256].to(self.device)).float() for i in range(0, len(x), 256)])
        self.ae.set_latent_stats(z)

    def save(self, reason: str = "periodic") -> None:
        """A checkpoint during the run (the training loop's): quick latent stats, the latest PSNR."""
        self.update_latent_stats(min(512, self.cfg.stats_frames))
        self.write({"val_psnr": self.val_psnr, **({"interrupted": True} if reason == "interrupted" else {})})

    def write(self, extra: dict) -> None:
        save_checkpoint(self.ckpt_dir, kind=CHECKPOINT_KIND, modules={"autoencoder": self.ae},
                        configs={"autoencoder": self.ae.config, "train": self.cfg}, step=self.step,
                        optimizers={"autoencoder": self.optimizer}, extra=extra)


def _make_optimizer(ae: Autoencoder, cfg: AutoencoderTrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(ae.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)


def _resume_configs(ckpt: Path) -> tuple[AutoencoderConfig, AutoencoderTrainConfig]:
    meta = read_checkpoint_config(ckpt, kind=CHECKPOINT_KIND)
    source = str(ckpt / "config.json")
    ae_cfg = config_from_dict(AutoencoderConfig, meta["configs"]["autoencoder"], source)
    train_cfg = config_from_dict(AutoencoderTrainConfig, meta["configs"].get("train", {}), source)
    return ae_cfg, train_cfg


def build_trainer(args: argparse.Namespace, readers: list, device: torch.device) -> AutoencoderTrainer:
    """A fresh trainer from the preset, or (--resume) the checkpoint's, with command-line overrides."""
    out = Path(args.out)
    ckpt = out / CHECKPOINT_SUBDIR
    exists = (ckpt / "config.json").exists()
    if exists and not args.resume:
        step = read_checkpoint_config(ckpt)["step"]
        raise CheckpointError(f"{ckpt}: already holds a checkpoint at step {step}; pass --resume to continue it "
                              "or choose another --out")
    if exists and not has_train_state(ckpt):
        raise CheckpointError(f"{ckpt}: release-only checkpoint (no train_state.safetensors); cannot resume it")
    resuming = args.resume and exists
    if resuming:
        ae_cfg, cfg = _resume_configs(ckpt)
    else:
        ae_cfg, cfg = autoencoder_config(args.preset), copy.deepcopy(TRAIN_PRESETS[args.preset])
    cfg = replace_config(cfg, given_options(args, AutoencoderTrainConfig), "train autoencoder")
    torch.manual_seed(cfg.seed)
    ae = Autoencoder(ae_cfg).to(device)
    optimizer = _make_optimizer(ae, cfg)
    trainer = AutoencoderTrainer(ae, optimizer, cfg, FrameSplit(readers, cfg), out, device)
    if resuming:
        trainer.step = load_train_state(ckpt, {"autoencoder": ae}, {"autoencoder": optimizer})
    return trainer


def train(trainer: AutoencoderTrainer, log: RunLog, stop_after: int | None = None,
          max_seconds: float | None = None) -> bool:
    """Run towards cfg.steps in the training loop (model/training/loop.py): metric rows averaged over
    log_every steps, held-out PSNR, checkpoints. True when cfg.steps is reached.

    `stop_after` (steps in this call) and `max_seconds` end the call early with a checkpoint, for
    time-sliced runs on a shared machine; Ctrl-C does the same and re-raises.
    """
    cfg = trainer.cfg
    loop = LoopConfig(steps=cfg.steps, desc="autoencoder", log_every=cfg.log_every, ckpt_every=cfg.ckpt_every,
                      log_first=False, log_last=True, average=True, save_last=False, rates=False,
                      postfix=("loss", "val_psnr"))  # the last step is saved by finish()
    until = None if stop_after is None else trainer.step + stop_after
    budget = Budget(None if max_seconds is None else time.monotonic() + max_seconds)
    TrainLoop(trainer, loop, log, budget=budget, until=until).run()
    return trainer.step >= cfg.steps


def finish(trainer: AutoencoderTrainer, log: RunLog) -> dict:
    """Final latent stats, PSNR, decode speed, checkpoint, plots and the comparison image."""
    trainer.update_latent_stats(trainer.cfg.stats_frames)
    val_psnr, original, rebuilt = trainer.evaluate()
    extra = {
        "val_psnr": round(val_psnr, 3),
        "val_episodes": trainer.data.val_episodes,
        "decode_ms_per_frame": round(decode_ms_per_frame(trainer.ae, batch=3), 3),
        "decode_threads": torch.get_num_threads(),
        "parameters": count_parameters(trainer.ae),
    }
    trainer.write(extra)
    log.plot(title="autoencoder")
    write_comparison(trainer.out / "recon.png", original, rebuilt)
    return extra


def write_comparison(path: Path, original: np.ndarray, rebuilt: np.ndarray, count: int = 8, scale: int = 4) -> Path:
    """PNG grid: held-out originals (top row) above their reconstructions (bottom row)."""
    from PIL import Image

    idx = np.linspace(0, len(original) - 1, min(count, len(original))).round().astype(int)
    grid = np.concatenate([np.concatenate(list(original[idx]), 1), np.concatenate(list(rebuilt[idx]), 1)], 0)
    grid = grid.repeat(scale, 0).repeat(scale, 1)  # nearest-neighbour: show the real pixels
    Image.fromarray(grid).save(path)
    return path


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset directory (episodes)")
    parser.add_argument("--out", required=True, help="run directory: checkpoint/, metrics.csv/png, recon.png")
    parser.add_argument("--preset", default="default", choices=sorted(AUTOENCODER_PRESETS),
                        help="network and training preset (ignored with --resume: the checkpoint's is used)")
    add_options(parser, AutoencoderTrainConfig)  # default None: the preset's (or the resumed run's) value
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint if there is one")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--stop-after", dest="stop_after", type=int,
                        help="checkpoint and stop after this many steps of this invocation (resume later)")
    parser.add_argument("--max-minutes", dest="max_minutes", type=float,
                        help="checkpoint and stop after this much wall time (resume later)")


def run(args: argparse.Namespace) -> int:
    with torch_threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from world.data.dataset import open_dataset

    device = resolve_device(args.device)
    trainer = build_trainer(args, open_dataset(args.data), device)
    log = RunLog(trainer.out, "metrics", resume_step=trainer.step + 1 if args.resume else None)
    print(f"autoencoder: {count_parameters(trainer.ae) / 1e6:.2f}M parameters, {len(trainer.data.train)} training "
          f"frames, {len(trainer.data.val)} held-out ({len(trainer.data.val_episodes)} episodes), on {device}, "
          f"from step {trainer.step} to {trainer.cfg.steps}", flush=True)
    t0 = time.monotonic()
    max_seconds = None if args.max_minutes is None else 60.0 * args.max_minutes
    try:
        done = train(trainer, log, args.stop_after, max_seconds)
    except KeyboardInterrupt:
        return 130
    if not done:
        print(f"autoencoder: stopped at step {trainer.step} of {trainer.cfg.steps}; continue with --resume "
              f"-> {trainer.ckpt_dir}", flush=True)
        return 0
    extra = finish(trainer, log)
    print(f"autoencoder: step {trainer.step}, held-out PSNR {extra['val_psnr']:.2f} dB, decode "
          f"{extra['decode_ms_per_frame']:.2f} ms/frame ({extra['decode_threads']} threads), "
          f"{time.monotonic() - t0:.0f} s -> {trainer.ckpt_dir}", flush=True)
    return 0
