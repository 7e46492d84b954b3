"""`run_world.py train WHAT ...`: one dispatcher for every training command.

Each WHAT lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`. A module
is imported only when its WHAT is chosen (argparse fills that sub-parser at parse time), so
`train autoencoder` never pays for the transformer code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

TARGETS: dict[str, tuple[str, str]] = {
    "autoencoder": ("model.training.autoencoder", "train the frame autoencoder on a dataset"),
    "latents": ("model.training.encode_latents", "alias of `run_world.py encode-latents` (it trains nothing)"),
    "teacher": ("model.training.teacher", "train the causal diffusion transformer on cached latents"),
    "student": ("model.training.student", "distil the teacher into the few-step diagonal student"),
    "idm": ("model.readers.train_idm", "train the inverse-dynamics model used to score action accuracy"),
    "classifier": ("model.readers.train_classifier", "train the theme classifier used to score prompts"),
}


# WHATs kept for older scripts, each the alias of a command that names what it does.
ALIASES: dict[str, str] = {"latents": "encode-latents"}


class _LazySubParsers(argparse._SubParsersAction):
    """Sub-parsers whose arguments come from the chosen module, imported only when chosen."""

    def __call__(self, parser, namespace, values, option_string=None):
        what = values[0]
        sub = self._name_parser_map.get(what)
        if sub is not None and not sub.get_default("_train_loaded"):
            module = importlib.import_module(TARGETS[what][0])
            module.add_arguments(sub)
            sub.set_defaults(_train_run=module.run, _train_loaded=True)
        super().__call__(parser, namespace, values, option_string)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", metavar="WHAT", action=_LazySubParsers)
    sub.required = True
    for what, (_, help_text) in TARGETS.items():
        sub.add_parser(what, help=help_text, description=help_text, allow_abbrev=False)


def run(args: argparse.Namespace) -> int:
    if args.what in ALIASES:
        print(f"train {args.what}: an alias of `run_world.py {ALIASES[args.what]}`", file=sys.stderr, flush=True)
    return int(args._train_run(args) or 0)
