"""Config dataclasses as the schema of the command line: one declaration per field, one override path."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from model.common.configs import ConfigError, add_options, given_options, option, replace_config
from model.training.student import StudentTrainConfig
from model.training.student import add_arguments as student_arguments


@dataclass
class Inner:
    depth: int = option(2, help="layers")
    width: float = option(0.5, flag="inner-width", help="width")
    hidden: int = 7  # no help: not an option


@dataclass
class Outer:
    steps: int = option(10, help="steps")
    name: str = option("a", choices=("a", "b"), help="name")
    fast: bool = option(False, help="go fast")
    inner: Inner = option(default_factory=Inner, nested=True)


def parse(argv: list[str], defaults=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_options(parser, Outer, defaults)
    return parser.parse_args(argv)


def test_options_come_from_the_fields():
    args = parse(["--steps", "3", "--fast", "--depth", "4", "--inner-width", "0.25"], Outer())
    assert (args.steps, args.name, args.fast, args.depth, args.inner_width) == (3, "a", True, 4, 0.25)
    assert not hasattr(args, "hidden")
    assert replace_config(Outer(), given_options(args, Outer)) == Outer(3, "a", True, Inner(4, 0.25))


def test_only_given_options_override_without_defaults():
    args = parse(["--depth", "5"])
    assert given_options(args, Outer) == {"inner": {"depth": 5}}
    assert replace_config(Outer(steps=9), given_options(args, Outer)) == Outer(steps=9, inner=Inner(depth=5))


def test_wrong_types_and_unknown_keys_are_refused():
    with pytest.raises(argparse.ArgumentError):
        parse(["--steps", "many"])
    with pytest.raises(argparse.ArgumentError):
        parse(["--name", "c"])
    with pytest.raises(ConfigError, match="unknown Outer keys"):
        replace_config(Outer(), {"stpes": 3})
    with pytest.raises(ConfigError, match="expected int"):
        replace_config(Outer(), {"steps": "3"})
    with pytest.raises(ConfigError, match="unknown Inner keys"):
        replace_config(Outer(), {"inner": {"deep": 1}})


def test_student_options_keep_their_flags():
    parser = argparse.ArgumentParser()
    student_arguments(parser)
    args = parser.parse_args(["--stage", "init", "--teacher", "t", "--out", "o", "--pair-shard", "4",
                              "--teacher-guidance", "2.5", "--guidance", "1.5", "--schedule", "4,3,2", "--steps", "7"])
    given = given_options(args, StudentTrainConfig)
    assert given == {"steps": 7, "schedule": [4, 3, 2], "dmd": {"guidance": 1.5},
                     "pairs": {"shard": 4, "guidance": 2.5}}
