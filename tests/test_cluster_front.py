"""The front door's bookkeeping of what it holds per client (world/server/cluster/relay.py, players.py).

A real front door (`serve_front`, in a thread) on loopback, real clients, and in place of a Ray actor
a ZeroMQ ROUTER this test drives: it answers an open, refuses it, or never answers, which is how a
refused open, a silent client and a full front door are made on purpose. The Ray path itself
(real actors, keys, descriptors under a lowered RLIMIT_NOFILE) is tests/test_cluster.py's and
tests/test_cluster_auth.py's.
"""

from __future__ import annotations

import queue
import threading
import time

import pytest
import zmq

from controls.harness.common import raw_socket
from world.server import protocol as P
from world.server import wire
from world.server.cluster.players import FrontConfig
from world.server.cluster.relay import serve_front


class StandIn:
    """The actor's side of the front door's sockets: receives what is relayed, answers when told."""

    def __init__(self, context: zmq.Context):
        self.router = context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{self.router.bind_to_random_port('tcp://127.0.0.1')}"

    def next_open(self, timeout_s: float = 10.0) -> tuple[bytes, P.Open]:
        """The next open relayed (the front door's pings are skipped)."""
        deadline = time.monotonic() + timeout_s
        while self.router.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
            identity, *frames = self.router.recv_multipart()
            request = wire.decode_request(frames)
            if isinstance(request, P.Open):
                return identity, request
            if isinstance(request, P.Ping):
                self.router.send_multipart([identity, *wire.encode(P.Pong(worker="stand-in"))])
        raise AssertionError("no open relayed to the actor")

    def answer(self, identity: bytes, message: P.Message) -> None:
        self.router.send_multipart([identity, *wire.encode(message)])


@pytest.fixture
def door():
    """(start, context): start(config, actors=1) runs a front door over stand-in actors and returns
    its endpoint and the stand-ins."""
    context = zmq.Context()
    stop = threading.Event()
    started = []

    def start(config: FrontConfig, actors: int = 1) -> tuple[str, list[StandIn]]:
        stand_ins = [StandIn(context) for _ in range(actors)]
        events: queue.Queue = queue.Queue()
        for index, actor in enumerate(stand_ins):
            events.put(("up", index, {"endpoint": actor.endpoint, "pid": index, "host": "stand-in"}))
        ready: queue.Queue = queue.Queue()
        thread = threading.Thread(target=serve_front, args=("tcp://127.0.0.1:0", events, stop, ready.put, config),
                                  daemon=True)  # fmt: skip
        thread.start()
        started.append(thread)
        return ready.get(timeout=30), stand_ins

    yield start, context
    stop.set()
    for thread in started:
        thread.join(timeout=10)
    context.destroy(linger=0)


def ask(context: zmq.Context, endpoint: str, request: P.Message, sock: zmq.Socket | None = None) -> P.Message:
    own = sock is None
    sock = sock or raw_socket(context, endpoint)
    try:
        sock.send_multipart(wire.encode(request))
        assert sock.poll(10_000), f"no answer to {request.TYPE}"
        return wire.decode_reply(sock.recv_multipart())[0]
    finally:
        if own:
            sock.close(linger=0)


def front_status(context: zmq.Context, endpoint: str) -> dict:
    return ask(context, endpoint, P.Status(ref=1)).worker


def send_open(context: zmq.Context, endpoint: str, ref: int = 1) -> zmq.Socket:
    sock = raw_socket(context, endpoint)
    sock.send_multipart(wire.encode(P.Open(backend="engine", prompt="green hills at noon", ref=ref)))
    return sock


def test_a_refused_open_frees_the_clients_socket_to_the_actor(door):
    start, context = door
    endpoint, [actor] = start(FrontConfig())
    client = send_open(context, endpoint)
    identity, request = actor.next_open()
    assert front_status(context, endpoint)["upstream_sockets"] == 1  # held while the open is in flight
    actor.answer(identity, P.Error(code=P.UNKNOWN_BACKEND, message="no", ref=request.ref, request="open"))
    assert client.poll(10_000)
    assert wire.decode_reply(client.recv_multipart())[0].code == P.UNKNOWN_BACKEND
    assert front_status(context, endpoint)["upstream_sockets"] == 0
    client.close(linger=0)


def test_a_silent_client_loses_its_socket_to_the_actor(door):
    start, context = door
    endpoint, [actor] = start(FrontConfig(idle_s=0.5))
    client = send_open(context, endpoint)  # the actor never answers it, and the client says nothing more
    actor.next_open()
    assert front_status(context, endpoint)["upstream_sockets"] == 1
    deadline = time.monotonic() + 60
    while (status := front_status(context, endpoint))["upstream_sockets"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status["upstream_sockets"] == 0 and status["clients_reaped"] == 1
    client.close(linger=0)


def test_past_the_per_peer_limit_an_open_is_answered_busy_naming_it(door):
    start, context = door
    endpoint, [actor] = start(FrontConfig(per_peer=2))
    held = [send_open(context, endpoint, ref) for ref in (1, 2)]  # two players on this address, opens in flight
    for _ in held:
        actor.next_open()
    third = raw_socket(context, endpoint)
    refused = ask(context, endpoint, P.Open(backend="engine", prompt="green hills", ref=3), third)
    assert refused.code == P.BUSY and refused.request == "open" and refused.retry_after_s
    assert "holds 2 upstream sockets, the most one peer may hold" in refused.message
    assert isinstance(ask(context, endpoint, P.Ping(ref=4), third), P.Pong)  # still answered
    status = front_status(context, endpoint)
    assert status["upstream_sockets"] == 2 and status["opens_refused"] == 1
    for sock in [*held, third]:
        sock.close(linger=0)


def test_opened_says_what_the_players_link_to_the_front_door_is(door):
    start, context = door
    endpoint, [actor] = start(FrontConfig(notice="bound beyond loopback without keys"))
    client = send_open(context, endpoint)
    identity, request = actor.next_open()
    actor.answer(identity, P.Opened(session="s1", worker="stand-in", backend="engine", ref=request.ref,
                                    security="curve"))  # fmt: skip  # the actor's own link is keyed
    assert client.poll(10_000)
    opened = wire.decode_reply(client.recv_multipart())[0]
    assert opened.session == "s1" and opened.security == "none"
    assert opened.notice == "bound beyond loopback without keys"
    client.close(linger=0)


def test_one_client_holds_per_client_sessions_over_all_actors(door):
    start, context = door
    endpoint, actors = start(FrontConfig(per_client=2), actors=2)
    client = raw_socket(context, endpoint)
    for ref, actor in zip((1, 2), actors):  # the least loaded actor first: one session on each
        client.send_multipart(wire.encode(P.Open(backend="engine", prompt="green hills", ref=ref)))
        identity, request = actor.next_open()
        actor.answer(identity, P.Opened(session=f"s{ref}", worker="stand-in", backend="engine", ref=request.ref))
        assert client.poll(10_000) and wire.decode_reply(client.recv_multipart())[0].session == f"s{ref}"
    refused = ask(context, endpoint, P.Open(backend="engine", prompt="green hills", ref=3), client)
    assert refused.code == P.TOO_MANY_SESSIONS and refused.ref == 3
    client.close(linger=0)
