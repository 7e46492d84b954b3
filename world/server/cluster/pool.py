"""`RayPool`: world actors on a Ray cluster, reported up and down to the front door.

Ray does what we do not want to write: membership (which machines are there), placement (an actor
asks for `num_gpus=1` on a GPU worker, else `num_cpus`; Ray puts it where that is free, spreading
actors over nodes), restarts (`max_restarts=-1`: a dead actor's process is started again, on any
node that has room) and, on Kubernetes, scaling (KubeRay adds nodes when actors wait for room).

For each actor a watcher thread asks for its `info()` (blocking while Ray starts or restarts it) and
reports ("up", index, info), then blocks on `wait()`, which fails when the actor's process dies:
it reports ("down", index, why) at once and goes back to waiting for the restart. The front door
reads these events from a queue (world/server/cluster/relay.py); it also notices a silent actor by itself
(heartbeats), for the node that is cut off rather than dead.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

from world.server.cluster.actor import WorldActor
from world.server.cluster.link import LinkKeys

log = logging.getLogger("world.cluster")


@dataclass
class PoolConfig:
    actors: int = 2  # world actors (one per GPU, or per CPU worker)
    gpus_per_actor: float = 0.0  # 1 for a GPU worker: Ray places each actor on a GPU of its own
    cpus_per_actor: float = 1.0
    bind_host: str | None = "127.0.0.1"  # where actors' workers listen; None: each actor's node address
    worker: dict | None = None  # WorkerConfig fields for every actor's worker (max_sessions, ...)


class RayPool:
    def __init__(self, config: PoolConfig, events: queue.Queue):
        import ray

        self.ray, self.config, self.events = ray, config, events
        self.link = LinkKeys.new()  # its actors accept only the front door that holds link.door()
        remote = ray.remote(WorldActor).options(
            num_cpus=config.cpus_per_actor, num_gpus=config.gpus_per_actor, max_restarts=-1,
            max_concurrency=4,  # wait() blocks one thread; info() and shutdown() use others
            scheduling_strategy="SPREAD",
        )  # fmt: skip
        self.handles = [remote.remote(config.worker or {}, self.link, config.bind_host) for _ in range(config.actors)]
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._watch, args=(i,), name=f"watch-actor-{i}", daemon=True)
                        for i in range(config.actors)]  # fmt: skip
        for t in self.threads:
            t.start()

    def _info(self, index: int) -> dict | None:
        """The actor's info once it is up (waiting while Ray restarts it); None if it is gone for good."""
        from ray.exceptions import ActorDiedError

        while not self._stop.is_set():
            try:
                return self.ray.get(self.handles[index].info.remote())
            except ActorDiedError as exc:  # out of restarts, or killed for good
                log.error("actor %d is gone for good: %s", index, exc)
                return None
            except Exception:  # noqa: BLE001 - "temporarily unavailable" while it restarts: ask again
                self._stop.wait(0.5)
        return None

    def _watch(self, index: int) -> None:
        handle = self.handles[index]
        while not self._stop.is_set():
            info = self._info(index)
            if info is None:
                return
            self.events.put(("up", index, info))
            try:
                self.ray.get(handle.wait.remote())
            except Exception as exc:  # noqa: BLE001 - the actor died: RayActorError and kin
                why = type(exc).__name__
            else:
                why = "its worker stopped"
            if not self._stop.is_set():
                self.events.put(("down", index, f"the actor died ({why})"))

    def shutdown(self) -> None:
        self._stop.set()
        for handle in self.handles:
            try:
                self.ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
