"""`FrontDoor`: the ZeroMQ ROUTER clients connect to, relaying each session to the actor that runs it.

Clients speak the ordinary protocol (docs/protocol.md) and cannot tell a front door from a worker,
except that a session may end with reason "worker_lost". One thread owns every socket:

- the ROUTER facing clients; requests are validated (`decode_request`) and forwarded unchanged;
- per (client, actor) a DEALER connected to that actor's worker, so the worker sees each client as
  its own peer (session ownership and liveness work as on one machine), and its replies come back on
  that DEALER to be forwarded to the client unchanged;
- per actor a control DEALER that pings the worker every `heartbeat_s`.

Placement: an `open` goes to the live actor with the fewest sessions (opens still in flight count).
Routing: requests naming a session go to the actor that opened it; a ping goes to every actor that
holds one of the client's sessions (keeping them alive there), or is answered here; a status without
a session is answered here with the cluster's state.

An actor is lost when the pool says so (Ray saw its process die: well under a second) or when it
has not answered a ping for `liveness_s` (a node cut off; long enough that a busy CPU does not fake
it): each of its sessions gets an `error` (code backend_error, "worker lost ...") and `closed`
(reason "worker_lost") at once, its opens in flight an error, and the client reconnects to be
placed on another actor. Nothing else waits on it: the other actors' traffic keeps flowing through
the same loop.
"""

from __future__ import annotations

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
from world.server.auth import ServerKeys, secure_server, start_authenticator

log = logging.getLogger("world.cluster")

WORKER_LOST = "worker_lost"  # the reason of the `closed` a client gets when its actor is gone


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
                 heartbeat_s: float = 0.25, liveness_s: float = 5.0):  # fmt: skip
        self.context, self.router, self.events = context, router, events
        self.heartbeat_s, self.liveness_s = heartbeat_s, liveness_s
        self.instance = secrets.token_hex(8)
        self.actors: dict[int, ActorLink] = {}
        self.sessions: dict[str, tuple[int, bytes]] = {}  # session -> (actor index, owner identity)
        self.owners: dict[zmq.Socket, tuple[int, bytes]] = {}  # DEALER -> (actor index, client identity)
        self._next_ping = 0.0
        self.lost = 0  # actors lost so far

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._pool_events()
            self._heartbeat(time.monotonic())
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
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if sock is self.router:
                self._from_client(frames[0], frames[1:])
            elif sock in self.owners:
                self._from_actor(sock, frames)
            else:
                self._pong(sock)

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
        control = self.context.socket(zmq.DEALER)
        control.setsockopt(zmq.LINGER, 0)
        control.connect(info["endpoint"])
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
        for dealer in link.dealers.values():
            self.owners.pop(dealer, None)
            dealer.close(linger=0)
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

    # ------------------------------------------------------------------ client -> actor

    def _from_client(self, identity: bytes, frames: list[bytes]) -> None:
        try:
            request = wire.decode_request(frames)
        except P.ProtocolError as exc:
            self._send(identity, wire.error_for(exc))
            return
        if isinstance(request, P.Open):
            self._open(identity, request, frames)
        elif isinstance(request, P.Ping):
            self._ping(identity, request, frames)
        elif isinstance(request, P.Status) and request.session is None:
            self._send(identity, P.StatusReply(worker=self.status(), ref=request.ref))
        else:
            self._to_session(identity, request, frames)

    def _open(self, identity: bytes, request: P.Open, frames: list[bytes]) -> None:
        if not self.actors:
            self._send(identity, P.Error(code=P.BUSY, message="no world worker is up yet; retry", ref=request.ref,
                                         request="open"))  # fmt: skip
            return
        link = min(self.actors.values(), key=lambda a: (a.load, a.index))
        link.opening[identity] = link.opening.get(identity, 0) + 1
        self._forward(link, identity, frames)

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
        dealer = link.dealers.get(identity)
        if dealer is None:
            dealer = self.context.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.SNDHWM, 1000)
            dealer.connect(link.endpoint)
            link.dealers[identity] = dealer
            self.owners[dealer] = (link.index, identity)
        try:
            dealer.send_multipart(frames, zmq.NOBLOCK)
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
        if kind == "opened" or (kind == "error" and header.get("request") == "open"):
            link.opening[identity] = max(0, link.opening.get(identity, 0) - 1)
        if kind == "opened" and isinstance(sid, str):
            self.sessions[sid] = (index, identity)
            link.sessions.add(sid)
        elif kind == "closed" and isinstance(sid, str):
            self.sessions.pop(sid, None)
            link.sessions.discard(sid)
        self._send_frames(identity, frames)
        if kind == "closed" and not link.opening.get(identity) and not self._holds(identity, index):
            self.owners.pop(dealer)  # nothing of this client left on that actor: free the socket
            link.dealers.pop(identity).close(linger=0)
            link.opening.pop(identity, None)

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
                "sessions": len(self.sessions), "actors": actors, "actors_lost": self.lost}  # fmt: skip


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
                on_ready: Callable[[str], None] | None = None, keys: ServerKeys | None = None) -> None:  # fmt: skip
    """Run a front door on `bind` until `stop` is set; with `keys` players authenticate (CURVE)."""
    context = zmq.Context()
    authenticator = start_authenticator(context, keys) if keys is not None else None
    router, endpoint = open_front_router(context, bind, keys)
    door = FrontDoor(context, router, events)
    if on_ready is not None:
        on_ready(endpoint)
    try:
        door.run(stop)
    finally:
        router.close(linger=0)
        if authenticator is not None:
            authenticator.stop()
        context.term()
