"""`run_world.py train WHAT ...`: one dispatcher for every training command.

Each WHAT lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`. A module
is imported only when its WHAT is on the command line (world/commands.py, the style of every
`run_world.py` command), so `train autoencoder` never pays for the transformer code.
"""

from __future__ import annotations

import argparse
import sys

from world.commands import Commands, add_commands

COMMANDS: Commands = {
    "autoencoder": ("model.training.autoencoder", "train the frame autoencoder on a dataset"),
    "latents": ("model.training.encode_latents", "alias of `run_world.py encode-latents` (it trains nothing)"),
    "teacher": ("model.training.teacher", "train the causal diffusion transformer on cached latents"),
    "student": ("model.training.student", "distil the teacher into the few-step diagonal student"),
    "idm": ("model.readers.train_idm", "train the inverse-dynamics model used to score action accuracy"),
    "classifier": ("model.readers.train_classifier", "train the theme classifier used to score prompts"),
}


# WHATs kept for older scripts, each the alias of a command that names what it does.
ALIASES: dict[str, str] = {"latents": "encode-latents"}


def add_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """`argv`: the words after `train`; only the WHAT they name is imported (None: every one)."""
    add_commands(parser, COMMANDS, argv, dest="what", required=True)


def run(args: argparse.Namespace) -> int:
    if args.what in ALIASES:
        print(f"train {args.what}: an alias of `run_world.py {ALIASES[args.what]}`", file=sys.stderr, flush=True)
    return int(args._what_run(args) or 0)
