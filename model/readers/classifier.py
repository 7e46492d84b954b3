"""Theme classifier: biome, time of day and weather read from a frame (or a short frame stack).

Trained on engine frames labelled by `world.procedural.themes.parse_prompt` of the prompt in force. Its
penultimate features double as the embedding for the Frechet distance between generated and
engine frames (our small-world stand-in for FID's Inception features).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
from torch import nn

from model.readers.layers import ConvTrunk, frames_to_input
from world.procedural import themes

FACTORS: tuple[str, ...] = ("biome", "time_of_day", "weather")


@dataclass(frozen=True)
class ClassifierConfig:
    height: int = 64
    width: int = 64
    frames_in: int = 2  # two frames let falling rain/snow/ash show as motion, not only as dots
    channels: tuple[int, ...] = (32, 64, 96, 128)
    feature_dim: int = 128
    # Global mean+max pooling of the last feature map, not flattening: a theme is *what* is in
    # view wherever it is; flattening overfit the terrain layout (held-out joint 0.85 vs 0.91).
    pool: bool = True
    # Class names are saved with the checkpoint so a later change of the themes tables cannot
    # silently permute a trained classifier's outputs.
    biomes: tuple[str, ...] = field(default_factory=lambda: themes.BIOMES)
    times: tuple[str, ...] = field(default_factory=lambda: themes.TIMES)
    weathers: tuple[str, ...] = field(default_factory=lambda: themes.WEATHERS)

    def classes(self, factor: str) -> tuple[str, ...]:
        return {"biome": self.biomes, "time_of_day": self.times, "weather": self.weathers}[factor]


CLASSIFIER_PRESETS: dict[str, ClassifierConfig] = {
    "tiny": ClassifierConfig(frames_in=1, channels=(8, 16, 32), feature_dim=32),
    "default": ClassifierConfig(),
}


def classifier_config(preset: str, height: int, width: int) -> ClassifierConfig:
    if preset not in CLASSIFIER_PRESETS:
        raise ValueError(f"unknown classifier preset {preset!r}; one of {', '.join(CLASSIFIER_PRESETS)}")
    return replace(CLASSIFIER_PRESETS[preset], height=height, width=width)


class ThemeLogits(NamedTuple):
    features: torch.Tensor  # [B, feature_dim] penultimate activations (Frechet embedding)
    biome: torch.Tensor  # [B, len(biomes)]
    time_of_day: torch.Tensor  # [B, len(times)]
    weather: torch.Tensor  # [B, len(weathers)]


class ThemeClassifier(nn.Module):
    """frames [B, T=frames_in, H, W, 3] uint8 -> ThemeLogits."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        t = config.frames_in
        in_ch = 3 * t + 3 * (t - 1)
        self.trunk = ConvTrunk(in_ch, config.channels, config.height, config.width, config.pool)
        self.features = nn.Sequential(nn.Linear(self.trunk.out_dim, config.feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict({f: nn.Linear(config.feature_dim, len(config.classes(f))) for f in FACTORS})

    def forward(self, frames: torch.Tensor) -> ThemeLogits:
        _, T, H, W, _ = frames.shape
        c = self.config
        assert (T, H, W) == (c.frames_in, c.height, c.width), (
            f"classifier expects [B, {c.frames_in}, {c.height}, {c.width}, 3], got {tuple(frames.shape)}"
        )
        h = self.features(self.trunk(frames_to_input(frames, diffs=True)))  # [B, feature_dim]
        return ThemeLogits(h, *(self.heads[f](h) for f in FACTORS))
