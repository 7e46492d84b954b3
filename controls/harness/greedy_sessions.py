"""Greedy sessions beside a normal one, measured against a real worker on loopback (docs/reliability.md).

    python -m controls.harness.greedy_sessions [--greedy 2,4] [--seconds 20] [--options JSON]

A normal engine session (default options: 64x64, 3 frames a chunk, 30 FPS) is played as the window
plays it: a `FramePacer` shows one frame every 1/30 s and each chunk is acknowledged when it starts
being shown, so the worker runs `--lookahead` chunks ahead of the screen. It plays alone first (the
baseline), then beside n greedy clients, each on its own socket, that open `--options` (default the
audit's `{"height": 1024, "width": 1024, "chunk_frames": 16, "fps": 1}`: a low fps used to buy a
16 s chunk budget) and acknowledge every chunk at once. Per row: the normal session's FPS shown, its
longest gap between two chunks and its gaps over 1 s, what each greedy open got, the worker's peak
memory, and whether an open without options (`play --headless --connect`'s) is then admitted.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field

import zmq

from controls.harness.common import raw_socket, replies
from controls.harness.memory import rss_bytes_of
from controls.pacing import FramePacer
from world.server import protocol as P
from world.server import wire
from world.server.client import ChunkEvent, ErrorEvent, WorldClient, WorldRequestError
from world.server.process import start_worker_process, stop_worker_process

AUDIT_GREEDY = {"height": 1024, "width": 1024, "chunk_frames": 16, "fps": 1}
PROMPT = "green hills at noon"


@dataclass
class Greedy:
    """A client on a raw socket that opens one session and acknowledges every chunk at once."""

    sock: zmq.Socket
    sent: float
    outcome: list = field(default_factory=list)  # (seconds after the open, reply type, code or reason)
    session: str | None = None
    chunks: int = 0
    gen_ms: list[float] = field(default_factory=list)  # the worker's time for each of its chunks

    @classmethod
    def open(cls, endpoint: str, options: dict, seed: int) -> Greedy:
        sock = raw_socket(zmq.Context.instance(), endpoint)
        sock.send_multipart(wire.encode(P.Open(backend="engine", prompt=PROMPT, seed=seed, options=options, ref=1)))
        return cls(sock, time.monotonic())

    def pump(self) -> None:
        for reply in replies(self.sock, limit=64):
            if isinstance(reply, P.Chunk):
                self.chunks += 1
                self.gen_ms.append(reply.gen_ms)
                self.sock.send_multipart(wire.encode(P.Ack(session=reply.session, seq=reply.seq)))
                continue
            if isinstance(reply, P.Opened):
                self.session = reply.session
            detail = getattr(reply, "code", None) or getattr(reply, "reason", None)
            self.outcome.append((round(time.monotonic() - self.sent, 1), reply.TYPE, detail))

    @property
    def settled(self) -> bool:
        """Opened (its first chunk came) or refused."""
        return self.chunks > 0 or any(kind in ("error", "closed") for _, kind, _ in self.outcome)

    def close(self) -> None:
        if self.session is not None:
            self.sock.send_multipart(wire.encode(P.Close(session=self.session)))
        self.sock.close(0)


def play_paced(client: WorldClient, seconds: float, greedy: list[Greedy], pid: int | None = None,
               settle_s: float = 300.0) -> dict:  # fmt: skip
    """Show the normal session at its fps for `seconds` after every greedy open settled (at most
    `settle_s` before that), acking each chunk when it starts being shown; greedy clients are pumped
    meanwhile. `fps`: frames shown per second over the whole time (waiting for the greedy opens
    included), what the player saw; `fps_once_settled`: over the `seconds` after they settled.
    `pid`: the worker process, whose memory is sampled."""
    pacer, fps = FramePacer(client.info["fps"]), client.info["fps"]
    start = last = time.monotonic()
    shown, gaps, peak, settled_at, shown_settled = 0, [], 0, None, 0
    while True:
        now = time.monotonic()
        if settled_at is None and (all(g.settled for g in greedy) or now - start > settle_s):
            settled_at, shown_settled = now, shown
        if settled_at is not None and now - settled_at >= seconds:
            break
        for event in client.poll(max(1, int(pacer.seconds_until_due(now) * 1000))):
            assert not isinstance(event, ErrorEvent), event
            if isinstance(event, ChunkEvent):
                arrived = time.monotonic()
                gaps.append((arrived - last, settled_at is not None))
                last = arrived
                pacer.push(event.seq, event.frames, event.records)
        frame = pacer.next_frame(time.monotonic())
        if frame is not None:
            shown += 1
            if frame.chunk_index == 0:
                client.ack(frame.chunk_seq)
        for g in greedy:
            g.pump()
        if pid is not None:
            peak = max(peak, rss_bytes_of(pid) or 0)
    end = time.monotonic()
    elapsed = end - start
    return {"seconds": round(elapsed, 1), "fps": round(shown / elapsed, 2), "world_fps": fps,
            "settled_after_s": round(settled_at - start, 1),
            "fps_once_settled": round((shown - shown_settled) / (end - settled_at), 2),
            "longest_gap_s": round(max((g for g, _ in gaps[1:]), default=0.0), 3),
            "longest_gap_once_settled_s": round(max((g for g, settled in gaps[1:] if settled), default=0.0), 3),
            "gaps_over_1s": sum(g > 1.0 for g, _ in gaps[1:]),
            "underruns": pacer.underruns, "worker_peak_rss_mib": round(peak / 2**20)}  # fmt: skip


def open_default(endpoint: str) -> dict:
    """An open without options, as `play --headless --connect` sends it: what it got."""
    client = WorldClient(endpoint, timeout_s=60)
    try:
        info = client.open("engine", PROMPT, seed=9)
        return {"admitted": True, "size": [info["height"], info["width"], info["chunk_frames"]]}
    except WorldRequestError as exc:
        return {"admitted": False, "code": exc.code, "message": str(exc)}
    finally:
        client.close()


def measure(endpoint: str, greedy_count: int, options: dict, seconds: float, lookahead: int | None = 1,
            pid: int | None = None) -> dict:  # fmt: skip
    """The normal session beside `greedy_count` greedy clients opening `options` (0: alone); `pid`:
    the worker process, for its peak memory."""
    normal = WorldClient(endpoint, timeout_s=60)
    normal.open("engine", PROMPT, seed=1, lookahead=lookahead)
    greedy = [Greedy.open(endpoint, options, seed=10 + k) for k in range(greedy_count)]
    try:
        row = {"greedy": greedy_count, **play_paced(normal, seconds, greedy, pid)}
        row["greedy_outcomes"] = [g.outcome[:3] for g in greedy]
        row["greedy_chunks"] = [g.chunks for g in greedy]
        row["greedy_longest_gen_s"] = round(max((ms for g in greedy for ms in g.gen_ms), default=0.0) / 1000, 3)
        if greedy_count:
            row["open_without_options"] = open_default(endpoint)
    finally:
        normal.close()
        for g in greedy:
            g.close()
    return row


def row(args: argparse.Namespace, count: int) -> dict:
    """One row, on `--connect`'s worker or on a worker of its own (no greedy session left over)."""
    if args.connect:
        return measure(args.connect, count, args.options, args.seconds, args.lookahead)
    proc, endpoint = start_worker_process()
    try:
        return measure(endpoint, count, args.options, args.seconds, args.lookahead, proc.pid)
    finally:
        stop_worker_process(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--greedy", default="2,4", help="greedy client counts, one row each (default 2,4)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds each row plays once the opens settled")
    parser.add_argument("--options", type=json.loads, default=AUDIT_GREEDY, help="the greedy clients' open options")
    parser.add_argument("--lookahead", type=int, default=1, help="the normal session's lookahead (window: 1)")
    parser.add_argument("--connect", help="measure this running worker instead of starting one")
    args = parser.parse_args()
    counts = [int(n) for n in args.greedy.split(",")]
    rows = [row(args, n) for n in [0, *counts]]
    print(json.dumps({"greedy_options": args.options, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
