"""What the front door holds for its players, and the limits on it (world/server/cluster/relay.py).

For each player (a client socket, by its routing identity) the front door keeps an upstream
DEALER per actor that runs one of its sessions or an open of it: two descriptors each (the socket's
mailbox and its connection to the actor), on top of the player's own connection. So that no
player, and no crowd of them, can take the front door's descriptors from everybody else:

- a player's upstream sockets are closed as soon as it holds nothing on that actor (its open was
  refused, its last session closed) and, whatever it holds, once it has been silent for `idle_s`
  (by then its actors have expired its sessions);
- one player holds at most `per_client` sessions (opens in flight included) over all actors, and
  so does one client key on a keyed front door, whatever the number of sockets: counted here, the
  rule of one worker (world/server/admission.py);
- one peer (its client key on a keyed front door, else its address) holds at most `per_peer`
  upstream sockets;
- a new upstream socket needs RESERVE_FDS descriptors to spare under RLIMIT_NOFILE, and one of the
  context's ZeroMQ sockets to spare, so ping, status and refusals are always answered.

An open past a limit is answered `busy` naming the limit (or `too_many_sessions`) and logged.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
from collections import Counter
from dataclasses import dataclass

from world.server import protocol as P
from world.server.admission import Admission, AdmissionConfig, Holder
from world.server.auth import ClientKeys, ServerKeys, fingerprint
from world.server.ratelog import RateLimitedLog

log = logging.getLogger("world.cluster")

RESERVE_FDS = 64  # descriptors kept free for new players' connections and the front door's replies
RESERVE_SOCKETS = 16  # ZeroMQ sockets kept free in the context (actors' control sockets, the authenticator's)
RETRY_AFTER_S = 5.0


@dataclass
class FrontConfig:
    """How a front door serves; world/server/cluster/launch.py fills it from `serve` options."""

    keys: ServerKeys | None = None  # players authenticate with CURVE (world/server/auth.py)
    upstream: ClientKeys | None = None  # what its sockets to the actors connect with (world/server/cluster/link.py)
    notice: str | None = None  # told to every player in `opened` (a bind beyond loopback with --insecure)
    per_client: int = 2  # sessions one player (socket, or client key) may hold over all actors
    per_peer: int = 64  # upstream sockets held for one peer (client key, else address)
    idle_s: float = 60.0  # a player silent this long loses its upstream sockets (2x the session timeout)
    heartbeat_s: float = 0.25  # pings to each actor
    liveness_s: float = 5.0  # an actor silent this long is lost

    @property
    def security(self) -> str:
        """What `opened.security` says of a player's link to this front door."""
        return "curve" if self.keys is not None else "none"


@dataclass
class Player:
    peer: str  # its client key (z85) on a keyed front door, else its address
    user: str | None  # its client key on a keyed front door
    heard: float  # when its latest message arrived (time.monotonic)
    sockets: int = 0  # upstream sockets held for it


def descriptor_headroom() -> int | None:
    """Descriptors this process may still open under its soft RLIMIT_NOFILE; None where unknown."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        return None
    return None if soft == resource.RLIM_INFINITY else soft - in_use


class Players:
    """The players holding upstream sockets: their caps, the peers' counts, the silent ones."""

    def __init__(self, config: FrontConfig, max_sockets: int):
        self.config = config
        self.max_upstream = max(1, max_sockets - RESERVE_SOCKETS)  # the context's ZeroMQ sockets
        self.known: dict[bytes, Player] = {}
        self.peer_sockets: Counter[str] = Counter()
        # The rule of one worker for sessions per client and per key; the actors apply the rest.
        self.admission = Admission(AdmissionConfig(max_sessions=sys.maxsize, per_client=config.per_client))
        self.log = RateLimitedLog(log)
        self.refused = 0  # opens refused for a limit of the front door

    def heard(self, identity: bytes, now: float) -> None:
        player = self.known.get(identity)
        if player is not None:
            player.heard = now

    def admit(self, held: list[bytes], identity: bytes, user: str | None) -> None:
        """Raise ProtocolError (too_many_sessions) when the player or its key holds `per_client`
        sessions already; `held`: the owner of each session and open in flight, over all actors."""
        holders = [Holder(owner, self.user(owner), 0) for owner in held]
        try:
            self.admission.check(holders, Holder(identity, user, 0))
        except P.ProtocolError:
            self.refused += 1
            raise

    def user(self, identity: bytes) -> str | None:
        player = self.known.get(identity)
        return None if player is None else player.user

    def room(self, peer: str, upstream: int) -> str | None:
        """Why one more upstream socket for `peer` would exceed a limit (`upstream`: held now), else None."""
        if self.peer_sockets[peer] >= self.config.per_peer:
            who = f"client key {fingerprint(peer.encode())}" if self.config.keys is not None else f"address {peer}"
            return f"this peer ({who}) holds {self.peer_sockets[peer]} upstream sockets, the most one peer may hold"
        if upstream >= self.max_upstream:
            return f"the front door holds its maximum of {self.max_upstream} upstream sockets"
        headroom = descriptor_headroom()
        if headroom is not None and headroom < RESERVE_FDS + 2:
            return (f"the front door has {max(0, headroom)} file descriptors left under its RLIMIT_NOFILE "
                    f"and keeps {RESERVE_FDS} for answering")  # fmt: skip
        return None

    def full(self, why: str, ref: P.Ref) -> P.Error:
        """The answer to an open refused for a limit of the front door; logged (rate-limited)."""
        self.refused += 1
        self.log.warning("front door full, open refused: %s", why)
        return P.Error(code=P.BUSY, message=f"{why}; retry in {RETRY_AFTER_S:g} s", ref=ref, request="open",
                       retry_after_s=RETRY_AFTER_S)  # fmt: skip

    def socket_opened(self, identity: bytes, peer: str, user: str | None, now: float) -> None:
        player = self.known.setdefault(identity, Player(peer, user, now))
        player.sockets += 1
        self.peer_sockets[player.peer] += 1

    def socket_closed(self, identity: bytes) -> None:
        player = self.known[identity]
        player.sockets -= 1
        self.peer_sockets[player.peer] -= 1
        if self.peer_sockets[player.peer] <= 0:
            del self.peer_sockets[player.peer]
        if player.sockets <= 0:
            del self.known[identity]

    def silent(self, now: float) -> list[bytes]:
        """Players silent for longer than idle_s."""
        return [identity for identity, p in self.known.items() if now - p.heard > self.config.idle_s]
