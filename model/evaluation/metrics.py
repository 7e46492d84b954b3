"""Image and score metrics used by the evaluation suite; numpy in, floats out.

Frames are uint8 RGB `[..., H, W, 3]` unless a function says otherwise. Every function is pure
and tested on inputs whose answer is known (identical frames, grey frames, shifted features).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.ndimage import gaussian_filter

from model.common import images

# PSNR of identical frames is infinite; reports need a number, so it is capped here. 100 dB is
# far above anything two different 8-bit frames can reach (one grey level of error everywhere
# already gives 48 dB), so a capped value unambiguously means "bit-identical".
PSNR_CAP_DB = 100.0


def _as_float(frames: np.ndarray) -> np.ndarray:
    return np.asarray(frames, dtype=np.float64)


def psnr(a: np.ndarray, b: np.ndarray, cap: float = PSNR_CAP_DB) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images/stacks of the same shape, capped."""
    return images.psnr(a, b, data_range=255.0, cap_db=cap)


def psnr_per_frame(a: np.ndarray, b: np.ndarray, cap: float = PSNR_CAP_DB) -> np.ndarray:
    """[F] capped PSNR of each frame pair of two [F, H, W, 3] stacks."""
    return np.array([psnr(x, y, cap) for x, y in zip(a, b)], dtype=np.float64)


def ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> float:
    """Structural similarity of two uint8 [H, W, 3] images (Wang et al. 2004), mean over channels.

    Gaussian window sigma 1.5 truncated at 11x11, K1=0.01, K2=0.03, data range 255: the standard
    constants, so values compare with published numbers.
    """
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"ssim: expects two [H, W, C] images of one shape, got {a.shape} and {b.shape}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    x, y = _as_float(a), _as_float(b)
    blur = lambda im: gaussian_filter(im, sigma=(sigma, sigma, 0), truncate=3.5)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def ssim_per_frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[F] SSIM of each frame pair of two [F, H, W, 3] stacks."""
    return np.array([ssim(x, y) for x, y in zip(a, b)], dtype=np.float64)


def hsv_saturation(frames: np.ndarray) -> np.ndarray:
    """Mean HSV saturation (max-min)/max in [0, 1] per frame; [..., H, W, 3] -> [...].

    Black pixels (max 0) count as saturation 0, as in the usual HSV conversion.
    """
    x = _as_float(frames)
    hi, lo = x.max(axis=-1), x.min(axis=-1)
    sat = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-12), 0.0)
    return sat.mean(axis=(-1, -2))


def rms_contrast(frames: np.ndarray) -> np.ndarray:
    """RMS contrast per frame: std of luma (BT.601) scaled to [0, 1]; [..., H, W, 3] -> [...]."""
    x = _as_float(frames) / 255.0
    luma = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114
    return luma.std(axis=(-1, -2))


def _luma(frames: np.ndarray) -> np.ndarray:
    """BT.601 luma in [0, 1]; [..., H, W, 3] uint8 -> [..., H, W]."""
    return _as_float(frames) @ np.array([0.299, 0.587, 0.114]) / 255.0


def gradient_sharpness(frames: np.ndarray) -> np.ndarray:
    """Mean gradient magnitude of luma (forward differences, luma in [0, 1]) per frame;
    [..., H, W, 3] -> [...]. 0 for a flat frame; blurring lowers it, noise raises it."""
    y = _luma(frames)
    gy, gx = np.diff(y, axis=-2)[..., :, :-1], np.diff(y, axis=-1)[..., :-1, :]
    return np.sqrt(gx * gx + gy * gy).mean(axis=(-1, -2))


def colourfulness(frames: np.ndarray) -> np.ndarray:
    """Hasler-Suesstrunk colourfulness per frame on the 0-255 scale; [..., H, W, 3] -> [...].

    rg = R - G, yb = (R + G) / 2 - B; sqrt(std_rg^2 + std_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2)
    (Hasler & Suesstrunk 2003: ~0 for grey images, ~15 "slightly", ~110 "extremely colourful").
    """
    x = _as_float(frames)
    rg, yb = x[..., 0] - x[..., 1], 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
    spread = np.sqrt(rg.var(axis=(-1, -2)) + yb.var(axis=(-1, -2)))
    return spread + 0.3 * np.sqrt(rg.mean(axis=(-1, -2)) ** 2 + yb.mean(axis=(-1, -2)) ** 2)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N, D] and [M, D].

    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the FID formula on our own features.
    """
    if feats_a.ndim != 2 or feats_b.ndim != 2 or feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"frechet_distance: need [N, D] and [M, D], got {feats_a.shape} and {feats_b.shape}")
    if len(feats_a) < 2 or len(feats_b) < 2:
        raise ValueError("frechet_distance: need at least 2 samples per set")
    a, b = _as_float(feats_a), _as_float(feats_b)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = _sqrtm_product(cov_a, cov_b)
    value = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
    return max(0.0, value)  # tiny negative values are round-off for identical sets


def _sqrtm_product(cov_a: np.ndarray, cov_b: np.ndarray) -> np.ndarray:
    # sqrtm of a product of PSD matrices can pick up imaginary round-off or fail on singular
    # covariances (few samples per minute in --quick); a small ridge keeps it well defined.
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        ridge = np.eye(len(cov_a)) * 1e-6
        covmean = linalg.sqrtm((cov_a + ridge) @ (cov_b + ridge))
    return np.real(covmean)
