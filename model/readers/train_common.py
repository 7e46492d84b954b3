"""Command-line plumbing shared by `train idm` and `train classifier`: data, device, run."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

from model.common.configs import add_options, given_options, replace_config
from model.common.device import resolve_device
from model.readers.episodes import Episode, load_dataset, render_engine_episodes, split_episodes
from model.readers.trainer import ReaderTrainConfig, Trainer


def add_common_arguments(parser: argparse.ArgumentParser, default_steps: int) -> None:
    parser.add_argument(
        "--data",
        nargs="+",
        help="dataset directories from `run_world.py datagen` (each split into train/held-out); omit "
        "to render engine episodes on the spot (--episodes x --frames-per-episode)",
    )
    parser.add_argument("--out", required=True, help="checkpoint directory (resumes when it holds one)")
    add_options(parser, ReaderTrainConfig, defaults=replace(ReaderTrainConfig(), steps=default_steps))
    parser.add_argument("--preset", default="default", help="network size: tiny | default")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--episodes", type=int, default=40, help="episodes to render when --data is omitted")
    parser.add_argument("--frames-per-episode", type=int, default=600)
    parser.add_argument("--size", type=int, default=64, help="frame height = width when rendering on the spot")
    parser.add_argument("--heldout-fraction", type=float, default=0.1)
    parser.add_argument("--log-dir", help="metrics CSV/PNG (default runs/train-<kind>-<out name>)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default); 1 is much faster on a busy machine",
    )


def load_episodes(args: argparse.Namespace) -> tuple[list[Episode], list[Episode], str]:
    """(train, heldout, description of the data) from --data or rendered on the spot."""
    if args.data:  # each dataset split on its own, so every one contributes held-out episodes
        splits = [split_episodes(load_dataset(root), args.heldout_fraction) for root in args.data]
        train, held = [e for t, _ in splits for e in t], [e for _, h in splits for e in h]
        source = f"datasets {' '.join(args.data)}"
    else:
        # Seeds far from the scripted probes' (which start at 0) so eval worlds are unseen.
        seed = 10_000 + args.seed
        episodes = render_engine_episodes(args.episodes, args.frames_per_episode, args.size, args.size, seed)
        train, held = split_episodes(episodes, args.heldout_fraction)
        source = f"engine rendered on the spot: {args.episodes} x {args.frames_per_episode} frames"
    n = lambda eps: sum(len(e) for e in eps)  # noqa: E731
    return train, held, f"{source}; {n(train)} train / {n(held)} held-out frames"


def train_config(args: argparse.Namespace) -> ReaderTrainConfig:
    save_every = max(100, min(ReaderTrainConfig.save_every, args.steps // 4 or 1))
    derived = {"save_every": save_every, "warmup": min(100, args.steps // 10 + 1)}
    return replace_config(ReaderTrainConfig(), {**given_options(args, ReaderTrainConfig), **derived}, "train options")


def run_training(task, args: argparse.Namespace, data_note: str) -> int:
    device = resolve_device(args.device)
    extra = {"command": "python run_world.py " + shlex.join(sys.argv[1:]), "data": data_note}
    log_dir = Path(args.log_dir or f"runs/train-{task.kind}-{Path(args.out).name}")
    trainer = Trainer(task, args.out, train_config(args), device, extra, log_dir)
    t0 = time.perf_counter()
    try:
        heldout = trainer.run()
    except KeyboardInterrupt:
        return 130
    shown = ", ".join(f"{k}={v:.3f}" for k, v in heldout.items() if "/" not in k)
    print(f"{task.kind}: {trainer.step} steps in {time.perf_counter() - t0:.0f} s; held-out {shown}")
    print(f"saved {args.out}; metrics in {log_dir}")
    return 0
