"""The one training loop: every trainer (teacher, student stages, autoencoder, evaluation networks)
supplies its step and its state; the loop owns everything around them.

A trainer is a `TrainJob`: it holds `step` (optimiser steps done so far, restored on resume) and has
- `train_step() -> metrics`: one optimiser step at `self.step` (the loop then counts it);
- `save(reason)`: write its checkpoint (reason: "periodic", "last", "stopped", "interrupted");
- optionally `frames_per_step` (for the frames/s rate) and `after_step(step) -> metrics`, the
  evaluations due after that step (merged into its metric row).

`TrainLoop.run` steps to `LoopConfig.steps` with a progress bar, writes metric rows to a `RunLog`,
saves every `ckpt_every` steps (and at the end, unless the trainer finishes its run itself),
stops early at `until` or when the wall-time `Budget` is spent (every DDP rank at the same step),
and saves before it stops. Ctrl-C and SIGTERM save a checkpoint and re-raise, so rerunning the
command with --resume continues; resuming is exact because each step draws its randomness from
`step_generator(seed, step, rank)` and its data from the step number.

Also here, for every trainer: `update_ema`, `optimizer_step`, `set_learning_rate`, `resume_step`
and `autocast_for` (the autocast choice of a training step).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist

from model.common.checkpoint import has_train_state, load_train_state
from model.common.device import autocast, training_autocast
from model.common.runlog import RunLog, progress
from world.interrupts import sigterm_as_keyboard_interrupt


class TrainJob(Protocol):
    step: int

    def train_step(self) -> dict[str, float]: ...

    def save(self, reason: str) -> None: ...


@dataclass(frozen=True)
class LoopConfig:
    """How a trainer wants its run driven."""

    steps: int  # the run's last step
    desc: str  # progress-bar label
    log_every: int  # steps between metric rows
    ckpt_every: int  # steps between checkpoints
    log_first: bool = True  # also a row at step 1 (a curve starts at the start)
    log_last: bool = False  # also a row at the last step
    average: bool = False  # a row holds the mean of the steps since the last row (else the latest step's)
    save_last: bool = True  # save at `steps` (False: the trainer finishes its run itself afterwards)
    rates: bool = True  # add steps_per_s and frames_per_s to every step's metrics
    postfix: tuple[str, ...] = ("loss",)  # metrics shown beside the progress bar


class Budget:
    """A wall-time budget (time.monotonic() deadline; None: none). Under DDP every rank asks at the
    same steps and the answer is all-reduced (any rank's clock past the deadline stops all), or the
    ranks that went on would wait forever in their next all-reduce."""

    def __init__(self, deadline: float | None = None, world_size: int = 1):
        self.deadline, self.world_size = deadline, world_size

    @classmethod
    def minutes(cls, minutes: float | None, world_size: int = 1) -> Budget:
        """From now; None or 0: no budget."""
        return cls(time.monotonic() + 60.0 * minutes if minutes else None, world_size)

    def spent(self) -> bool:
        """Asked after every step; under DDP every rank takes part in the all-reduce, also a rank
        without a budget of its own (another rank's may run out)."""
        past = torch.tensor(float(self.deadline is not None and time.monotonic() > self.deadline))
        if self.world_size > 1:
            dist.all_reduce(past, op=dist.ReduceOp.MAX)
        return bool(past)


class TrainLoop:
    def __init__(self, job: TrainJob, cfg: LoopConfig, log: RunLog | None = None, *, budget: Budget | None = None,
                 until: int | None = None, rank: int = 0):
        self.job, self.cfg, self.log, self.rank = job, cfg, log, rank
        self.budget = budget or Budget()
        self.until = cfg.steps if until is None else min(until, cfg.steps)
        self.stopped = False  # True when the budget or `until` ended the run before cfg.steps

    def run(self) -> dict[str, float]:
        """Step to cfg.steps (or until / the budget); returns the last step's metrics."""
        job, cfg = self.job, self.cfg
        bar = progress(cfg.steps, job.step, cfg.desc) if self.rank == 0 else None
        t0, first, metrics = time.perf_counter(), job.step, {}
        pending: list[dict[str, float]] = []
        try:
            with sigterm_as_keyboard_interrupt():
                while job.step < self.until:
                    metrics = job.train_step()
                    job.step += 1
                    if cfg.rates:
                        rate = (job.step - first) / max(time.perf_counter() - t0, 1e-9)
                        metrics.update(steps_per_s=rate, frames_per_s=rate * getattr(job, "frames_per_step", 0))
                    self._after(job.step, metrics, pending, bar)
                    if job.step < cfg.steps and (job.step >= self.until or self.budget.spent()):
                        self.stopped = True
                        break
                if self.stopped and job.step % cfg.ckpt_every:  # not saved at this step yet
                    job.save("stopped")
        except KeyboardInterrupt:
            print(f"\n{cfg.desc}: interrupted at step {job.step}; saving a checkpoint (rerun with --resume)",
                  file=sys.stderr, flush=True)
            job.save("interrupted")
            raise
        finally:
            if bar is not None:
                bar.close()
        return metrics

    def _after(self, step: int, metrics: dict[str, float], pending: list[dict[str, float]], bar) -> None:
        """Metric row, evaluations, progress and checkpoint after `step`."""
        cfg = self.cfg
        row: dict[str, float] = {}
        if cfg.average:
            pending.append(metrics)
        if step % cfg.log_every == 0 or (cfg.log_first and step == 1) or (cfg.log_last and step == cfg.steps):
            row = _mean(pending) if cfg.average else dict(metrics)
            pending.clear()
        after = getattr(self.job, "after_step", None)
        if after is not None:
            row.update(after(step))
        if bar is not None:
            bar.update(1)
            shown = {**metrics, **row}
            bar.set_postfix({k: f"{shown[k]:.4g}" for k in cfg.postfix if k in shown}, refresh=False)
        if row and self.log is not None:
            self.log.log(step, **row)
        if (step % cfg.ckpt_every == 0 and step < cfg.steps) or (step == cfg.steps and cfg.save_last):
            self.job.save("last" if step == cfg.steps else "periodic")


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[-1]}


# ----------------------------------------------------------------------------- what every step uses


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator all of step `step`'s randomness on `rank` comes from: a resumed run draws
    exactly what the uninterrupted one would have."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + rank)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    d = min(decay, (1 + step) / (10 + step))  # warm start: early EMA follows the weights closely
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - d)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: Iterable[torch.nn.Parameter],
                   clip: float | None = None) -> float:
    """zero_grad, backward, clip the gradient norm to `clip` (None: no clipping), step; returns the
    gradient norm before clipping (nan without clipping)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip) if clip is not None else math.nan
    optimizer.step()
    return float(grad_norm)


def autocast_for(device: torch.device, precision: str | None = None) -> contextlib.AbstractContextManager:
    """The autocast of a training step: `precision` (auto | fp32 | bf16, model/common/device.py) where
    a trainer offers the choice (the teacher's --precision); None: bf16 on CUDA, fp32 on the CPU."""
    return autocast(device) if precision is None else training_autocast(device, precision)


def resume_step(directory: str | Path, modules: dict[str, torch.nn.Module],
                optimizers: dict[str, torch.optim.Optimizer]) -> int:
    """Restore weights and optimiser state from `directory`'s train state; 0 when it has none."""
    if not has_train_state(directory):
        return 0
    return load_train_state(directory, modules, optimizers)
