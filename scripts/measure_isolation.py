"""Measure what issue 13 reproduced, against a real worker on loopback (docs/reliability.md).

    python scripts/measure_isolation.py [--seconds 40]

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
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from world import protocol as P  # noqa: E402
from world.client import ChunkEvent, ErrorEvent, WorldClient, WorldRequestError  # noqa: E402
from world.worker import start_worker_process, stop_worker_process  # noqa: E402

BIG = {"height": 1024, "width": 1024, "chunk_frames": 16}


def play(client: WorldClient, seconds: float, others: list[WorldClient]) -> tuple[dict, list]:
    """Consume the normal session for `seconds`; gather the other clients' events."""
    frames, gaps, events, last = 0, [], [], time.monotonic()
    start = last
    while (now := time.monotonic()) - start < seconds:
        for event in client.poll(20):
            if isinstance(event, ChunkEvent):
                now = time.monotonic()
                gaps.append(now - last)
                last = now
                frames += len(event.frames)
                client.ack(event.seq)
            elif isinstance(event, ErrorEvent):
                events.append(("normal", event.code))
        for other in others:
            events += [(other.session, e.code) for e in other.poll(0) if isinstance(e, ErrorEvent)]
    return {"fps": round(frames / seconds, 1), "longest_gap_s": round(max(gaps, default=0.0), 3),
            "gaps_over_1s": sum(g > 1.0 for g in gaps)}, events  # fmt: skip


def open_async(endpoint: str, ref: int) -> WorldClient:
    client = WorldClient(endpoint, timeout_s=120)
    client._send(P.Open(backend="engine", prompt="green hills at noon", options=BIG, ref=ref), required=True)
    return client


def big_opens(endpoint: str, count: int, seconds: float) -> dict:
    normal = WorldClient(endpoint, timeout_s=30)
    normal.open("engine", "green hills at noon", seed=1)
    pinger = WorldClient(endpoint, timeout_s=30)
    pinger.open("engine", "green hills at noon", seed=2)
    big = [open_async(endpoint, 100 + k) for k in range(count)]
    stats, events = play(normal, seconds, [pinger, *big])
    pinger.poll(0)
    stats["pinger_connected"] = pinger.connected
    stats["big_sessions"] = [e for e in events if e[0] != pinger.session]
    for client in [normal, pinger, *big]:
        client.close()
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
    sys.exit(main())
