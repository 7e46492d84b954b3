"""`run_world.py serve --cluster local|ray://HEAD`: the front door on this machine, world actors on Ray.

    run_world.py serve --cluster local --actors 2          # a Ray instance started here, 2 actors
    run_world.py serve --cluster ray://HEAD:10001 --actors 4 --actor-gpus 1 --bind tcp://0.0.0.0:5555
    run_world.py serve --cluster auto                       # join the Ray cluster this machine is part of

Every other `serve` option (--checkpoint, --device, --max-sessions, --max-batch, --max-unacked,
--session-timeout) configures each actor's worker; --per-client, --server-key/--authorized-keys and
--insecure are the front door's (it counts sessions per client and per key over all actors, and
players authenticate there). docs/cluster.md has the set-ups.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import threading

from world.server.auth import ServerKeys
from world.server.cluster.players import FrontConfig

log = logging.getLogger("world.cluster")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster (pip install -e \".[cluster]\")")
    group.add_argument("--cluster", metavar="local|auto|ray://HEAD",
                       help="serve through world actors on Ray: 'local' starts a Ray instance here, 'auto' "
                       "joins this machine's cluster, ray://HOST:PORT a remote head (default: no cluster)")
    group.add_argument("--actors", type=int, default=2, help="world actors (default %(default)s)")
    group.add_argument("--actor-gpus", type=float, default=0.0, help="GPUs per actor (1 on GPU workers)")
    group.add_argument("--actor-cpus", type=float, default=1.0, help="CPUs per actor (default %(default)s)")
    group.add_argument("--actor-host", default=None,
                       help="address actors' workers listen on (default: 127.0.0.1 for local, else each "
                       "actor's node address); they accept only the front door's key")
    group.add_argument("--per-peer", type=int, default=64, metavar="N",
                       help="sockets to the actors the front door holds for one peer (its client key, else "
                       "its address); past it an open is answered busy (default %(default)s)")


def pool_config(args: argparse.Namespace, worker: dict):
    from world.server.cluster.pool import PoolConfig

    if args.actors < 1:
        raise SystemExit("serve: --actors must be >= 1")
    host = args.actor_host or ("127.0.0.1" if args.cluster == "local" else None)  # None: each node's own
    return PoolConfig(args.actors, args.actor_gpus, args.actor_cpus, host, worker)


def start_ray(cluster: str, config) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reporting home from a player's machine
    import ray

    if cluster == "local":
        # Logical CPUs: enough for every actor even on a 2-core laptop (they share the cores).
        cpus = max(os.cpu_count() or 1, int(config.actors * config.cpus_per_actor + 0.999))
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=cluster, log_to_driver=False)


def front_config(args: argparse.Namespace, keys: ServerKeys | None = None, notice: str | None = None) -> FrontConfig:
    """The front door's settings: players' keys, the session cap per client and key, the limits."""
    if args.per_peer < 1:
        raise SystemExit("serve: --per-peer must be >= 1")
    return FrontConfig(keys=keys, notice=notice, per_client=args.per_client, per_peer=args.per_peer,
                       idle_s=2 * args.session_timeout)  # fmt: skip


def run(args: argparse.Namespace, worker: dict, front: FrontConfig) -> int:
    """Front door on args.bind (`front`: its FrontConfig, front_config), actors on Ray; returns when
    SIGINT/SIGTERM arrives."""
    from world.server.cluster.pool import RayPool
    from world.server.cluster.relay import serve_front

    config = pool_config(args, worker)
    start_ray(args.cluster, config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    events: queue.Queue = queue.Queue()
    pool = RayPool(config, events)
    front.upstream = pool.link.door()  # the actors accept only this key

    def ready(endpoint: str) -> None:
        log.info("front door on %s, %d world actors on Ray (%s)", endpoint, config.actors, args.cluster)
        print(f"READY {endpoint}", flush=True)

    try:
        serve_front(args.bind, events, stop, ready, front)
    finally:
        pool.shutdown()
        import ray

        ray.shutdown()
    return 0
