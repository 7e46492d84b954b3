#!/usr/bin/env python3
"""One entry point for the generated-world simulator.

    python run_world.py                 # worker + window on the bundled default world
    python run_world.py play ...        # the window (or --headless client)
    python run_world.py serve ...       # the ZeroMQ worker
    python run_world.py datagen ...     # render engine episodes into a dataset
    python run_world.py export ...      # a recorded session -> mp4
    python run_world.py replay ...      # make a recording again (engine or generated), check every frame
    python run_world.py train WHAT ...  # autoencoder | teacher | student | idm | classifier
    python run_world.py encode-latents  # a dataset -> the latent cache teacher training reads
    python run_world.py eval ...        # world-model evaluation suite
    python run_world.py bench ...       # sampler speed benchmark

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
modules are imported only when their subcommand runs (world/commands.py), so `play` never pays for torch.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from world.commands import add_commands

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "play": ("controls.play", "open the window (or a --headless client) on a world"),
    "serve": ("world.server.serve", "run the ZeroMQ worker that serves worlds (--cluster: as Ray actors)"),
    "keys": ("world.server.auth", "make a CURVE key pair for a remote worker or player (docs/protocol.md)"),
    "datagen": ("world.data.datagen", "render engine episodes with a scripted player into a dataset"),
    "export": ("world.data.export", "turn a recorded session into an mp4"),
    "replay": ("world.data.replay", "make a recording again (engine or generated world) and check every frame"),
    "train": ("model.training.train", "train a network (autoencoder, teacher, student, idm, classifier)"),
    "encode-latents": ("model.training.encode_latents",
                       "encode a dataset to a latent cache (run once before teacher training)"),
    "eval": ("model.evaluation.suite", "score a world model against the engine (fidelity, actions, prompts, drift)"),
    "bench": ("controls.harness.bench_sessions", "measure how fast a world model makes frames with each sampler"),
}


class Parser(argparse.ArgumentParser):
    """Usage errors in one line plus where to read more: the usage block argparse prints first (17
    lines for `play`) buried the one line that said what was wrong. Subcommand parsers inherit it."""

    def error(self, message: str):
        from world.launcher import command

        see = command(f"{self.prog.removeprefix('run_world.py').strip()} --help".strip())
        self.exit(2, f"{self.prog}: error: {message} (see {see})\n")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    # allow_abbrev=False everywhere: an abbreviation such as `--backend` silently meaning
    # `--backend-module` (serve) is worse than an error naming the option that does not exist.
    parser = Parser(prog="run_world.py", description=__doc__.split("\n")[0], allow_abbrev=False)
    add_commands(parser, SUBCOMMANDS, argv, dest="command")  # imports only the module whose subcommand runs
    return parser


def _plain_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as one line for a person ("run_world.py: warning: ..."), never Python's source line."""
    return f"run_world.py: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["play"]  # no arguments: local worker + window on the default world
    args = build_parser(argv).parse_args(argv)
    if args.command is None:
        build_parser([]).print_help()
        return 2
    return int(args._command_run(args) or 0)


if __name__ == "__main__":
    warnings.formatwarning = _plain_warning  # the process's own: callers of main() keep theirs
    sys.exit(main())
