"""Convolutions at the latent's full resolution around the causal transformer (docs/world-model.md).

A 5-degree turn moves the 64x64 view about 4 pixels a frame: one latent pixel, half a patch-2
token. A transformer on patch tokens must learn that sub-token shift from a global modulation; a
3x3 convolution over the noisy frame stacked with the previous frames makes it one weight
pattern. Every small world model that learned control does this (DIAMOND, GameNGen, Delta-IRIS).

`ConvIn` turns each frame's input planes into the transformer's tokens; `ConvOut` turns the
transformer's output back into the velocity, with skip connections from `ConvIn` (a U-Net whose
lowest resolution is the token grid). Frames are processed independently here: mixing across
frames (the chunk, the cached context, the prompt) is the transformer's job.

- Input planes per frame [in_ch, h, w]: the noisy latent, the copy path's previous frames as the
  context holds them (model/nets/dit.py, `CausalDiT.previous_frames`) and the action planes:
  the frame's own action and the sum of the chunk's actions up to it, broadcast over the plane
  (where the view is now relative to the context depends on every earlier frame's action).
- `levels` 1: residual blocks at h x w, then 2x2 patches -> tokens (the DiT's grid).
  `levels` 2: residual blocks at h x w, a stride-2 convolution, blocks at h/2 x w/2 of twice
  the width, and each position of that map is a token (the same grid, for patch 2).
- Time and action reach every block through adaptive group norm (DIAMOND): a zero-initialised
  projection of the frame's condition scales and shifts the normalised features, and each
  block's last convolution starts at zero, so a fresh block is the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class AdaGroupNorm(nn.Module):
    """GroupNorm whose scale and shift come from the per-frame condition (zero-initialised)."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels, affine=False, eps=1e-6)
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x [N, ch, h, w], cond [N, D] -> [N, ch, h, w]."""
        scale, shift = self.proj(cond)[:, :, None, None].chunk(2, dim=1)
        return self.norm(x) * (1 + scale) + shift


class ResBlock(nn.Module):
    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.norm1 = AdaGroupNorm(channels, cond_dim)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = AdaGroupNorm(channels, cond_dim)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x, cond)))
        return x + self.conv2(F.silu(self.norm2(h, cond)))


def action_planes(actions: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """actions [B, F, A] -> [B, F, 2A]: each frame's action and the running sum of its chunk's actions
    up to and including it (chunks never look across each other here: the context does that)."""
    B, Fr, A = actions.shape
    per_chunk = actions.reshape(B, Fr // chunk_frames, chunk_frames, A)
    running = per_chunk.cumsum(2).reshape(B, Fr, A)
    return torch.cat([actions, running], -1)


class ConvIn(nn.Module):
    """Per-frame planes [N, in_ch, h, w] -> tokens [N, T, dim] and the skips `ConvOut` reads."""

    def __init__(self, in_ch: int, width: int, blocks: int, levels: int, patch: int, dim: int, cond_dim: int):
        super().__init__()
        if levels not in (1, 2):
            raise ValueError(f"conv_levels must be 1 or 2, got {levels}")
        if levels == 2 and patch != 2:
            raise ValueError("conv_levels 2 downsamples by 2: it needs patch 2")
        self.levels, self.patch = levels, patch
        self.conv_in = nn.Conv2d(in_ch, width, 3, padding=1)
        self.full = nn.ModuleList([ResBlock(width, cond_dim) for _ in range(blocks)])
        if levels == 2:
            self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
            self.low = nn.ModuleList([ResBlock(2 * width, cond_dim) for _ in range(blocks)])
            self.to_tokens = nn.Linear(2 * width, dim)
        else:
            self.to_tokens = nn.Linear(width * patch * patch, dim)

    def forward(self, planes: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.conv_in(planes)
        for blk in self.full:
            h = blk(h, cond)
        skips = [h]
        if self.levels == 2:
            h = self.down(h)
            for blk in self.low:
                h = blk(h, cond)
            skips.append(h)
            return self.to_tokens(rearrange(h, "n c gh gw -> n (gh gw) c")), skips
        p = self.patch
        return self.to_tokens(rearrange(h, "n c (gh p) (gw q) -> n (gh gw) (p q c)", p=p, q=p)), skips


class ConvOut(nn.Module):
    """Token features [N, T, feat] (the transformer's final layer) + skips -> velocity [N, out_ch, h, w]."""

    def __init__(self, out_ch: int, width: int, blocks: int, levels: int, patch: int, cond_dim: int):
        super().__init__()
        self.levels, self.patch, self.width = levels, patch, width
        if levels == 2:
            self.low = nn.ModuleList([ResBlock(2 * width, cond_dim) for _ in range(blocks)])
            self.up = nn.Conv2d(2 * width, width, 3, padding=1)
        self.full = nn.ModuleList([ResBlock(width, cond_dim) for _ in range(blocks)])
        self.norm_out = nn.GroupNorm(_groups(width), width, eps=1e-6)
        self.conv_out = nn.Conv2d(width, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @staticmethod
    def token_features(width: int, levels: int, patch: int) -> int:
        """Features per token the transformer's final layer must produce."""
        return 2 * width if levels == 2 else width * patch * patch

    def forward(self, feats: torch.Tensor, skips: list[torch.Tensor], cond: torch.Tensor, grid: int) -> torch.Tensor:
        if self.levels == 2:
            h = rearrange(feats, "n (gh gw) c -> n c gh gw", gh=grid, gw=grid) + skips[1]
            for blk in self.low:
                h = blk(h, cond)
            h = self.up(F.interpolate(h, scale_factor=2, mode="nearest"))
        else:
            p = self.patch
            h = rearrange(feats, "n (gh gw) (p q c) -> n c (gh p) (gw q)", gh=grid, gw=grid, p=p, q=p)
        h = h + skips[0]
        for blk in self.full:
            h = blk(h, cond)
        return self.conv_out(F.silu(self.norm_out(h)))
