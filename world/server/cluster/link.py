"""The hop between the front door and its actors: CURVE with key pairs made for this cluster.

Actors listen only to their front door. Each actor's worker is a CURVE server
(world/server/auth.py) whose one authorized client key is the front door's; the front door's
sockets to the actors connect with that key. Both pairs are made when the front door starts
(libzmq's `curve_keypair`), reach the actors as arguments of their creation through Ray, and are
written nowhere but the front door's public key into an actor's private temporary directory (a
worker's authenticator reads authorized keys from a directory). Whoever reaches an actor's port
without the front door's secret key, a player with its own key included, never completes the
handshake and gets no answer, as from any keyed worker. This holds whether or not players
authenticate at the front door (`serve --server-key`): what a player's link is, `opened.security`
says (the front door writes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import zmq

from world.server.auth import ClientKeys, ServerKeys

AUTHORIZED_NAME = "front-door.key"


@dataclass(frozen=True)
class LinkKeys:
    actor_public: bytes  # z85, 40 bytes
    door_public: bytes
    actor_secret: bytes = field(repr=False)
    door_secret: bytes = field(repr=False)

    @classmethod
    def new(cls) -> LinkKeys:
        actor_public, actor_secret = zmq.curve_keypair()
        door_public, door_secret = zmq.curve_keypair()
        return cls(actor_public, door_public, actor_secret, door_secret)

    def door(self) -> ClientKeys:
        """What the front door's sockets to the actors connect with."""
        return ClientKeys(self.door_public, self.door_secret, self.actor_public)

    def actor(self, directory: Path) -> ServerKeys:
        """An actor's worker keys; writes the front door's public key, its one authorized client key,
        into `directory` (ZeroMQ's certificate format, as `run_world.py keys` writes it)."""
        certificate = f'metadata\ncurve\n    public-key = "{self.door_public.decode("ascii")}"\n'
        (Path(directory) / AUTHORIZED_NAME).write_text(certificate)
        return ServerKeys(self.actor_public, self.actor_secret, Path(directory))
