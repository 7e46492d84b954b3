"""Trained IDM / classifier wrapped for evaluation: load from a checkpoint, read frame sequences.

A "reading" is what the network says about every frame of a rollout; windows that would run off
either end of the sequence are marked invalid instead of padded, so no score sees a fake frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.common.checkpoint import CheckpointError, config_from_dict, load_module, read_checkpoint_config
from model.readers.classifier import FACTORS, ClassifierConfig, ThemeClassifier
from model.readers.idm import N_KEYS, IDMConfig, InverseDynamicsModel
from world.procedural.themes import Theme

BATCH = 256


def sliding_windows(frames: np.ndarray, before: int, after: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, H, W, 3] -> (windows [M, before+1+after, H, W, 3] view, indices [M] of the centre frame)."""
    n, window = len(frames), before + 1 + after
    if n < window:
        return np.zeros((0, window, *frames.shape[1:]), frames.dtype), np.zeros(0, np.int64)
    view = np.lib.stride_tricks.sliding_window_view(frames, window, axis=0)  # [M, H, W, 3, T]
    return np.moveaxis(view, -1, 1), np.arange(before, n - after, dtype=np.int64)


@dataclass
class ActionReading:
    """keys [N, N_KEYS] bool, mouse_bins [N, 2] int64, valid [N] bool (window fits)."""

    keys: np.ndarray
    mouse_bins: np.ndarray
    valid: np.ndarray


@dataclass
class ThemeReading:
    """labels [N, 3] int64 (biome, time, weather indices), features [N, D] float32."""

    labels: np.ndarray
    features: np.ndarray


class IDMReader:
    def __init__(self, model: InverseDynamicsModel, device: torch.device, meta: dict | None = None):
        self.model = model.eval().to(device)
        self.config: IDMConfig = model.config
        self.device = device
        self.meta = meta or {}

    @torch.no_grad()
    def read(self, frames: np.ndarray) -> ActionReading:
        """frames [N, H, W, 3] uint8 (frame j produced by action j) -> reading of every action j."""
        c = self.config
        n = len(frames)
        keys, bins, valid = np.zeros((n, N_KEYS), bool), np.zeros((n, 2), np.int64), np.zeros(n, bool)
        windows, idx = sliding_windows(_check(frames, c.height, c.width), c.before, c.after)
        for s in range(0, len(idx), BATCH):
            batch = torch.from_numpy(np.array(windows[s : s + BATCH])).to(self.device)
            key_logits, mouse_logits = self.model(batch)
            rows = idx[s : s + BATCH]
            keys[rows] = (key_logits > 0).cpu().numpy()
            bins[rows] = mouse_logits.argmax(-1).cpu().numpy()
        valid[idx] = True
        return ActionReading(keys, bins, valid)


class ThemeReader:
    def __init__(self, model: ThemeClassifier, device: torch.device, meta: dict | None = None):
        self.model = model.eval().to(device)
        self.config: ClassifierConfig = model.config
        self.device = device
        self.meta = meta or {}

    def theme_labels(self, theme: Theme) -> np.ndarray:
        """[3] int64 class indices of a theme in this classifier's class order."""
        return np.array([self.config.classes(f).index(getattr(theme, f)) for f in FACTORS], np.int64)

    @torch.no_grad()
    def read(self, frames: np.ndarray) -> ThemeReading:
        """frames [N, H, W, 3] uint8 -> one reading per frame (the first frames repeat frame 0)."""
        c = self.config
        frames = _check(frames, c.height, c.width)
        pad = np.repeat(frames[:1], c.frames_in - 1, axis=0)  # so every frame gets a full stack
        windows, _ = sliding_windows(np.concatenate([pad, frames]), c.frames_in - 1, 0)
        labels, feats = [], []
        for s in range(0, len(windows), BATCH):
            out = self.model(torch.from_numpy(np.array(windows[s : s + BATCH])).to(self.device))
            labels.append(torch.stack([getattr(out, f).argmax(-1) for f in FACTORS], -1).cpu().numpy())
            feats.append(out.features.float().cpu().numpy())
        d = c.feature_dim
        return ThemeReading(
            np.concatenate(labels) if labels else np.zeros((0, 3), np.int64),
            np.concatenate(feats) if feats else np.zeros((0, d), np.float32),
        )


def _check(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    if frames.ndim != 4 or frames.shape[1:] != (height, width, 3) or frames.dtype != np.uint8:
        raise ValueError(
            f"frames must be uint8 [N, {height}, {width}, 3] to match the checkpoint, got {frames.dtype} "
            f"{list(frames.shape)}; evaluate at the resolution the IDM/classifier was trained on"
        )
    return frames


def load_idm(directory: str | Path, device: torch.device) -> IDMReader:
    meta = _read(directory, "idm", "`run_world.py train idm --out DIR`")
    model = InverseDynamicsModel(config_from_dict(IDMConfig, meta["configs"]["idm"], f"{directory}"))
    load_module(directory, "idm", model)
    return IDMReader(model.float(), device, meta)


def load_classifier(directory: str | Path, device: torch.device) -> ThemeReader:
    meta = _read(directory, "classifier", "`run_world.py train classifier --out DIR`")
    config = config_from_dict(ClassifierConfig, meta["configs"]["classifier"], f"{directory}")
    model = ThemeClassifier(config)
    load_module(directory, "classifier", model)
    return ThemeReader(model.float(), device, meta)


def _read(directory: str | Path, kind: str, how: str) -> dict:
    try:
        return read_checkpoint_config(directory, kind=kind)
    except CheckpointError as e:
        raise CheckpointError(f"{e}\n(no usable {kind} checkpoint; train one with {how})") from None
