"""Sub-commands imported only when they run: the one dispatch style of `run_world.py COMMAND` and of
commands with sub-commands of their own (`run_world.py train WHAT`).

A table maps each name to (module, help). Every name gets a sub-parser, so `--help` lists them all,
but only the module of the name on the command line is imported: it fills its sub-parser
(`add_arguments(parser)`) and its `run(args) -> int` is stored as `args._<dest>_run`. A module with
sub-commands of its own exposes `COMMANDS` and takes the rest of the command line,
`add_arguments(parser, argv)`, to do the same one level down. `play` never pays for torch, and
`train autoencoder` never for the transformer.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

Commands = dict[str, tuple[str, str]]  # name -> (module, help)


def chosen(argv: Sequence[str] | None) -> str | None:
    """The sub-command `argv` names: its first word, unless that is an option."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def add_commands(parser: argparse.ArgumentParser, table: Commands, argv: Sequence[str] | None, dest: str,
                 required: bool = False) -> None:  # fmt: skip
    """Sub-parsers for `table`; `argv` is the command line from this level on (None: every module is
    imported, for code that builds the whole parser). The chosen name lands in `args.<dest>`."""
    sub = parser.add_subparsers(dest=dest, metavar=dest.upper())
    sub.required = required
    wanted = chosen(argv)
    for name, (module_name, help_text) in table.items():
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        if argv is not None and name != wanted:
            continue
        module = importlib.import_module(module_name)
        if hasattr(module, "COMMANDS"):
            module.add_arguments(p, None if argv is None else list(argv[1:]))
        else:
            module.add_arguments(p)
        p.set_defaults(**{f"_{dest}_run": module.run})
