"""Client code the harnesses share: a raw DEALER socket that speaks the protocol without the
client's checks (to send what a well-behaved client never would), and the replies waiting on it."""

from __future__ import annotations

import zmq

from world.server import protocol as P
from world.server import wire


def raw_socket(context: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.connect(endpoint)
    return sock


def replies(sock: zmq.Socket, limit: int = 1000) -> list[P.Message]:
    out = []
    for _ in range(limit):
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            break
        try:
            out.append(wire.decode_reply(frames)[0])
        except P.ProtocolError:
            out.append(P.Error(code="undecodable_reply"))
    return out
