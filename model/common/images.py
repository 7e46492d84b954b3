"""Image measures shared by training and evaluation."""

from __future__ import annotations

import math

import numpy as np
import torch


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
