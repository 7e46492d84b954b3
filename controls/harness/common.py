"""What the harnesses share: a raw DEALER socket that speaks the protocol without the client's
checks (to send what a well-behaved client never would), the replies waiting on it, and the
environment of a worker process with a given thread count."""

from __future__ import annotations

import os

import zmq

from world.server import protocol as P
from world.server import wire

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def worker_env(threads: int) -> dict[str, str] | None:
    """A worker's environment: ours plus the BLAS/OpenMP thread variables (read once, when the
    libraries load, so they must be set in the process that starts); None (threads 0) keeps ours."""
    return {**os.environ, **{v: str(threads) for v in THREAD_VARS}} if threads else None


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
