"""`run_world.py serve`: the worker's command line. One worker in this process (world/server/io_loop.py
`serve`), or with --cluster a front door over world actors on Ray (world/server/cluster/,
docs/cluster.md). The single-process worker is the default and never imports Ray.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from dataclasses import asdict

import zmq

from world.backends.registry import backend_names
from world.server.admission import MAX_CHUNK_WORK
from world.server.auth import AuthError, check_bind, server_keys
from world.server.cluster import launch as cluster_launch
from world.server.io_loop import serve
from world.server.process import watch_parent
from world.server.worker_config import DEFAULT_BIND, WorkerConfig

log = logging.getLogger("world.worker")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_worker_arguments(parser)
    cluster_launch.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_cluster(args) if args.cluster else run_worker(args)


def run_cluster(args: argparse.Namespace) -> int:
    """A front door on --bind over world actors on Ray (docs/cluster.md). Players authenticate at the
    front door (its keys; a bind beyond loopback needs them or --insecure, as one worker's does),
    which also counts sessions per client and per key over all actors; the actors accept only the
    front door (world/server/cluster/link.py)."""
    log_to_stderr(args)
    for module in args.backend_module:
        importlib.import_module(module)
    try:
        config = config_from_args(args)  # each actor's worker; the front door binds --bind
        notice = check_bind(config.bind, config.keys, args.insecure)
    except AuthError as exc:
        log.error("serve: %s", exc)
        return 2
    front = cluster_launch.front_config(args, config.keys, notice)
    # The per-client cap is the front door's (an actor sees one peer per client and actor, and every
    # peer with the front door's key): an actor's own cap would only be its session count.
    actor = {k: v for k, v in asdict(config).items() if k not in ("bind", "keys", "notice")}
    return cluster_launch.run(args, {**actor, "per_client": config.max_sessions}, front)


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bind",
        default=DEFAULT_BIND,
        help="ZeroMQ endpoint to bind (port 0 or * picks a free port); default %(default)s",
    )
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="close sessions silent for S seconds (default %(default)s)",
    )
    parser.add_argument("--max-sessions", type=int, default=8, help="concurrent sessions (default %(default)s)")
    parser.add_argument(
        "--max-unacked",
        "--window",
        dest="max_unacked",
        metavar="N",
        type=int,
        default=2,
        help="chunks generated ahead of a client's last ack; the most a session's lookahead may ask for "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--per-client",
        type=int,
        default=2,
        metavar="N",
        help="sessions one client (socket, or client key) may hold (default %(default)s)",
    )
    parser.add_argument(
        "--memory-budget-mb",
        type=int,
        default=0,
        metavar="MB",
        help="estimated memory all sessions may take; 0: half the machine's (default)",
    )
    parser.add_argument(
        "--chunk-budget",
        type=float,
        default=1.0,
        metavar="S",
        help="the longest one chunk of a session may take, whatever fps it asked for; a session over "
        "it is closed (default %(default)s)",
    )
    parser.add_argument(
        "--max-chunk-work",
        type=int,
        default=MAX_CHUNK_WORK,
        metavar="N",
        help="the most work one chunk may be: height x width x frames x network evaluations; an open "
        "over it is refused over_budget (default %(default)s; raise it on a GPU worker)",
    )
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when stdin reaches end of file: the parent that owns this worker died",
    )
    parser.add_argument(
        "--server-key",
        metavar="FILE",
        help="this worker's secret key (NAME.key_secret from "
        "`run_world.py keys`): clients must authenticate (CURVE) and frames are encrypted",
    )
    parser.add_argument(
        "--authorized-keys",
        metavar="DIR",
        help="directory of the client public keys (*.key) this worker accepts; goes with --server-key",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow binding beyond loopback without keys "
        "(anyone who reaches the port plays; frames in clear); said in the log and to every client",
    )
    parser.add_argument("--max-batch", type=int, default=8, metavar="N",
                        help="chunks of sessions sharing a model and sampler made in one batch, at most N "
                        "(1: one chunk at a time, round robin) (default %(default)s)")  # fmt: skip
    parser.add_argument("--device", default=None, help="device for the generated backend (cpu, cuda, auto)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint directory for the generated backend")
    parser.add_argument(
        "--backend-module",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first so it can register extra backends (repeatable)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level on stderr (default %(default)s)")


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    counts = (args.max_sessions, args.max_unacked, args.per_client, args.max_batch)
    if args.session_timeout <= 0 or min(counts) < 1:
        raise SystemExit("serve: --session-timeout must be > 0, --max-sessions, --max-unacked, --per-client and "
                         "--max-batch >= 1")
    if not args.chunk_budget > 0 or args.memory_budget_mb < 0 or args.max_chunk_work < 1:
        raise SystemExit("serve: --chunk-budget must be > 0, --memory-budget-mb >= 0 and --max-chunk-work >= 1")
    generated = {k: v for k, v in (("device", args.device), ("checkpoint", args.checkpoint)) if v is not None}
    return WorkerConfig(
        bind=args.bind,
        session_timeout_s=args.session_timeout,
        max_sessions=args.max_sessions,
        max_unacked=args.max_unacked,
        max_batch=args.max_batch,
        backend_options={"generated": generated} if generated else {},
        per_client=args.per_client,
        memory_budget_mb=args.memory_budget_mb,
        chunk_budget_s=args.chunk_budget,
        max_chunk_work=args.max_chunk_work,
        keys=server_keys(args.server_key, args.authorized_keys),
    )


def log_to_stderr(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def run_worker(args: argparse.Namespace) -> int:
    """One worker in this process until SIGINT/SIGTERM (or its parent's end with --exit-with-parent)."""
    log_to_stderr(args)
    for module in args.backend_module:
        importlib.import_module(module)
    try:
        config = config_from_args(args)
        config.notice = check_bind(config.bind, config.keys, args.insecure)
    except AuthError as exc:
        log.error("serve: %s", exc)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.exit_with_parent:
        watch_parent(stop)

    def ready(endpoint: str) -> None:
        log.info("serving on %s (backends: %s)", endpoint, ", ".join(backend_names()))
        print(f"READY {endpoint}", flush=True)  # the one stdout line; parents read the port from it

    try:
        clean = serve(config, stop, ready)
    except zmq.ZMQError as exc:
        log.error("cannot bind %s: %s", config.bind, exc)
        return 1
    log.info("worker stopped")
    code = 0 if clean else 1
    # Jobs still running (a world being built) would keep the interpreter alive until they end;
    # everything that matters is closed, so leave now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

