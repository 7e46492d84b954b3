"""The worker's command line (world/server/serve.py): options become a WorkerConfig, bad numbers are
refused in one line, and a worker that refuses its options never says READY (world/server/process.py)."""

from __future__ import annotations

import argparse

import pytest

from world.server import serve
from world.server.process import WorkerStartError, start_worker_process
from world.server.worker_config import DEFAULT_BIND, WorkerConfig


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    serve.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_are_the_config_defaults():
    config = serve.config_from_args(parse())
    assert config == WorkerConfig(bind=DEFAULT_BIND)
    assert config.security == "none" and config.backend_options == {}


def test_options_reach_the_config():
    config = serve.config_from_args(parse("--bind", "tcp://127.0.0.1:0", "--window", "3", "--max-batch", "1",
                                          "--per-client", "4", "--chunk-budget", "0.5", "--device", "cpu",
                                          "--max-chunk-work", "4000000",
                                          "--checkpoint", "w"))  # fmt: skip
    assert (config.bind, config.max_unacked, config.max_batch, config.per_client) == ("tcp://127.0.0.1:0", 3, 1, 4)
    assert config.chunk_budget_s == 0.5 and config.max_chunk_work == 4_000_000
    assert config.backend_options == {"generated": {"device": "cpu", "checkpoint": "w"}}


@pytest.mark.parametrize("argv", [["--session-timeout", "0"], ["--max-sessions", "0"], ["--max-unacked", "0"],
                                  ["--per-client", "0"], ["--max-batch", "0"], ["--chunk-budget", "0"],
                                  ["--memory-budget-mb", "-1"], ["--max-chunk-work", "0"]])  # fmt: skip
def test_bad_numbers_are_refused_in_one_line(argv):
    with pytest.raises(SystemExit, match=f"serve: .*{argv[0]}"):
        serve.config_from_args(parse(*argv))


def test_the_cluster_options_share_the_command():
    args = parse("--cluster", "local", "--actors", "3")
    assert (args.cluster, args.actors) == ("local", 3)
    assert parse().cluster is None


def test_a_worker_that_refuses_its_options_never_says_ready():
    with pytest.raises(WorkerStartError, match="exited with code 1 before READY"):
        start_worker_process(extra_args=["--max-batch", "0"], timeout_s=60)
