"""A small convolutional autoencoder: 64x64 RGB frames <-> 16x16x4 latents for the diffusion model.

Deterministic encoder (no KL): a regularised autoencoder in the sense of Ghosh et al. 2019, "From
Variational to Deterministic Autoencoders". Gaussian noise (5% of each channel's std) is added to
the latents before the decoder during training, so the decoder tolerates the small errors a
few-step sampler makes; a tiny L2 penalty keeps the raw latent scale from drifting.

The decoder runs on the CPU in the real-time loop (every generated frame passes through it), so it
is built for speed: no normalisation layers, most of its work at 16x16, and upsampling by a conv
at the low resolution followed by a pixel shuffle (depth-to-space) instead of a conv at the high
one.

Latent normalisation: `encode` returns per-channel standardised latents (~zero mean, unit
variance) using the `latent_mean` / `latent_std` buffers, which training fills in from data
(`set_latent_stats`); `decode` undoes it. Training itself works on the raw latents
(`encode_raw` / `decode_raw`), so the buffers never move the training target.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass
class AutoencoderConfig:
    image_size: int = 64
    latent_channels: int = 4
    downsample: int = 4  # power of two >= 2: 64x64 frames -> 16x16 latents
    # Widths per resolution, for the log2(downsample) resolutions from image_size/2 down to the
    # latent size (encoder) and back up (decoder). Nothing runs at full resolution: the encoder
    # starts with space-to-depth, the decoder ends with a conv to 2x2 RGB blocks + depth-to-space.
    enc_channels: tuple[int, ...] = (48, 96)
    enc_blocks: tuple[int, ...] = (1, 2)  # residual blocks per encoder resolution
    dec_channels: tuple[int, ...] = (96, 32)
    dec_blocks: tuple[int, ...] = (2, 1)  # residual blocks per decoder resolution
    # Training-time Gaussian noise on the latents, in units of each channel's std (so in the units of
    # the normalised latents the diffusion model produces): the decoder learns to forgive its errors.
    latent_noise: float = 0.05
    latent_l2: float = 1e-4  # weight of mean(z_raw^2): keeps the raw latent scale from drifting

    def __post_init__(self) -> None:
        if self.downsample < 2 or self.downsample & (self.downsample - 1):
            raise ValueError(f"downsample must be a power of two >= 2, got {self.downsample}")
        levels = self.downsample.bit_length() - 1
        if self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} is not divisible by downsample {self.downsample}")
        for name in ("enc_channels", "enc_blocks", "dec_channels", "dec_blocks"):
            if len(getattr(self, name)) != levels:
                raise ValueError(f"{name} needs {levels} entries (one per resolution), got {getattr(self, name)}")

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """[C, h, w] of one frame's latent."""
        return (self.latent_channels, self.latent_size, self.latent_size)


AUTOENCODER_PRESETS: dict[str, AutoencoderConfig] = {
    # Seconds-long tests on synthetic frames.
    "tiny": AutoencoderConfig(enc_channels=(8, 16), enc_blocks=(0, 1), dec_channels=(16, 8), dec_blocks=(1, 0)),
    # The bundled world: ~1-2 ms/frame decode on 2 CPU threads.
    "default": AutoencoderConfig(),
    # Twice the latent channels (16x16x8, 6x fewer numbers than the frame): for motion smaller than
    # what the 4-channel latent loses (a step forward); same layers, so decoding costs about the same.
    "sharp8": AutoencoderConfig(latent_channels=8),
}


def autoencoder_config(preset: str) -> AutoencoderConfig:
    if preset not in AUTOENCODER_PRESETS:
        raise ValueError(f"unknown autoencoder preset {preset!r}; known: {sorted(AUTOENCODER_PRESETS)}")
    return copy.deepcopy(AUTOENCODER_PRESETS[preset])


# ----------------------------------------------------------------------------- layers


class ResBlock(nn.Module):
    """x + conv(silu(conv(silu(x)))); no normalisation, so the decoder stays cheap on CPU."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class Upsample(nn.Module):
    """2x up: a conv at the low resolution to 4x the channels, then depth-to-space."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out * 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


class Downsample(nn.Module):
    """2x down: space-to-depth, then a conv at the low resolution (sees every input pixel)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in * 4, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pixel_unshuffle(x, 2))


def _stage(channels: int, blocks: int) -> list[nn.Module]:
    return [ResBlock(channels) for _ in range(blocks)]


class Encoder(nn.Module):
    """[B, 3, H, W] -> [B, C, H/d, W/d]: space-to-depth stem, then stages that halve the size."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch, blocks = cfg.enc_channels, cfg.enc_blocks
        layers: list[nn.Module] = [Downsample(3, ch[0])]
        for i in range(len(ch)):
            layers += _stage(ch[i], blocks[i])
            if i + 1 < len(ch):
                layers.append(Downsample(ch[i], ch[i + 1]))
        layers += [nn.SiLU(), nn.Conv2d(ch[-1], cfg.latent_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """[B, C, h, w] -> [B, 3, H, W]: stages that double the size; the last emits 2x2 RGB blocks."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch, blocks = cfg.dec_channels, cfg.dec_blocks
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)]
        for i in range(len(ch)):
            layers += _stage(ch[i], blocks[i])
            if i + 1 < len(ch):
                layers.append(Upsample(ch[i], ch[i + 1]))
        layers += [nn.SiLU(), Upsample(ch[-1], 3)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


# ----------------------------------------------------------------------------- the model


class Autoencoder(nn.Module):
    """encode: [B, 3, H, W] in [-1, 1] -> [B, C, h, w] normalised; decode: the inverse, clamped."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        c = config.latent_channels
        self.register_buffer("latent_mean", torch.zeros(c))
        self.register_buffer("latent_std", torch.ones(c))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        # Residual branches start near zero so the unnormalised stack begins as a short, stable net.
        for m in self.modules():
            if isinstance(m, ResBlock):
                m.conv2.weight.data.mul_(0.1)

    def _check_images(self, x: torch.Tensor) -> None:
        s = self.config.image_size
        assert x.ndim == 4 and x.shape[1:] == (3, s, s), f"expected [B, 3, {s}, {s}], got {list(x.shape)}"

    def _check_latents(self, z: torch.Tensor) -> None:
        shape = self.config.latent_shape
        assert z.ndim == 4 and z.shape[1:] == shape, f"expected [B, {', '.join(map(str, shape))}], got {list(z.shape)}"

    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> unnormalised latents [B, C, h, w] (what training sees)."""
        self._check_images(x)
        return self.encoder(x)

    def decode_raw(self, z_raw: torch.Tensor) -> torch.Tensor:
        """Unnormalised latents -> [B, 3, H, W], unclamped (the loss wants gradients at the edges)."""
        self._check_latents(z_raw)
        return self.decoder(z_raw)

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = rearrange(self.latent_mean, "c -> 1 c 1 1").to(z.dtype)
        std = rearrange(self.latent_std, "c -> 1 c 1 1").to(z.dtype)
        return mean, std

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> normalised latents [B, C, h, w] (~unit variance per channel)."""
        z = self.encode_raw(x)
        mean, std = self._stats(z)
        return (z - mean) / std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, h, w] -> images [B, 3, H, W] in [-1, 1]."""
        self._check_latents(z)
        mean, std = self._stats(z)
        return self.decoder(z * std + mean).clamp(-1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def set_latent_stats(self, z_raw: torch.Tensor) -> None:
        """Per-channel mean/std of raw latents [N, C, h, w] -> the normalisation buffers."""
        self._check_latents(z_raw)
        z = rearrange(z_raw.float(), "n c h w -> c (n h w)")
        self.latent_mean.copy_(z.mean(dim=1))
        self.latent_std.copy_(z.std(dim=1).clamp_min(1e-4))
