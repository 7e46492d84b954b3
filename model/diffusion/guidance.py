"""Classifier-free guidance: v = c + g (c - u) (docs/design.md §3).

The conditional and unconditional rows run in one batch, conditional first (model/runtime/stream.py
`Conditioning`: the second half leaves out what the sampler's `guide` says: the prompt and the
actions ("all"), the actions only ("actions": u_a, same prompt and the null action, so
c + g (c - u_a) amplifies the response to keys) or the prompt only ("text"));
`apply_guidance` folds them back.
"""

from __future__ import annotations

import torch


def apply_guidance(v: torch.Tensor, guidance: float) -> torch.Tensor:
    """[2B, ...] network output, cond rows then uncond rows -> [B, ...] guided: c + g (c - u)."""
    v_cond, v_uncond = v.chunk(2)
    return v_cond + guidance * (v_cond - v_uncond)
