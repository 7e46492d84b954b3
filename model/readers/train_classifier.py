"""`run_world.py train classifier`: the theme classifier (biome, time of day, weather).

python run_world.py train classifier --data data/engine --out assets/classifier
python run_world.py train classifier --out runs/cls-small --episodes 8 --steps 300  # no dataset
"""

from __future__ import annotations

import argparse
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from model.common.device import set_threads
from model.readers.classifier import FACTORS, ThemeClassifier, classifier_config
from model.readers.episodes import Episode
from model.readers.reading import ThemeReader
from model.readers.scores import theme_accuracy
from model.readers.train_common import add_common_arguments, load_episodes, run_training
from world.procedural.themes import parse_prompt

EVAL_FRAMES = 3000


class ClassifierTask:
    kind = "classifier"

    def __init__(self, train: list[Episode], heldout: list[Episode], preset: str = "default"):
        h, w = train[0].frames.shape[1:3]
        self.config = classifier_config(preset, h, w)
        self.model = ThemeClassifier(self.config)
        self.train, self.heldout = train, heldout
        self.labels = [self._labels(ep.prompts) for ep in train]
        t = self.config.frames_in
        self.index = np.array([(e, j) for e, ep in enumerate(train) for j in range(t - 1, len(ep))])

    def _labels(self, prompts: list[str]) -> np.ndarray:
        """[N, 3] class indices of the theme each frame's prompt names."""
        return np.stack([_theme_labels(self.config, p) for p in prompts])

    def sample(self, rng: np.random.Generator, batch: int) -> dict[str, torch.Tensor]:
        t = self.config.frames_in
        picks = self.index[rng.integers(len(self.index), size=batch)]
        frames = np.stack([self.train[e].frames[j - t + 1 : j + 1] for e, j in picks])  # [B, t, H, W, 3]
        flip = rng.random(batch) < 0.5  # a mirrored world has the same theme: free extra data
        frames[flip] = frames[flip][:, :, :, ::-1]
        labels = np.stack([self.labels[e][j] for e, j in picks])  # [B, 3]
        return {"frames": torch.from_numpy(frames), "labels": torch.from_numpy(labels)}

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.model(batch["frames"])
        losses = {f: F.cross_entropy(getattr(out, f).float(), batch["labels"][:, i]) for i, f in enumerate(FACTORS)}
        return sum(losses.values()), {f"{f}_loss": v.item() for f, v in losses.items()}

    def evaluate(self) -> dict[str, float]:
        reader = ThemeReader(self.model, next(self.model.parameters()).device)
        true, pred, budget = [], [], EVAL_FRAMES
        for ep in self.heldout:
            n = min(len(ep), budget)
            if n == 0:
                break
            pred.append(reader.read(np.asarray(ep.frames[:n])).labels)
            true.append(self._labels(ep.prompts[:n]))
            budget -= n
        self.model.train()
        return theme_accuracy(np.concatenate(true), np.concatenate(pred))


@lru_cache(maxsize=4096)
def _parse(prompt: str):
    return parse_prompt(prompt)


def _theme_labels(config, prompt: str) -> np.ndarray:
    theme = _parse(prompt)
    return np.array([config.classes(f).index(getattr(theme, f)) for f in FACTORS], np.int64)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_steps=3000)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    train, heldout, note = load_episodes(args)
    return run_training(ClassifierTask(train, heldout, args.preset), args, note)
