"""The small supervised trainer shared by the IDM and the theme classifier.

A `Task` owns the network, its data and its loss; this trainer owns the optimiser, schedule,
held-out evaluation, checkpoints and resume, and runs the training loop (model/training/loop.py).
Stopping with Ctrl-C saves a checkpoint first; running the same command again continues from it.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from model.common.checkpoint import (
    CheckpointError,
    has_train_state,
    load_train_state,
    read_checkpoint_config,
    save_checkpoint,
)
from model.common.configs import option
from model.common.runlog import RunLog
from model.training.loop import LoopConfig, TrainLoop, autocast_for, optimizer_step, set_learning_rate


@dataclass(frozen=True)
class ReaderTrainConfig:
    """A field with help is also a `train idm` / `train classifier` option (model/common/configs.py)."""

    steps: int = option(3000, help="total optimiser steps")
    batch: int = option(64, help="examples per step")
    lr: float = option(1e-3, help="peak learning rate")
    weight_decay: float = 1e-4
    warmup: int = 100
    eval_every: int = option(250, help="steps between held-out evaluations")
    save_every: int = 500
    log_every: int = 25
    seed: int = option(0, help="seed of the data split, batches and rendering")


class Task(Protocol):
    kind: str  # checkpoint kind and module name: "idm" or "classifier"
    model: nn.Module
    config: object  # the network's dataclass config

    def sample(self, rng: np.random.Generator, batch: int) -> dict[str, torch.Tensor]: ...

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]: ...

    def evaluate(self) -> dict[str, float]: ...


def lr_at(step: int, cfg: ReaderTrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


class Trainer:
    def __init__(
        self, task: Task, out: str | Path, cfg: ReaderTrainConfig, device: torch.device, extra: dict,
        log_dir: str | Path,
    ):
        self.task, self.out, self.cfg, self.device, self.extra = task, Path(out), cfg, device, dict(extra)
        self.heldout: dict[str, float] | None = self.extra.get("heldout")  # the latest held-out metrics
        task.model.to(device)
        self.opt = torch.optim.AdamW(task.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step = self._maybe_resume()
        # The log lives beside, not inside, the checkpoint: save_checkpoint swaps the whole directory.
        self.log = RunLog(log_dir, "metrics", resume_step=self.step if self.step > 0 else None)
        # A fresh generator per (seed, step) makes a resumed run draw new batches, not replay old ones.
        self.rng = np.random.default_rng([cfg.seed, self.step])

    def _maybe_resume(self) -> int:
        if not has_train_state(self.out):
            return 0
        saved = read_checkpoint_config(self.out, kind=self.task.kind)["configs"].get(self.task.kind)
        if saved != _jsonable(asdict(self.task.config)):
            raise CheckpointError(
                f"{self.out}: holds a {self.task.kind} with a different network config; "
                "use a new --out or the same --preset and data resolution"
            )
        step = load_train_state(self.out, {self.task.kind: self.task.model}, {self.task.kind: self.opt})
        print(f"resuming {self.task.kind} training from step {step} in {self.out}", file=sys.stderr)
        return step

    def save(self, reason: str = "periodic") -> None:
        """A checkpoint with the latest held-out metrics (the training loop's saves and the final one)."""
        if self.heldout is not None:
            self.extra["heldout"] = self.heldout
        save_checkpoint(
            self.out,
            kind=self.task.kind,
            modules={self.task.kind: self.task.model},
            configs={self.task.kind: self.task.config, "train": self.cfg},
            step=self.step,
            optimizers={self.task.kind: self.opt},
            extra=self.extra,
        )

    def train_step(self) -> dict[str, float]:
        set_learning_rate(self.opt, lr_at(self.step, self.cfg))
        batch = {k: v.to(self.device) for k, v in self.task.sample(self.rng, self.cfg.batch).items()}
        self.task.model.train()
        with autocast_for(self.device):
            loss, metrics = self.task.loss(batch)
        optimizer_step(self.opt, loss, self.task.model.parameters())
        return {"loss": loss.item(), **metrics}

    def after_step(self, step: int) -> dict[str, float]:
        """Held-out metrics every eval_every steps, as "heldout/..." columns of that step's row."""
        return self._heldout() if step % self.cfg.eval_every == 0 else {}

    def _heldout(self) -> dict[str, float]:
        self.task.model.eval()
        self.heldout = self.task.evaluate()
        return {f"heldout/{k}": v for k, v in self.heldout.items() if math.isfinite(v)}

    def run(self) -> dict[str, float]:
        """Train to cfg.steps (from wherever a previous run stopped) in the training loop
        (model/training/loop.py); returns held-out metrics."""
        loop = LoopConfig(steps=self.cfg.steps, desc=f"train {self.task.kind}", log_every=self.cfg.log_every,
                          ckpt_every=self.cfg.save_every, log_first=False, save_last=False, rates=False)
        TrainLoop(self, loop, self.log).run()
        self.log.log(self.step, **self._heldout())
        self.save("last")
        self.log.plot(title=f"{self.task.kind} training")
        return self.heldout


def _jsonable(obj):
    return json.loads(json.dumps(obj))
