"""Rotary position embedding over (time, height, width) for the causal DiT.

Each head's channels are split into three groups that rotate with the frame index, the token row
and the token column (the split of Wan / Self-Forcing: height and width take 2 * (d // 6) channels
each, time the rest). Keys are cached *without* rotation; attention rotates queries and keys with
window-relative frame positions at every step (docs/design.md §3), so the time table only needs as many
rows as one attention span holds (sink + window frames) and the stream length is unbounded.
"""

from __future__ import annotations

import torch
from torch import nn


def _axis_freqs(dim: int, length: int, theta: float) -> torch.Tensor:
    """[length, dim // 2] rotation angles for positions 0..length-1 on one axis."""
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return torch.outer(torch.arange(length, dtype=torch.float64), inv)


def split_head_dim(head_dim: int) -> tuple[int, int, int]:
    """Channels rotated by (time, height, width); all even, summing to head_dim."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


class Rope3D(nn.Module):
    """cos/sin tables for `max_frames` frames of a `grid` x `grid` token grid.

    Token order inside a frame is row-major (h, w), frames follow one another: token n of a span
    of F frames sits at frame n // grid**2. `rotate(x, first_frame)` rotates [B, H, N, D] whose
    tokens are frames first_frame, first_frame + 1, ... of the span.
    """

    def __init__(self, head_dim: int, grid: int, max_frames: int, theta: float = 10000.0):
        super().__init__()
        dt, dh, dw = split_head_dim(head_dim)
        ft = _axis_freqs(dt, max_frames, theta)  # [T, dt/2]
        fh = _axis_freqs(dh, grid, theta)  # [g, dh/2]
        fw = _axis_freqs(dw, grid, theta)  # [g, dw/2]
        t_idx, h_idx, w_idx = torch.meshgrid(
            torch.arange(max_frames), torch.arange(grid), torch.arange(grid), indexing="ij"
        )
        angles = torch.cat([ft[t_idx], fh[h_idx], fw[w_idx]], dim=-1).flatten(0, 2)  # [T*g*g, D/2]
        self.tokens_per_frame = grid * grid
        self.max_frames = max_frames
        # Non-persistent: derived from the config, never stored in checkpoints. Complex form: one
        # complex multiply rotates every channel pair (much faster on CPU than slicing + stacking).
        self.register_buffer("freqs", torch.polar(torch.ones_like(angles), angles).to(torch.complex64),
                             persistent=False)

    def rotate(self, x: torch.Tensor, first_frame: int = 0) -> torch.Tensor:
        """x [B, H, N, D] (N a whole number of frames) -> same shape, rotated pairwise."""
        n = x.shape[-2]
        start = first_frame * self.tokens_per_frame
        if n % self.tokens_per_frame or start + n > self.freqs.shape[0]:
            raise ValueError(
                f"RoPE span of {n} tokens from frame {first_frame} exceeds the table "
                f"({self.max_frames} frames of {self.tokens_per_frame} tokens)"
            )
        pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # [B, H, N, D/2]
        out = torch.view_as_real(pairs * self.freqs[start : start + n])
        return out.flatten(-2).to(x.dtype)
