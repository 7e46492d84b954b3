"""Frames <-> tensors and image measures, shared by training, the runtime and evaluation."""

from __future__ import annotations

import math

import numpy as np
import torch
from einops import rearrange


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, *, data_range: float,
         cap_db: float = math.inf, min_mse: float = 0.0) -> float:
    """Peak signal-to-noise ratio in dB, 10 log10(data_range^2 / mse), of two arrays of one shape.

    data_range: peak-to-peak of the values (255 for uint8 frames, 2 for images in [-1, 1]). The mean
    squared error (in float64) is floored at `min_mse`, and the result capped at `cap_db`, which is
    also what identical inputs score when there is no floor (PSNR of identical images is infinite).
    """
    a, b = _float64(a), _float64(b)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ {a.shape} vs {b.shape}")
    mse = max(float(np.mean((a - b) ** 2)), min_mse)
    if mse == 0.0:
        return cap_db
    return min(cap_db, float(10.0 * np.log10(data_range**2 / mse)))


def _float64(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def frames_to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1]."""
    if not torch.is_tensor(frames):
        a = np.asarray(frames)
        frames = torch.from_numpy(a if a.flags.writeable else a.copy())  # read-only memmaps: copy (uint8, cheap)
    t = frames
    ok = t.dtype == torch.uint8 and t.ndim == 4 and t.shape[-1] == 3
    assert ok, f"expected uint8 [N, H, W, 3], got {t.dtype} {list(t.shape)}"
    return rearrange(t, "n h w c -> n c h w").float().div(127.5).sub(1.0)


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3] (clamped, rounded)."""
    assert x.ndim == 4 and x.shape[1] == 3, f"expected [N, 3, H, W], got {list(x.shape)}"
    u8 = x.detach().float().clamp(-1, 1).add(1.0).mul(127.5).round().to(torch.uint8)
    return rearrange(u8, "n c h w -> n h w c").cpu().numpy()
