"""The transformer pieces every network family shares (model/nets/world_net.py): the timestep and
action embedders, adaLN modulation and the block (self-attention over the causal span, cross-attention
to the prompt, MLP).

The patch-token DiT (model/nets/dit.py) is a stack of these blocks over its patch tokens; the U-Net
(model/nets/unet.py) runs them at its lowest level. Which keys a query sees is not decided here: a
block's self-attention calls an `Attend` the network builds for full-sequence training or for a
streaming KV cache (model/nets/kv_cache.py), so both modes share every weight and line of this file.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """t [...] network time in [0, 1000] -> [..., dim] sinusoidal features (DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[..., None] * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t [B, F] -> [B, F, D]."""
        return self.mlp(timestep_features(t, self.freq_dim))


class ActionEmbedder(nn.Module):
    """Per-frame action vector -> [D]; `drop` rows use a learned null action (guidance)."""

    def __init__(self, action_dim: int, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(action_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null = nn.Parameter(torch.zeros(dim))

    def forward(self, actions: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
        """actions [B, F, A], drop [B] bool or None -> [B, F, D]."""
        emb = self.mlp(actions)
        if drop is None:
            drop = torch.zeros(actions.shape[0], dtype=torch.bool, device=actions.device)
        # torch.where keeps `null` in the graph even when nothing is dropped (DDP sees its grad).
        return torch.where(drop[:, None, None], self.null.to(emb.dtype), emb)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


# ----------------------------------------------------------------------------- blocks

# attend(layer, q, k, v) -> out: q/k/v [B, H, N, hd] unrotated, out [B, H, Nq, hd].
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        # QK-norm (Wan / Self-Forcing) keeps attention logits bounded; keys are cached after it.
        self.q_norm = nn.RMSNorm(dim // heads, eps=1e-6)
        self.k_norm = nn.RMSNorm(dim // heads, eps=1e-6)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, layer: int, attend: Attend) -> torch.Tensor:
        """x [B, N, D] -> [B, N, D]; which keys are visible is `attend`'s business."""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        out = attend(layer, self.q_norm(q), self.k_norm(k), v)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def text_kv(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ctx [B, L, D] -> K, V [B, H, L, hd]: computed once per prompt and cached."""
        k, v = rearrange(self.kv(ctx), "b l (two h d) -> two b h l d", two=2, h=self.heads)
        return k, v

    def forward(self, x: torch.Tensor, text: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """x [B, N, D], text: groups (k/v [B_g, H, L_g, hd], mask [B_g, L_g] bool) covering the rows
        in order (one group, or one per stream of a batch: prompts differ in length) -> [B, N, D]."""
        q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.heads)
        qs = q.split([k.shape[0] for k, _, _ in text]) if len(text) > 1 else (q,)
        outs = [F.scaled_dot_product_attention(qg, k, v, attn_mask=mask[:, None, None, :])
                for qg, (k, v, mask) in zip(qs, text)]  # fmt: skip
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        d = dim
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(d, heads)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.cross = CrossAttention(d, heads)
        self.norm3 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * mlp_ratio)
        # exact (erf) GELU: ~3x cheaper than the tanh approximation on CPU
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
        # adaLN-single: this block's learned offset to the shared per-frame modulation.
        self.mod_table = nn.Parameter(torch.zeros(6, d))

    def write_kv(self, x: torch.Tensor, mod: torch.Tensor, layer: int, attend: Attend) -> None:
        """The self-attention K/V of x [B, F, T, D] go through `attend` (a cache writes them there), and
        nothing after it runs: a K/V-only pass needs no more of the last block."""
        B, Fr, T, D = x.shape
        shift1, scale1 = (mod[:, :, :2] + self.mod_table[:2]).unsqueeze(2).unbind(3)  # [B, F, 1, D]
        self.attn(modulate(self.norm1(x), shift1, scale1).reshape(B, Fr * T, D), layer, attend)

    def forward(self, x: torch.Tensor, mod: torch.Tensor, layer: int, attend: Attend, text: list) -> torch.Tensor:
        """x [B, F, T, D], mod [B, F, 6, D] shared modulation, text [(k, v, mask)] groups -> [B, F, T, D]."""
        B, Fr, T, D = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = (mod + self.mod_table).unsqueeze(2).unbind(3)  # [B,F,1,D]
        h = modulate(self.norm1(x), shift1, scale1).reshape(B, Fr * T, D)
        x = x + gate1 * self.attn(h, layer, attend).reshape(B, Fr, T, D)
        x = x + self.cross(self.norm2(x).reshape(B, Fr * T, D), text).reshape(B, Fr, T, D)
        return x + gate2 * self.mlp(modulate(self.norm3(x), shift2, scale2))
