"""The small convolutional trunk shared by the inverse-dynamics model and the theme classifier."""

from __future__ import annotations

import torch
from torch import nn


def frames_to_input(frames: torch.Tensor, diffs: bool) -> torch.Tensor:
    """[B, T, H, W, 3] uint8 -> [B, C, H, W] float in [-1, 1], C = 3T (+ 3(T-1) with diffs).

    Differences of consecutive frames are appended when asked because motion lives in them: a
    small net given them explicitly learns camera motion in far fewer steps than from raw stacks.
    """
    B, T, H, W, C = frames.shape
    assert C == 3, f"expected RGB frames [B, T, H, W, 3], got {tuple(frames.shape)}"
    x = frames.float().div(127.5).sub(1.0).permute(0, 1, 4, 2, 3)  # [B, T, 3, H, W]
    parts = [x.reshape(B, T * 3, H, W)]
    if diffs and T > 1:
        parts.append((x[:, 1:] - x[:, :-1]).reshape(B, (T - 1) * 3, H, W))
    return torch.cat(parts, dim=1)


class ConvTrunk(nn.Module):
    """Stride-2 conv blocks, then flatten ([B, channels[-1] * H/2^n * W/2^n], keeps where things
    are) or, with pool, global mean and max pooling ([B, 2 * channels[-1]], position-free)."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], height: int, width: int, pool: bool = False):
        super().__init__()
        self.pool = pool
        scale = 2 ** len(channels)
        if height % scale or width % scale:
            raise ValueError(f"frame size {height}x{width} must be divisible by {scale} for {len(channels)} blocks")
        blocks: list[nn.Module] = []
        prev = in_channels
        for c in channels:
            blocks += [nn.Conv2d(prev, c, 3, stride=2, padding=1), nn.GroupNorm(min(8, c), c), nn.SiLU()]
            prev = c
        self.net = nn.Sequential(*blocks)
        self.out_dim = 2 * prev if pool else prev * (height // scale) * (width // scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x)  # [B, C, h, w]
        if self.pool:  # mean and max over positions: what is there, wherever it is
            return torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
        return h.flatten(1)
