"""`run_world.py train idm`: the inverse-dynamics model that reads actions back from frames.

python run_world.py train idm --data data/engine --out assets/idm
python run_world.py train idm --out runs/idm-small --episodes 8 --steps 300   # no dataset
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from model.common.device import set_threads
from model.readers.episodes import Episode
from model.readers.idm import (
    IDMConfig,
    InverseDynamicsModel,
    idm_config,
    mirror_costs,
    mirror_labels,
    mouse_to_bins,
    pair_costs,
)
from model.readers.reading import ActionReading, IDMReader
from model.readers.scores import score_actions
from model.readers.train_common import add_common_arguments, load_episodes, run_training
from world.actions import KEYS

MAX_POS_WEIGHT = 10.0
EVAL_FRAMES = 3000  # held-out frames scored per evaluation (enough for a stable macro F1)
# Up to this many bytes, the matching costs (parameter-free) of the training set are computed once
# and kept in fp16 (~6 KB a frame at 64x64: 1 GiB holds ~170k frames), so a step only runs the
# small learnt head. Beyond it they are computed per batch and memory stays flat.
COST_CACHE_BYTES = 1 << 30
COST_BATCH = 512


class IDMTask:
    kind = "idm"

    def __init__(self, train: list[Episode], heldout: list[Episode], preset: str = "default"):
        h, w = train[0].frames.shape[1:3]
        self.config = idm_config(preset, h, w)
        self.model = InverseDynamicsModel(self.config)
        self.train, self.heldout = train, heldout
        c = self.config
        # Every (episode, frame) whose window fits inside its episode.
        self.index = np.array([(e, j) for e, ep in enumerate(train) for j in range(c.before, len(ep) - c.after)])
        if len(self.index) == 0:
            raise ValueError(f"episodes are shorter than the IDM window ({c.window} frames)")
        self.pos_weight = self._pos_weight()
        self.sample_p = self._sample_weights()
        c = self.config
        pair_bytes = 2 * (len(c.shifts) + 3) * (c.height // c.cell) * (c.width // c.cell)
        self.costs = self._cache_costs() if sum(len(ep) for ep in train) * pair_bytes <= COST_CACHE_BYTES else None

    def _cache_costs(self) -> list[torch.Tensor]:
        """Per episode [N-1, S+3, h, w] fp16: costs of every consecutive pair (i -> i+1)."""
        out = []
        for ep in self.train:
            parts = []
            for s in range(0, len(ep) - 1, COST_BATCH):
                e = min(s + COST_BATCH, len(ep) - 1)
                a, b = (torch.from_numpy(np.array(ep.frames[i : i + e - s])) for i in (s, s + 1))
                parts.append(pair_costs(a, b, self.config).half())
            out.append(torch.cat(parts))
        return out

    def _pos_weight(self) -> torch.Tensor:
        # Rare keys (rise, sink, back) would otherwise be learnt as "never held": weight their
        # positives by sqrt(neg/pos), capped, which trades a little precision for recall.
        held = np.concatenate([ep.actions[:, : len(KEYS)] for ep in self.train]) > 0.5
        pos = held.mean(0).clip(1e-3, 1 - 1e-3)
        return torch.tensor(np.sqrt((1 - pos) / pos).clip(1.0, MAX_POS_WEIGHT), dtype=torch.float32)

    def _sample_weights(self) -> np.ndarray:
        """[len(index)] sampling probabilities ~ 1/sqrt(frequency of the rarest action in the frame).

        Scripted play holds rise, sink, back or strafe keys on 1-3% of frames, yet the probe scores
        every action equally; oversampling rare frames (together with the sqrt pos_weight, about
        inverse-frequency overall) keeps the IDM from learning "never held" for them.
        """
        c = self.config
        acts = np.stack([self.train[e].actions[j] for e, j in self.index])
        moving = mouse_to_bins(acts[:, len(KEYS) :], c) != c.mouse_bins // 2  # [N, 2] not the still bin
        held = np.concatenate([acts[:, : len(KEYS)] > 0.5, moving], 1)
        freq = held.mean(0).clip(1e-4)
        rarity = np.where(held, 1.0 / freq, 1.0).max(1)
        w = np.sqrt(rarity)
        return w / w.sum()

    def sample(self, rng: np.random.Generator, batch: int) -> dict[str, torch.Tensor]:
        c = self.config
        picks = self.index[rng.choice(len(self.index), size=batch, p=self.sample_p)]
        acts = np.stack([self.train[e].actions[j] for e, j in picks])
        keys, bins = acts[:, : len(KEYS)] > 0.5, mouse_to_bins(acts[:, len(KEYS) :], c)  # [B, N_KEYS], [B, 2]
        flip = rng.random(batch) < 0.5  # mirror half the batch: left/right balanced, twice the worlds
        keys[flip], bins[flip] = mirror_labels(keys[flip], bins[flip], c)
        out = {"keys": torch.from_numpy(keys.astype(np.float32)), "bins": torch.from_numpy(bins)}
        if self.costs is not None:  # pairs j-before -> j-before+1, ..., j+after-1 -> j+after
            costs = torch.stack([self.costs[e][j - c.before : j + c.after].flatten(0, 1) for e, j in picks]).float()
            costs[flip] = mirror_costs(costs[flip], c)
            out["costs"] = costs
        else:
            frames = np.stack([self.train[e].frames[j - c.before : j + c.after + 1] for e, j in picks])
            frames[flip] = frames[flip][:, :, :, ::-1]
            out["frames"] = torch.from_numpy(frames)  # [B, window, H, W, 3] uint8
        return out

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        if "costs" in batch:
            key_logits, mouse_logits = self.model.head(batch["costs"])
        else:
            key_logits, mouse_logits = self.model(batch["frames"])
        pw = self.pos_weight.to(key_logits.device)
        key_loss = F.binary_cross_entropy_with_logits(key_logits.float(), batch["keys"], pos_weight=pw)
        mouse_loss = F.cross_entropy(mouse_logits.float().flatten(0, 1), batch["bins"].flatten())
        return key_loss + mouse_loss, {"key_loss": key_loss.item(), "mouse_loss": mouse_loss.item()}

    def evaluate(self) -> dict[str, float]:
        reader = IDMReader(self.model, next(self.model.parameters()).device)
        readings, actions = [], []
        budget = EVAL_FRAMES
        for ep in self.heldout:
            n = min(len(ep), budget)
            if n <= self.config.window:
                break
            readings.append(reader.read(np.asarray(ep.frames[:n])))
            actions.append(ep.actions[:n])
            budget -= n
        self.model.train()
        return _score(readings, np.concatenate(actions), self.config)


def _score(readings: list[ActionReading], actions: np.ndarray, config: IDMConfig) -> dict[str, float]:
    reading = ActionReading(
        np.concatenate([r.keys for r in readings]),
        np.concatenate([r.mouse_bins for r in readings]),
        np.concatenate([r.valid for r in readings]),
    )
    s = score_actions(reading, actions, np.ones(len(actions), bool), config)
    return {
        "macro_f1": s["macro_f1"],
        "chance_macro_f1": s["chance_macro_f1"],
        **{f"f1/{k}": v for k, v in s["per_action"].items()},
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_steps=4000)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    train, heldout, note = load_episodes(args)
    return run_training(IDMTask(train, heldout, args.preset), args, note)
