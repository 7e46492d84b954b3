"""Isolation between players, measured against a real worker on loopback (docs/reliability.md):
one big session must not starve a normal one, nor one socket take every session.

    python -m controls.harness.measure_isolation [--seconds 40]

1. A normal engine session (64x64, 3 frames a chunk) plays while another client opens the
   largest allowed engine session (1024x1024, 16 frames a chunk): the normal session's FPS,
   its longest gap between chunks and its gaps over 1 s, and what the big open got.
2. The same with two such big sessions opened at once, plus a third client that only pings:
   is anyone closed with `timeout`?
3. One socket tries to open every free session: how many it gets, and whether others still can.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import zmq

from controls.harness.common import raw_socket
from world.server import protocol as P
from world.server import wire
from world.server.client import ChunkEvent, WorldClient, WorldRequestError
from world.server.process import start_worker_process, stop_worker_process

BIG = {"height": 1024, "width": 1024, "chunk_frames": 16}


def play(client: WorldClient, seconds: float, big: list[zmq.Socket], pinger: WorldClient) -> dict:
    """Consume the normal session for at least `seconds` and until every big open was answered
    and its session closed (at most 300 s); the big clients' replies are gathered meanwhile."""
    frames, gaps, outcomes, last = 0, [], [[] for _ in big], time.monotonic()
    start = last
    while (now := time.monotonic()) - start < seconds or not all(_settled(o) for o in outcomes):
        if now - start > 300:
            break
        for event in client.poll(20):
            if isinstance(event, ChunkEvent):
                now = time.monotonic()
                gaps.append(now - last)
                last = now
                frames += len(event.frames)
                client.ack(event.seq)
        pinger.poll(0)  # pings only: this client never acks
        for k, sock in enumerate(big):
            while sock.poll(0):
                reply = wire.decode_reply(sock.recv_multipart())[0]
                if reply.TYPE != "chunk":
                    outcomes[k].append((round(time.monotonic() - start, 1), reply.TYPE,
                                        getattr(reply, "code", getattr(reply, "reason", None))))
    elapsed = time.monotonic() - start
    return {"seconds": round(elapsed, 1), "fps": round(frames / elapsed, 1),
            "longest_gap_s": round(max(gaps, default=0.0), 3), "gaps_over_1s": sum(g > 1.0 for g in gaps),
            "pinger_connected": pinger.connected, "big_sessions": outcomes}  # fmt: skip


def _settled(outcome: list) -> bool:
    """Refused at open (any error before `opened`), or opened and then closed."""
    kinds = [kind for _, kind, _ in outcome]
    return "closed" in kinds or (bool(kinds) and kinds[0] == "error")


def big_opens(endpoint: str, count: int, seconds: float) -> dict:
    normal = WorldClient(endpoint, timeout_s=30)
    normal.open("engine", "green hills at noon", seed=1)
    pinger = WorldClient(endpoint, timeout_s=30)
    pinger.open("engine", "green hills at noon", seed=2)
    big = []
    for k in range(count):
        sock = raw_socket(zmq.Context.instance(), endpoint)
        sock.send_multipart(wire.encode(P.Open(backend="engine", prompt="green hills at noon", options=BIG, ref=k)))
        big.append(sock)
    stats = play(normal, seconds, big, pinger)
    for client in [normal, pinger]:
        client.close()
    for sock in big:
        sock.close(0)
    return stats


def per_client_cap(endpoint: str) -> dict:
    greedy = WorldClient(endpoint, timeout_s=30)
    got, refused = 0, None
    for ref in range(1, 9):
        greedy._send(P.Open(backend="engine", prompt="green hills at noon", ref=ref), required=True)
        reply = greedy._wait_for(ref, 30)
        if isinstance(reply, P.Opened):
            got += 1
        else:
            refused = reply.code
            break
    other = WorldClient(endpoint, timeout_s=30)
    try:
        other.open("engine", "green hills at noon")
        other_admitted = True
    except WorldRequestError:
        other_admitted = False
    other.close()
    greedy._socket.close(0)
    return {"greedy_got": got, "greedy_then": refused, "another_client_admitted": other_admitted}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args()
    proc, endpoint = start_worker_process()
    try:
        report = {"one_big_open": big_opens(endpoint, 1, args.seconds)}
        report["two_big_opens"] = big_opens(endpoint, 2, args.seconds)
        report["per_client_cap"] = per_client_cap(endpoint)
    finally:
        stop_worker_process(proc)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
