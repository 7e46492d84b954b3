"""Rectified flow: the noise schedule, training levels and loss (docs/design.md §3).

Noise level s in [0, 1] (s = 1 pure noise):

    x_s = (1 - s) x0 + s eps          v = eps - x0          x0 = x_s - s v

The network sees time t = 1000 s. A shift k warps levels towards noise,
s' = k s / (1 + (k - 1) s), which matters less at 64x64 than at 832x480 (k = 5 there), so k is a
config value (default 3, to be tuned). The network is a callable; nothing here knows its insides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TIME_SCALE = 1000.0  # network time t = 1000 s


@dataclass
class FlowConfig:
    shift: float = 3.0  # k in s' = k s / (1 + (k - 1) s)
    level_sampling: str = "logit_normal"  # training levels: "logit_normal" (SD3) or "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def __post_init__(self) -> None:
        if self.shift <= 0:
            raise ValueError(f"shift must be positive, got {self.shift}")
        if self.level_sampling not in ("logit_normal", "uniform"):
            raise ValueError(f"level_sampling must be 'logit_normal' or 'uniform', got {self.level_sampling!r}")


def shift_level(s: torch.Tensor | float, k: float) -> torch.Tensor | float:
    """s' = k s / (1 + (k - 1) s): maps 0 -> 0 and 1 -> 1, pushing the middle towards noise for k > 1."""
    return k * s / (1 + (k - 1) * s)


def network_time(s: torch.Tensor | float) -> torch.Tensor | float:
    return s * TIME_SCALE


def _frames(s: torch.Tensor) -> torch.Tensor:
    """Per-frame levels [B, F] -> [B, F, 1, 1, 1] to broadcast over latent frames."""
    return s[..., None, None, None]


def add_noise(x0: torch.Tensor, eps: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x0, eps [B, F, C, h, w], s [B, F] -> x_s."""
    s = _frames(s)
    return (1 - s) * x0 + s * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return eps - x0


def predict_x0(x_s: torch.Tensor, v: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
    """x0 = x_s - s v; s a float or [B, F]."""
    return x_s - (_frames(s) if torch.is_tensor(s) else s) * v


def sample_levels(
    batch: int, n_chunks: int, chunk_frames: int, cfg: FlowConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Training levels [B, F]: one independent level per chunk (diffusion forcing), shared by its frames."""
    if cfg.level_sampling == "logit_normal":
        u = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(batch, n_chunks, generator=generator))
    else:
        u = torch.rand(batch, n_chunks, generator=generator)
    return shift_level(u, cfg.shift).repeat_interleave(chunk_frames, dim=1)


def flow_loss(v_pred: torch.Tensor, v_target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared velocity error; weight [B, F] (e.g. 0 for clean context frames) averages over frames."""
    per_frame = (v_pred.float() - v_target.float()).pow(2).mean(dim=(2, 3, 4))  # [B, F]
    if weight is None:
        return per_frame.mean()
    return (per_frame * weight).sum() / weight.sum().clamp_min(1.0)


def level_grid(steps: int, shift: float) -> tuple[float, ...]:
    """`steps` levels from 1 down (0 excluded): uniform 1, 1 - 1/n, ... warped by the shift."""
    return tuple(float(shift_level(1.0 - j / steps, shift)) for j in range(steps))
