"""Classifier-free guidance: v = c + g (c - u) (docs/design.md §3).

The conditional and unconditional rows run in one batch, conditional first (model/runtime/stream.py
`Conditioning`: the second half has no prompt and null actions); `apply_guidance` folds them back.
"""

from __future__ import annotations

import torch


def apply_guidance(v: torch.Tensor, guidance: float) -> torch.Tensor:
    """[2B, ...] network output, cond rows then uncond rows -> [B, ...] guided: c + g (c - u)."""
    v_cond, v_uncond = v.chunk(2)
    return v_cond + guidance * (v_cond - v_uncond)
