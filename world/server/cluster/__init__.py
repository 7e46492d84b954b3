"""More players than one machine holds: world workers as Ray actors behind one ZeroMQ front door.

- `actor.py`: `WorldActor`, one ordinary worker (world/server/io_loop.py `serve`, batching included) inside a
  Ray actor, one per GPU (or per CPU worker);
- `relay.py`: `FrontDoor`, the ROUTER clients already speak to: places each new session on the least
  loaded live actor, relays its messages both ways, and ends the sessions of an actor that dies with
  a clear error to their clients;
- `players.py`: what the front door holds per client and its limits (sessions per client and per key
  over all actors, sockets per peer, descriptors), and the settings `FrontConfig`;
- `link.py`: the keys of the hop from the front door to the actors, which accept no one else;
- `pool.py`: `RayPool`, the actors on a local or remote Ray cluster (membership, placement with
  `num_gpus=1`, restarts), reporting them up and down to the front door;
- `launch.py`: `run_world.py serve --cluster local|ray://HEAD` (docs/cluster.md).

Ray is imported only by pool.py and launch.py, and only for `--cluster` (`pip install -e ".[cluster]"`):
the single-process worker stays the default and needs no Ray.
"""
