"""`python -m controls.harness.soak`: a bounded soak and fault run against a real worker on loopback.

One worker (a subprocess on a free loopback port) serves, for `--seconds`:

- N well-behaved players (engine sessions, acking every chunk, recording what they receive);
- a fuzzer throwing malformed and out-of-range messages of every request type;
- a slow reader that reads (and pings) only every few seconds;
- an oversized-options client opening the largest session the worker allows, again and again;
- a session thief acting on the players' session ids from its own socket;
- a SIGKILL of the worker half way, and a new worker on the same port (players reconnect).

It reports per-player FPS and stalls over 1 s, errors by kind, the worker's RSS over time and the
frames lost in the players' recordings (received but not readable afterwards). Nothing leaves
loopback. docs/reliability.md has the numbers of a 10-minute run; tests/test_soak.py runs a short
one with the fake backend.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import zmq

from controls.harness.common import raw_socket, replies
from controls.harness.memory import rss_bytes_of
from world.actions import KEYS, Action
from world.data.dataset import open_dataset
from world.data.recorder import Recorder
from world.server import protocol as P
from world.server.client import ChunkEvent, ErrorEvent, WorldClient, WorldConnectionError, WorldRequestError
from world.server.process import start_worker_process, stop_worker_process
from world.server.worker_config import rss_bytes

STALL_S = 1.0
WRONG = [None, True, -1, 0, 2**64, 10**400, 1e300, 1.5, "", "x" * 300, [], {}, [1, "a"], {"k": None}]
TEMPLATES = [
    {"type": "open", "backend": "engine", "prompt": "green hills at noon", "seed": 3, "options": {"height": 64}},
    {"type": "input", "session": "S", "action": {"keys": ["forward"], "mouse": [0.1, -0.2]}},
    {"type": "actions", "session": "S", "actions": [{"keys": [], "mouse": [0, 0]}]},
    {"type": "prompt", "session": "S", "prompt": "desert at dusk"},
    {"type": "reset", "session": "S", "seed": 4},
    {"type": "ack", "session": "S", "seq": 0},
    {"type": "close", "session": "S"},
    {"type": "ping"},
    {"type": "status", "session": "S"},
]


@dataclass
class SoakConfig:
    seconds: float = 60.0
    players: int = 3
    backend: str = "engine"
    prompt: str = "green hills at noon"
    # The oversized client's options: the largest session the worker allows by default.
    oversized: dict = field(default_factory=lambda: {"height": 1024, "width": 1024, "chunk_frames": 16})
    fuzz_per_step: int = 20  # malformed messages per harness step (a step is ~10 ms)
    kill_at: float | None = 0.5  # SIGKILL the worker at this fraction of the run; None: never
    worker_args: tuple[str, ...] = ()
    record_dir: str | None = None  # default: a temporary directory


class Player:
    """A well-behaved client: engine session, acks each chunk, records everything it receives."""

    def __init__(self, endpoint: str, config: SoakConfig, index: int, record_dir: Path):
        self.config, self.index = config, index
        self.client = WorldClient(endpoint, timeout_s=60.0)
        self.client.open(config.backend, config.prompt, seed=index)
        self.recorder = Recorder(record_dir / f"player{index}", self.client.info, source="soak")
        self.recorder.start(index, config.prompt, world=0)
        self.world = 0  # bumped on each reconnect: a new world, a new episode
        self.frames = 0
        self.recorded = 0
        self.last_chunk = self.started = time.monotonic()
        self.stalls: list[tuple[float, float]] = []  # (seconds into the run, gap)
        self.reconnects = 0
        self.errors: Counter = Counter()
        self.down_since: float | None = None

    def step(self) -> None:
        if not self.client.connected:
            self._reconnect()
            return
        for event in self.client.poll(0):
            if isinstance(event, ChunkEvent):
                self._chunk(event)
            elif isinstance(event, ErrorEvent):
                self.errors[event.code] += 1

    def _chunk(self, event: ChunkEvent) -> None:
        now = time.monotonic()
        gap = now - self.last_chunk
        if gap > STALL_S and self.down_since is None:
            self.stalls.append((round(now - self.started, 1), round(gap, 3)))
        self.last_chunk = now
        self.frames += len(event.frames)
        self.recorder.append(event, seed=self.index, world=self.world)
        if self.recorder.recording:
            self.recorded += len(event.frames)
        self.client.ack(event.seq)
        if event.chunk % 7 == 0:
            self.client.send_input(Action((random.choice(KEYS),)))

    def _reconnect(self) -> None:
        self.down_since = self.down_since or time.monotonic()
        try:
            info = self.client.reconnect()
        except (WorldConnectionError, WorldRequestError, zmq.ZMQError):
            return
        if not info.get("resumed"):  # a resumed world goes on in the same episode
            self.world += 1
        self.reconnects += 1
        self.last_chunk = time.monotonic()
        self.down_since = None

    def report(self, seconds: float) -> dict:
        self.recorder.stop()
        return {"player": self.index, "fps": round(self.frames / seconds, 2), "frames": self.frames,
                "stalls_over_1s": len(self.stalls), "longest_stall_s": max((g for _, g in self.stalls), default=0.0),
                "stalls_at_s": [t for t, _ in self.stalls][:30],
                "reconnects": self.reconnects, "errors": dict(self.errors)}  # fmt: skip


class Fuzzer:
    """Malformed messages of every request type: bad fields, huge numbers, junk frames."""

    def __init__(self, context: zmq.Context, endpoint: str, config: SoakConfig, seed: int = 0):
        self.sock, self.config, self.rng = raw_socket(context, endpoint), config, random.Random(seed)
        self.sent = 0
        self.codes: Counter = Counter()

    def step(self) -> None:
        for _ in range(self.config.fuzz_per_step):
            try:
                self.sock.send_multipart(self._message(), zmq.NOBLOCK)
                self.sent += 1
            except zmq.Again:
                break
        for reply in replies(self.sock):
            if reply.TYPE == "error":
                self.codes[reply.code] += 1
            elif reply.TYPE == "opened":  # a mutation that is still a valid open: give it back
                self.sock.send(json.dumps({"v": 1, "type": "close", "session": reply.session}).encode())

    def _message(self) -> list[bytes]:
        rng = self.rng
        roll = rng.random()
        if roll < 0.05:
            return [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))]
        if roll < 0.08:
            return [b'{"v":1,"type":"ping"}', b"extra"]
        message = {"v": 1, **json.loads(json.dumps(rng.choice(TEMPLATES)))}
        key = rng.choice(sorted(message))
        target = message
        if isinstance(message.get(key), dict) and message[key] and rng.random() < 0.5:
            target = message[key]
            key = rng.choice(sorted(target))
        target[key] = rng.choice(WRONG)
        try:
            return [json.dumps(message).encode()]
        except (ValueError, OverflowError):
            return [b'{"v":1,"type":"open","backend":"engine","prompt":"x","seed":' + b"9" * 500 + b"}"]


class SlowReader:
    """Opens a session and reads (and acks, and pings) only every `every_s` seconds."""

    def __init__(self, endpoint: str, config: SoakConfig, every_s: float = 5.0):
        self.client = WorldClient(endpoint, timeout_s=60.0)
        self.every_s, self.next = every_s, 0.0
        self.open_error: str | None = None
        try:
            self.client.open(config.backend, config.prompt, seed=99)
        except (WorldRequestError, WorldConnectionError) as exc:
            self.open_error = str(exc)
        self.chunks = 0

    def step(self) -> None:
        now = time.monotonic()
        if now < self.next or self.client.session is None:
            return
        self.next = now + self.every_s
        for event in self.client.poll(0):
            if isinstance(event, ChunkEvent):
                self.chunks += 1
                self.client.ack(event.seq)


class Oversized:
    """Opens the largest allowed session again and again (and closes it when it is admitted)."""

    def __init__(self, context: zmq.Context, endpoint: str, config: SoakConfig, every_s: float = 2.0):
        self.sock, self.config, self.every_s, self.next = raw_socket(context, endpoint), config, every_s, 0.0
        self.outcomes: Counter = Counter()

    def step(self) -> None:
        now = time.monotonic()
        for reply in replies(self.sock):
            self.outcomes[reply.code if reply.TYPE == "error" else reply.TYPE] += 1
            if reply.TYPE == "closed":
                self.outcomes[f"closed:{reply.reason}"] += 1
        if now >= self.next:
            self.next = now + self.every_s
            open_ = {"v": 1, "type": "open", "backend": self.config.backend, "prompt": self.config.prompt,
                     "options": self.config.oversized}  # fmt: skip
            try:
                self.sock.send(json.dumps(open_).encode(), zmq.NOBLOCK)
            except zmq.Again:
                pass


class Thief:
    """Acts on other clients' session ids from its own socket; every attempt must be refused."""

    def __init__(self, context: zmq.Context, endpoint: str, players: list[Player]):
        self.sock, self.players, self.attempts = raw_socket(context, endpoint), players, 0
        self.refused, self.succeeded = 0, 0

    def step(self) -> None:
        sessions = [p.client.session for p in self.players if p.client.session]
        for sid in sessions[:3]:
            for kind in ("input", "ack", "reset", "prompt", "close", "status"):
                body = {"input": {"action": {"keys": ["back"]}}, "ack": {"seq": 0}, "reset": {"seed": 1},
                        "prompt": {"prompt": "desert"}, "close": {}, "status": {}}[kind]  # fmt: skip
                self.sock.send(json.dumps({"v": 1, "type": kind, "session": sid, **body}).encode())
                self.attempts += 1
        for reply in replies(self.sock):
            if reply.TYPE == "error" and reply.code == P.UNKNOWN_SESSION:
                self.refused += 1
            elif reply.TYPE in ("ok", "closed", "status"):
                self.succeeded += 1


def run_soak(config: SoakConfig, log=print) -> dict:
    """Run the soak; returns the report (also what `python -m controls.harness.soak` prints as JSON)."""
    record_dir = Path(config.record_dir or tempfile.mkdtemp(prefix="soak-"))
    proc, endpoint = start_worker_process(extra_args=config.worker_args)
    context = zmq.Context.instance()
    rss: list[tuple[float, int]] = []
    killed = False
    try:
        players = [Player(endpoint, config, k, record_dir) for k in range(config.players)]
        actors = [*players, Fuzzer(context, endpoint, config), SlowReader(endpoint, config),
                  Oversized(context, endpoint, config), Thief(context, endpoint, players)]  # fmt: skip
        start = time.monotonic()
        next_sample = start
        while (now := time.monotonic()) - start < config.seconds:
            for actor in actors:
                actor.step()
            if now >= next_sample:
                next_sample = now + max(1.0, config.seconds / 60)
                rss.append((round(now - start, 1), _rss_of(proc.pid)))
            if config.kill_at is not None and not killed and now - start >= config.kill_at * config.seconds:
                log(f"soak: SIGKILL worker {proc.pid} at {now - start:.1f} s; starting a new one on {endpoint}")
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                proc, _ = start_worker_process(bind=endpoint, extra_args=config.worker_args)
                killed = True
                for player in players:  # the harness itself stood still while the worker restarted
                    player.last_chunk = time.monotonic()
            time.sleep(0.01)
        seconds = time.monotonic() - start
        report = _report(config, actors, players, seconds, rss, record_dir, proc)
    finally:
        stop_worker_process(proc)
    return report


def _rss_of(pid: int) -> int:
    return rss_bytes_of(pid) or rss_bytes() or 0


def _report(config, actors, players, seconds, rss, record_dir, proc) -> dict:
    fuzzer, slow, oversized, thief = actors[len(players):]
    per_player = [p.report(seconds) for p in players]
    recorded = sum(p.recorded for p in players)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        readable = sum(len(e) for p in record_dir.iterdir() for e in open_dataset(p))
    return {
        "seconds": round(seconds, 1),
        "config": {k: v for k, v in asdict(config).items() if k != "record_dir"},
        "players": per_player,
        "fuzz": {"sent": fuzzer.sent, "errors_by_code": dict(fuzzer.codes),
                 "internal": fuzzer.codes.get(P.INTERNAL, 0)},  # fmt: skip
        "slow_reader": {"chunks": slow.chunks, "open_error": slow.open_error},
        "oversized": dict(oversized.outcomes),
        "thief": {"attempts": thief.attempts, "refused": thief.refused, "succeeded": thief.succeeded},
        "worker_alive_at_end": proc.poll() is None,
        "worker_rss_mb": [(t, round(b / 2**20, 1)) for t, b in rss],
        "recordings": {"frames_recorded": recorded, "frames_readable": readable, "frames_lost": recorded - readable,
                       "dir": str(record_dir)},  # fmt: skip
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controls.harness.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--players", type=int, default=3)
    parser.add_argument("--no-kill", action="store_true", help="do not SIGKILL the worker half way")
    parser.add_argument("--record-dir", help="where the players record (default: a temporary directory)")
    parser.add_argument("--json", metavar="FILE", help="also write the report to FILE")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 3600 or not 1 <= args.players <= 6:
        parser.error("--seconds must be in (0, 3600] and --players in [1, 6]")
    config = SoakConfig(seconds=args.seconds, players=args.players, kill_at=None if args.no_kill else 0.5,
                        record_dir=args.record_dir)  # fmt: skip
    report = run_soak(config, log=lambda m: print(m, file=sys.stderr))
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
