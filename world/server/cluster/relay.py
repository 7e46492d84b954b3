"""`FrontDoor`: the ZeroMQ ROUTER clients connect to, relaying each session to the actor that runs it.

Clients speak the ordinary protocol (docs/protocol.md) and cannot tell a front door from a worker,
except that a session may end with reason "worker_lost". One thread owns every socket:

- the ROUTER facing clients; requests are validated (`decode_request`) and forwarded unchanged;
- per (client, actor) a DEALER connected to that actor's worker, so the worker sees each client as
  its own peer (session ownership and liveness work as on one machine), and its replies come back on
  that DEALER to be forwarded to the client unchanged (`opened` gets the front door's own `security`
  and `notice`: they describe the player's link, which is to the front door);
- per actor a control DEALER that pings the worker every `heartbeat_s`.
All sockets to the actors connect with the front door's link key (world/server/cluster/link.py):
the actors accept no one else.

Placement: an `open` goes to the live actor with the fewest sessions (opens still in flight count).
Routing: requests naming a session go to the actor that opened it; a ping goes to every actor that
holds one of the client's sessions (keeping them alive there), or is answered here; a status without
a session is answered here with the cluster's state.

What the front door holds per client, and its limits (sessions per client and per key over all
actors, upstream sockets per peer, descriptors), are world/server/cluster/players.py's: a client's
DEALER to an actor is closed once it holds nothing there (a refused open, its last session closed)
or has been silent for `idle_s`; an open past a limit is answered, never dropped.

An actor is lost when the pool says so (Ray saw its process die: well under a second) or when it
has not answered a ping for `liveness_s` (a node cut off; long enough that a busy CPU does not fake
it): each of its sessions gets an `error` (code backend_error, "worker lost ...") and `closed`
(reason "worker_lost") at once, its opens in flight an error, and the client reconnects to be
placed on another actor. Nothing else waits on it: the other actors' traffic keeps flowing through
the same loop.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from world.server import protocol as P
from world.server import wire
from world.server.auth import ServerKeys, secure_client, secure_server, start_authenticator
from world.server.cluster.players import FrontConfig, Players
from world.server.ratelog import RateLimitedLog

log = logging.getLogger("world.cluster")

WORKER_LOST = "worker_lost"  # the reason of the `closed` a client gets when its actor is gone
REAP_EVERY_S = 1.0  # how often silent clients are looked for


@dataclass
class ActorLink:
    """The front door's view of one actor."""

    index: int
    endpoint: str
    control: zmq.Socket
    pid: int | None = None
    host: str = ""
    last_pong: float = field(default_factory=time.monotonic)
    sessions: set[str] = field(default_factory=set)
    opening: dict[bytes, int] = field(default_factory=dict)  # client identity -> opens in flight
    dealers: dict[bytes, zmq.Socket] = field(default_factory=dict)  # client identity -> its DEALER

    @property
    def load(self) -> int:
        return len(self.sessions) + sum(self.opening.values())


# Events from the pool: ("up", index, info dict with endpoint/pid/host) or ("down", index, why).
PoolEvent = tuple[str, int, object]


class FrontDoor:
    def __init__(self, context: zmq.Context, router: zmq.Socket, events: queue.Queue,
                 config: FrontConfig | None = None):  # fmt: skip
        self.context, self.router, self.events = context, router, events
        self.config = config or FrontConfig()
        self.heartbeat_s, self.liveness_s = self.config.heartbeat_s, self.config.liveness_s
        self.instance = secrets.token_hex(8)
        self.actors: dict[int, ActorLink] = {}
        self.sessions: dict[str, tuple[int, bytes]] = {}  # session -> (actor index, owner identity)
        self.owners: dict[zmq.Socket, tuple[int, bytes]] = {}  # DEALER -> (actor index, client identity)
        self.players = Players(self.config, context.get(zmq.MAX_SOCKETS))
        self.log = RateLimitedLog(log)
        self._next_ping = 0.0
        self._next_reap = 0.0
        self.lost = 0  # actors lost so far
        self.reaped = 0  # silent clients whose upstream sockets were closed

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._pool_events()
            now = time.monotonic()
            self._heartbeat(now)
            self._reap(now)
            poller = zmq.Poller()
            poller.register(self.router, zmq.POLLIN)
            for link in self.actors.values():
                poller.register(link.control, zmq.POLLIN)
            for dealer in self.owners:
                poller.register(dealer, zmq.POLLIN)
            for sock, _ in poller.poll(int(self.heartbeat_s * 1000 / 2)):
                self._readable(sock)
        for index in list(self.actors):
            self._close_link(self.actors.pop(index))

    def _readable(self, sock: zmq.Socket) -> None:
        for _ in range(256):  # bounded, so no socket starves the others
            if sock.closed:  # a `closed` reply just freed this client's DEALER
                return
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=sock is not self.router)
            except zmq.Again:
                return
            if sock is self.router:
                self._received(frames)
            elif sock in self.owners:
                self._from_actor(sock, frames)
            else:
                self._pong(sock)

    def _received(self, frames: list[zmq.Frame]) -> None:
        """A client's message: who sent it (identity, client key, address), then what it asks."""
        identity, user = frames[0].bytes, None
        if self.config.keys is not None:  # the key ZAP accepted
            user = frames[-1].get("User-Id")
        try:
            self._from_client(identity, [f.bytes for f in frames[1:]], user, user or peer_address(frames[-1]))
        except Exception as exc:  # a bug must cost one message, never the front door
            self.log.warning("handling a client's message failed: %s: %.200s", type(exc).__name__, exc)
            self._send(identity, P.Error(code=P.INTERNAL, message=f"{type(exc).__name__} in the front door"))

    # ------------------------------------------------------------------ actors up and down

    def _pool_events(self) -> None:
        while True:
            try:
                kind, index, detail = self.events.get_nowait()
            except queue.Empty:
                return
            if kind == "up":
                self.add_actor(index, detail)
            elif index in self.actors:
                self.actor_lost(index, str(detail))

    def add_actor(self, index: int, info: dict) -> None:
        if index in self.actors:
            self.actor_lost(index, "it restarted")
        control = self._upstream_socket(info["endpoint"])
        self.actors[index] = ActorLink(index, info["endpoint"], control, info.get("pid"), info.get("host", ""))
        log.info("actor %d up at %s (pid %s)", index, info["endpoint"], info.get("pid"))

    def actor_lost(self, index: int, why: str) -> None:
        """End every session of the actor with an error its client can act on (reconnect)."""
        link = self.actors.pop(index)
        self.lost += 1
        log.warning("actor %d lost (%s): ending its %d sessions", index, why, len(link.sessions))
        message = (f"worker lost: the actor running this session ({link.host} pid {link.pid}) is gone ({why}); "
                   "reconnect to continue on another")  # fmt: skip
        for sid in sorted(link.sessions):
            _, owner = self.sessions.pop(sid)
            self._send(owner, P.Error(code=P.BACKEND_ERROR, message=message, session=sid))
            self._send(owner, P.Closed(session=sid, reason=WORKER_LOST))
        for owner, count in link.opening.items():
            for _ in range(count):
                self._send(owner, P.Error(code=P.BUSY, message=f"{message}; retry the open", request="open"))
        self._close_link(link)

    def _close_link(self, link: ActorLink) -> None:
        for identity in list(link.dealers):
            self._drop_dealer(link, identity)
        link.control.close(linger=0)

    def _heartbeat(self, now: float) -> None:
        if now < self._next_ping:
            return
        self._next_ping = now + self.heartbeat_s
        for link in list(self.actors.values()):
            if now - link.last_pong > self.liveness_s:
                self.actor_lost(link.index, f"no answer for {now - link.last_pong:.1f} s")
                continue
            try:
                link.control.send_multipart(wire.encode(P.Ping()), zmq.NOBLOCK)
            except zmq.Again:
                pass  # its queue is full: the missing pongs will say so

    def _pong(self, control: zmq.Socket) -> None:
        for link in self.actors.values():
            if link.control is control:
                link.last_pong = time.monotonic()

    # ------------------------------------------------------------------ what clients hold here

    def _upstream_socket(self, endpoint: str) -> zmq.Socket:
        """A DEALER to an actor's worker, with the front door's link key (the actors accept no other)."""
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 1000)
        if self.config.upstream is not None:
            secure_client(sock, self.config.upstream)
        sock.connect(endpoint)
        return sock

    def _dealer(self, link: ActorLink, identity: bytes, request: P.Open, user: str | None,
                peer: str) -> zmq.Socket | None:  # fmt: skip
        """The client's DEALER to this actor, made if needed; None (the open answered) when a limit
        of the front door is reached."""
        dealer = link.dealers.get(identity)
        if dealer is not None:
            return dealer
        why = self.players.room(peer, len(self.owners))
        if why is None:
            try:
                dealer = self._upstream_socket(link.endpoint)
            except zmq.ZMQError as exc:  # EMFILE and kin: the checks above leave room, but say so if not
                why = f"the front door cannot open a socket to the actor ({exc})"
        if dealer is None:
            self._send(identity, self.players.full(why, request.ref))
            return None
        link.dealers[identity] = dealer
        self.owners[dealer] = (link.index, identity)
        self.players.socket_opened(identity, peer, user, time.monotonic())
        return dealer

    def _drop_dealer(self, link: ActorLink, identity: bytes) -> None:
        dealer = link.dealers.pop(identity)
        self.owners.pop(dealer, None)
        dealer.close(linger=0)
        link.opening.pop(identity, None)
        self.players.socket_closed(identity)

    def _free_if_idle(self, link: ActorLink, identity: bytes) -> None:
        """Close the client's DEALER to this actor once nothing of it is left there."""
        if identity in link.dealers and not link.opening.get(identity) and not self._holds(identity, link.index):
            self._drop_dealer(link, identity)

    def _reap(self, now: float) -> None:
        """Forget clients silent for idle_s: their actors have expired their sessions by then."""
        if now < self._next_reap:
            return
        self._next_reap = now + REAP_EVERY_S
        silent = self.players.silent(now)
        for identity in silent:
            for sid in [sid for sid, (_, owner) in self.sessions.items() if owner == identity]:
                index, _ = self.sessions.pop(sid)
                self.actors[index].sessions.discard(sid)
            for link in self.actors.values():
                if identity in link.dealers:
                    self._drop_dealer(link, identity)
        if silent:
            self.reaped += len(silent)
            log.info("%d clients silent for over %.0f s: closed their sockets to the actors", len(silent),
                     self.config.idle_s)  # fmt: skip

    # ------------------------------------------------------------------ client -> actor

    def _from_client(self, identity: bytes, frames: list[bytes], user: str | None, peer: str) -> None:
        try:
            request = wire.decode_request(frames)
        except P.ProtocolError as exc:
            self._send(identity, wire.error_for(exc))
            return
        self.players.heard(identity, time.monotonic())
        if isinstance(request, P.Open):
            self._open(identity, request, frames, user, peer)
        elif isinstance(request, P.Ping):
            self._ping(identity, request, frames)
        elif isinstance(request, P.Status) and request.session is None:
            self._send(identity, P.StatusReply(worker=self.status(), ref=request.ref))
        else:
            self._to_session(identity, request, frames)

    def _open(self, identity: bytes, request: P.Open, frames: list[bytes], user: str | None, peer: str) -> None:
        if not self.actors:
            self._send(identity, P.Error(code=P.BUSY, message="no world worker is up yet; retry", ref=request.ref,
                                         request="open"))  # fmt: skip
            return
        try:
            self.players.admit(self._held(), identity, user)
        except P.ProtocolError as exc:
            exc.ref, exc.extra["request"] = request.ref, request.TYPE
            self._send(identity, wire.error_for(exc))
            return
        link = min(self.actors.values(), key=lambda a: (a.load, a.index))
        if self._dealer(link, identity, request, user, peer) is None:
            return
        link.opening[identity] = link.opening.get(identity, 0) + 1
        self._forward(link, identity, frames)

    def _held(self) -> list[bytes]:
        """The owner of every session and every open in flight, over all actors."""
        held = [owner for _, owner in self.sessions.values()]
        return held + [owner for link in self.actors.values() for owner, n in link.opening.items() for _ in range(n)]

    def _ping(self, identity: bytes, request: P.Ping, frames: list[bytes]) -> None:
        holders = {index for index, owner in self.sessions.values() if owner == identity}
        if not holders:
            self._send(identity, P.Pong(worker=self.instance, ref=request.ref))
        for index in holders:  # the worker answers, and its sessions of this client stay alive
            self._forward(self.actors[index], identity, frames)

    def _to_session(self, identity: bytes, request: P.Message, frames: list[bytes]) -> None:
        sid = getattr(request, "session", None)
        placed = self.sessions.get(sid)
        if placed is None or placed[1] != identity:
            error = P.Error(code=P.UNKNOWN_SESSION, message=f"no open session {sid!r} for this client",
                            ref=request.ref, session=sid, request=request.TYPE)  # fmt: skip
            self._send(identity, error)
            return
        self._forward(self.actors[placed[0]], identity, frames)

    def _forward(self, link: ActorLink, identity: bytes, frames: list[bytes]) -> None:
        """To the actor on the client's DEALER there (made by its open; held while it holds anything there)."""
        try:
            link.dealers[identity].send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self._send(identity, P.Error(code=P.BUSY, message="the worker is not keeping up; retry"))

    # ------------------------------------------------------------------ actor -> client

    def _from_actor(self, dealer: zmq.Socket, frames: list[bytes]) -> None:
        index, identity = self.owners[dealer]
        link = self.actors[index]
        try:
            header = wire.parse_header(frames[0])
        except P.ProtocolError:
            log.warning("actor %d sent an unreadable reply; dropped", index)
            return
        kind, sid = header.get("type"), header.get("session")
        open_answered = kind == "opened" or (kind == "error" and header.get("request") == "open")
        if open_answered:
            link.opening[identity] = max(0, link.opening.get(identity, 0) - 1)
        if kind == "opened" and isinstance(sid, str):
            self.sessions[sid] = (index, identity)
            link.sessions.add(sid)
            frames = [self._as_front_door(header), *frames[1:]]
        elif kind == "closed" and isinstance(sid, str):
            self.sessions.pop(sid, None)
            link.sessions.discard(sid)
        self._send_frames(identity, frames)
        if open_answered or kind == "closed":
            self._free_if_idle(link, identity)

    def _as_front_door(self, opened: dict) -> bytes:
        """An actor's `opened` header saying what is true of the player's link: the one to this front door."""
        opened = {k: v for k, v in opened.items() if k != "notice"}
        opened["security"] = self.config.security
        if self.config.notice is not None:
            opened["notice"] = self.config.notice
        return json.dumps(opened, separators=(",", ":"), allow_nan=False).encode()

    def _holds(self, identity: bytes, index: int) -> bool:
        return any(placed == (index, identity) for placed in self.sessions.values())

    def _send(self, identity: bytes, message: P.Message) -> None:
        self._send_frames(identity, wire.encode(message))

    def _send_frames(self, identity: bytes, frames: list[bytes]) -> None:
        try:
            self.router.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client is gone or not reading: as the worker does, drop rather than block

    def status(self) -> dict:
        actors = [{"index": a.index, "endpoint": a.endpoint, "pid": a.pid, "host": a.host,
                   "sessions": len(a.sessions), "opening": sum(a.opening.values())}
                  for a in sorted(self.actors.values(), key=lambda a: a.index)]  # fmt: skip
        return {"version": P.PROTOCOL_VERSION, "instance": self.instance, "cluster": True,
                "sessions": len(self.sessions), "actors": actors, "actors_lost": self.lost,
                "security": self.config.security, "per_client": self.config.per_client,
                "per_peer": self.config.per_peer, "upstream_sockets": len(self.owners),
                "opens_refused": self.players.refused, "clients_reaped": self.reaped}  # fmt: skip


def peer_address(frame: zmq.Frame) -> str:
    """The address a client's message came from (libzmq's Peer-Address; "local" for ipc/inproc)."""
    try:
        return frame.get("Peer-Address") or "local"
    except zmq.ZMQError:
        return "local"


def open_front_router(context: zmq.Context, bind: str, keys: ServerKeys | None = None) -> tuple[zmq.Socket, str]:
    """The players' socket; with `keys` a CURVE server (world/server/auth.py): set before bind, as libzmq wants."""
    router = context.socket(zmq.ROUTER)
    if keys is not None:
        secure_server(router, keys)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.MAXMSGSIZE, P.MAX_TRANSPORT_FRAME_BYTES)
    router.bind(bind)
    return router, router.getsockopt(zmq.LAST_ENDPOINT).decode()


def serve_front(bind: str, events: queue.Queue, stop: threading.Event,
                on_ready: Callable[[str], None] | None = None, config: FrontConfig | None = None) -> None:  # fmt: skip
    """Run a front door on `bind` until `stop` is set; with `config.keys` players authenticate (CURVE)."""
    config = config or FrontConfig()
    context = zmq.Context()
    authenticator = start_authenticator(context, config.keys) if config.keys is not None else None
    router, endpoint = open_front_router(context, bind, config.keys)
    door = FrontDoor(context, router, events, config)
    if on_ready is not None:
        on_ready(endpoint)
    try:
        door.run(stop)
    finally:
        router.close(linger=0)
        if authenticator is not None:
            authenticator.stop()
        context.term()
