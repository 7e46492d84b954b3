"""`WorldActor`: one ordinary world worker (world/server/io_loop.py `serve`) inside a Ray actor.

Ray-free on purpose (world/server/cluster/pool.py makes it remote), so it runs and reads like any worker:
the constructor starts `serve` on a thread bound to `bind_host` and returns once it listens; the
front door reaches it over ZeroMQ at `info()["endpoint"]`, never through Ray calls, so chunks take the
same path and the same batching as on a single machine. The worker is a CURVE server that accepts
only the front door's key (world/server/cluster/link.py). `wait()` blocks until the worker stops,
which is how the pool learns that an actor died (the call fails when its process goes).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading

from world.server.cluster.link import LinkKeys
from world.server.io_loop import serve
from world.server.worker_config import WorkerConfig


class WorldActor:
    def __init__(self, config: dict, link: LinkKeys, bind_host: str | None = "127.0.0.1"):
        """config: WorkerConfig fields; link: the keys of the hop from the front door; bind_host None:
        this node's address as Ray knows it (clusters of several machines, where the front door
        connects from elsewhere)."""
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.stop = threading.Event()
        ready = threading.Event()
        self.endpoint = ""

        def on_ready(endpoint: str) -> None:
            self.endpoint = endpoint
            ready.set()

        if bind_host is None:
            import ray.util

            bind_host = ray.util.get_node_ip_address()
        self.key_dir = tempfile.mkdtemp(prefix="world-actor-keys-")  # mode 0700: the front door's public key
        keys = link.actor(self.key_dir)
        worker = WorkerConfig(**{**config, "bind": f"tcp://{bind_host}:0", "keys": keys})
        self.thread = threading.Thread(target=serve, args=(worker, self.stop, on_ready), name="world-worker",
                                       daemon=True)  # fmt: skip
        self.thread.start()
        if not ready.wait(timeout=60.0):
            raise RuntimeError("the world worker inside the actor did not start listening within 60 s")

    def info(self) -> dict:
        """Where the front door reaches this worker, and which process and host it is."""
        return {"endpoint": self.endpoint, "pid": os.getpid(), "host": socket.gethostname()}

    def wait(self) -> None:
        """Block until the worker stops (it never does by itself: this fails when the actor dies)."""
        self.thread.join()

    def shutdown(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10.0)
        shutil.rmtree(self.key_dir, ignore_errors=True)
