"""`run_world.py serve`: one worker (world/server/worker.py), or with --cluster a front door over world
actors on Ray (world/server/cluster/, docs/cluster.md). The single-process worker is the default and never
imports Ray."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import asdict

from world.server import worker
from world.server.cluster import launch as cluster_cli


def add_arguments(parser: argparse.ArgumentParser) -> None:
    worker.add_arguments(parser)
    cluster_cli.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if not args.cluster:
        return worker.run(args)
    for module in args.backend_module:
        importlib.import_module(module)
    # Keys protect the front door, the only socket a player reaches: clients authenticate there
    # and frames are encrypted on the way to it. Actors listen on the cluster's own network.
    config = worker.config_from_args(args)  # each actor's worker; the front door binds --bind
    actor = {k: v for k, v in asdict(config).items() if k not in ("bind", "keys")}
    return cluster_cli.run(args, actor, keys=config.keys)
