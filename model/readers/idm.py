"""Inverse-dynamics model: which keys were held and how the mouse moved, read from frames.

Convention (the dataset's): action j produced frame j from frame j-1. The IDM reads the window
frames[j - before : j + after + 1] and predicts action j: a multi-hot over `KEYS` and, for mouse
dx and dy, one of `mouse_bins` bins (edges in `mouse_edges`). Trained on engine data, its score
on held-out engine data is the ceiling a world model's rollouts are compared against.

Front end: a fixed (parameter-free) matching-cost volume. For each consecutive frame pair and
each candidate shift (dy, dx), the mean |luma difference| after shifting, per 8x8 cell. Camera
motions are shift patterns over the cells (turning shifts everything sideways, looking shifts
everything vertically, walking forward expands from the centre, rising moves near ground more
than far terrain), so a small conv net on the cost volume learns them in a few hundred steps,
where a conv net on raw pixels needs thousands. Cost volumes as in FlowNet/PWC-Net, without
learnt features.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from world.actions import KEYS

N_KEYS = len(KEYS)
LUMA = (0.299, 0.587, 0.114)
SOFTMIN_TEMPERATURE = 0.05  # on mean-normalised costs: the best shift is typically 0.3-0.6 below 1
FLOW_SCALE_PX = 4.0  # flow features in units of 4 px, so they start near the scale of the others


@dataclass(frozen=True)
class IDMConfig:
    height: int = 64
    width: int = 64
    before: int = 2  # frames before the action's own frame (j-1 is the frame the action acted on)
    after: int = 1  # frames after it: keys are held in bouts, so j+1 confirms what j showed
    cell: int = 8  # matching costs are averaged over cell x cell pixels
    max_dx: int = 8  # horizontal shifts searched: a fast mouse turn moves the view ~7 px at 64x64
    max_dy: int = 6  # vertical shifts searched
    local: int = 2  # plus every shift with |dy|, |dx| <= local (diagonal and small motions)
    channels: tuple[int, int] = (96, 128)
    hidden: int = 256
    # Mouse dx/dy bins: |v| < 0.2 is "still", then slow and fast in each direction.
    mouse_edges: tuple[float, ...] = (-0.6, -0.2, 0.2, 0.6)

    @property
    def window(self) -> int:
        return self.before + 1 + self.after

    @property
    def mouse_bins(self) -> int:
        return len(self.mouse_edges) + 1

    def __post_init__(self) -> None:
        edges = np.asarray(self.mouse_edges)
        if not np.allclose(edges, -edges[::-1]):
            raise ValueError(f"mouse_edges must be symmetric around 0 (mirror augmentation), got {self.mouse_edges}")

    @cached_property
    def shifts(self) -> tuple[tuple[int, int], ...]:
        """(dy, dx) candidates: the horizontal and vertical axes plus a small square."""
        s = {(0, dx) for dx in range(-self.max_dx, self.max_dx + 1)}
        s |= {(dy, 0) for dy in range(-self.max_dy, self.max_dy + 1)}
        s |= {(dy, dx) for dy in range(-self.local, self.local + 1) for dx in range(-self.local, self.local + 1)}
        return tuple(sorted(s))


IDM_PRESETS: dict[str, IDMConfig] = {
    "tiny": IDMConfig(before=1, after=0, max_dx=4, max_dy=3, local=1, channels=(16, 32), hidden=64),
    "default": IDMConfig(),
}


def idm_config(preset: str, height: int, width: int) -> IDMConfig:
    if preset not in IDM_PRESETS:
        raise ValueError(f"unknown IDM preset {preset!r}; one of {', '.join(IDM_PRESETS)}")
    return replace(IDM_PRESETS[preset], height=height, width=width)


def mouse_to_bins(mouse: np.ndarray, config: IDMConfig) -> np.ndarray:
    """[..., 2] mouse deltas in [-1, 1] -> [..., 2] int64 bin indices."""
    return np.searchsorted(np.asarray(config.mouse_edges), mouse, side="right").astype(np.int64)


@torch.no_grad()
def pair_costs(before: torch.Tensor, after: torch.Tensor, config: IDMConfig) -> torch.Tensor:
    """Two frame stacks [N, H, W, 3] uint8 (after[i] follows before[i]) -> [N, S+3, H/cell, W/cell].

    Per cell: the S shift costs divided by their mean (so fog and night, which lower every cost,
    look like clear noon), the log of that mean (how much texture there is), and the soft-argmin
    shift (dy, dx): a coarse optical flow. Camera motions are close to linear in that flow field,
    so the heads learn them from it in a few hundred steps.
    """
    N, H, W, _ = before.shape
    luma = before.new_tensor(LUMA, dtype=torch.float32) / 255.0
    a, b = before.float() @ luma, after.float() @ luma  # [N, H, W]
    p = max(config.max_dx, config.max_dy, config.local)
    a_pad = F.pad(a[:, None], (p, p, p, p), mode="replicate")[:, 0]
    costs = []
    for dy, dx in config.shifts:  # content now at (y, x) was at (y - dy, x - dx) before
        moved = a_pad[:, p - dy : p - dy + H, p - dx : p - dx + W]
        costs.append(F.avg_pool2d((moved - b).abs(), config.cell))  # [N, h, w]
    c = torch.stack(costs, 1)  # [N, S, h, w]
    mean = c.mean(1, keepdim=True)
    rel = c / (mean + 1e-3)
    weights = torch.softmax(-rel / SOFTMIN_TEMPERATURE, dim=1)
    shifts = rel.new_tensor(config.shifts, dtype=torch.float32)  # [S, 2]
    flow = torch.einsum("nshw,sd->ndhw", weights, shifts) / FLOW_SCALE_PX  # [N, 2, h, w]
    return torch.cat([rel, torch.log(mean + 1e-3), flow], 1)


def matching_costs(frames: torch.Tensor, config: IDMConfig) -> torch.Tensor:
    """[B, T, H, W, 3] uint8 -> [B, (T-1) * (S+3), H/cell, W/cell]: pair_costs of each consecutive pair."""
    B, T = frames.shape[:2]
    costs = pair_costs(frames[:, :-1].flatten(0, 1), frames[:, 1:].flatten(0, 1), config)  # [B*(T-1), S+3, h, w]
    return costs.view(B, (T - 1) * costs.shape[1], *costs.shape[2:])


# Mirroring the view left-right swaps these keys and negates mouse dx: a free second world.
MIRRORED_KEYS = {"left": "right", "right": "left", "turn_left": "turn_right", "turn_right": "turn_left"}


def mirror_costs(costs: torch.Tensor, config: IDMConfig) -> torch.Tensor:
    """The costs of the left-right mirrored frames, from the costs [B, P*(S+3), h, w] themselves:
    cells flip, shift (dy, dx) becomes (dy, -dx), flow dx changes sign."""
    B, C, h, w = costs.shape
    s = len(config.shifts)
    x = costs.view(B, C // (s + 3), s + 3, h, w).flip(-1)
    index = {shift: i for i, shift in enumerate(config.shifts)}
    perm = [index[(dy, -dx)] for dy, dx in config.shifts] + [s, s + 1, s + 2]
    x = x[:, :, perm].clone()
    x[:, :, s + 2] = -x[:, :, s + 2]
    return x.view(B, C, h, w)


def mirror_labels(keys: np.ndarray, bins: np.ndarray, config: IDMConfig) -> tuple[np.ndarray, np.ndarray]:
    """keys [B, N_KEYS], mouse bins [B, 2] of the mirrored frames (bin edges are symmetric)."""
    perm = [KEYS.index(MIRRORED_KEYS.get(k, k)) for k in KEYS]
    bins = bins.copy()
    bins[:, 0] = config.mouse_bins - 1 - bins[:, 0]
    return keys[:, perm], bins


class InverseDynamicsModel(nn.Module):
    """frames [B, T=window, H, W, 3] uint8 -> (key logits [B, N_KEYS], mouse logits [B, 2, bins])."""

    def __init__(self, config: IDMConfig):
        super().__init__()
        self.config = config
        h, w = config.height // config.cell, config.width // config.cell
        if config.height % config.cell or config.width % config.cell or h % 2 or w % 2:
            raise ValueError(f"frame size {config.height}x{config.width} must be a multiple of 2 * cell")
        c1, c2 = config.channels
        in_ch = (config.window - 1) * (len(config.shifts) + 3)
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, c1, 3, padding=1), nn.GroupNorm(8, c1), nn.SiLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.GroupNorm(8, c2), nn.SiLU(),
            nn.Flatten(),
            nn.Linear(c2 * (h // 2) * (w // 2), config.hidden), nn.SiLU(),
        )  # fmt: skip
        self.keys = nn.Linear(config.hidden, N_KEYS)
        self.mouse = nn.Linear(config.hidden, 2 * config.mouse_bins)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, H, W, _ = frames.shape
        c = self.config
        assert (T, H, W) == (c.window, c.height, c.width), f"IDM expects [B, {c.window}, {c.height}, {c.width}, 3]"
        return self.head(matching_costs(frames, c))

    def head(self, costs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The learnt part: matching costs [B, (T-1)*(S+3), h, w] -> (key logits, mouse logits).

        Training on a small dataset caches the (parameter-free) costs once and calls this directly.
        """
        h = self.net(costs)  # [B, hidden]
        return self.keys(h), self.mouse(h).view(len(h), 2, self.config.mouse_bins)
