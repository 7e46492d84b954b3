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


def apply_projected_guidance(v: torch.Tensor, guidance: float, x0_cond: torch.Tensor,
                             parallel: float) -> torch.Tensor:
    """[2B, F, C, h, w] velocities (cond rows, then uncond) -> [B, F, C, h, w] guided, with the part of
    the guidance along the conditional prediction x0_cond [B, F, C, h, w] weighted by `parallel`
    (adaptive projected guidance, Sadat et al. 2024: that part scales the picture's own values up,
    which is what saturates; the orthogonal part carries what the condition changes). parallel = 1
    is plain c + g (c - u), 0 drops the parallel part. The projection is per frame, on the x0
    prediction: x0 = x_s - s v is affine in v, so the velocity's difference projected onto x0_cond's
    direction is the x0 difference's, scaled by -1/s on both sides, which cancels."""
    v_cond, v_uncond = v.chunk(2)
    diff = v_cond - v_uncond
    if parallel != 1.0:
        frame = (-3, -2, -1)
        x0 = x0_cond.float()
        along = (diff.float() * x0).sum(frame, keepdim=True) / (x0 * x0).sum(frame, keepdim=True).clamp_min(1e-12)
        diff = diff - ((1.0 - parallel) * along * x0).to(diff.dtype)
    return v_cond + guidance * diff
