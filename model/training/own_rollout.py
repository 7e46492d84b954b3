"""The teacher's own rollout as training context (docs/world-model.md, "Trained for its own rollouts").

A teacher trained only on clean (or lightly noised) data context never sees the pictures it makes
itself; streaming, every chunk after the first reads them, and the errors compound into blobs or
haze (exposure bias; Self-Forcing, DIAMOND). Here a share of each batch's clips get their middle
chunks replaced by the network's own generation before the loss:

    chunk 0           data (the start a stream is given)
    chunks 1 .. n-2   generated one after another from pure noise, Euler over the release's levels,
                      unguided, each reading the clean chunks before it (what the teacher sampler's
                      refresh pass writes), no gradient
    chunk n-1         data, noised to a training level: the only chunk with loss

The target stays the data's (or the reference's guided velocity given the DATA context), so the
network learns to continue the true world from its own slightly wrong pictures: to put back the
detail and contrast its rollout lost instead of compounding the loss.
"""

from __future__ import annotations

import torch

from model.diffusion.flow import network_time
from model.nets.world_net import NetConfig, stacked_previous


@torch.no_grad()
def own_context(net: torch.nn.Module, cfg: NetConfig, x0: torch.Tensor, actions: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor, levels: tuple[float, ...], gen: torch.Generator) -> torch.Tensor:
    """x0 [B, F, c, h, w] clean clip of n >= 3 chunks -> a copy whose chunks 1 .. n-2 are the network's
    own rollout (module docstring); cfg: net's configuration; actions [B, F, A], text [B, L, text_dim],
    text_mask [B, L] bool; levels: the descending Euler levels in (0, 1] every generated chunk is denoised through."""
    C, K = cfg.chunk_frames, cfg.copy_frames
    B, Fr = x0.shape[:2]
    n_chunks = Fr // C
    if n_chunks < 3 or Fr % C:
        raise ValueError(f"an own-rollout clip needs at least 3 whole chunks of {C} frames, got {Fr} frames")
    if not levels or list(levels) != sorted(levels, reverse=True) or not 0 < levels[-1] <= levels[0] <= 1:
        raise ValueError(f"rollout levels must descend within (0, 1], got {levels}")
    x = x0.clone()
    steps = list(zip(levels, (*levels[1:], 0.0)))
    for i in range(1, n_chunks - 1):
        context = x[:, : i * C]
        z = torch.randn((B, C, *x0.shape[2:]), generator=gen).to(x0)
        acts = actions[:, : (i + 1) * C]
        for s_now, s_next in steps:
            seq = torch.cat([context, z], 1)
            t = torch.cat([torch.zeros(B, i * C), torch.full((B, C), float(network_time(s_now)))], 1).to(x0)
            # The copy path reads the clean frames before each chunk, as the refreshed stream stores them.
            prev = stacked_previous(seq, C, K) if cfg.copy_path else None
            v = net(seq, t, acts, text, text_mask, prev=prev)[:, -C:].float()
            z = (z.float() + (s_next - s_now) * v).to(x0)
        x[:, i * C : (i + 1) * C] = z
    return x
