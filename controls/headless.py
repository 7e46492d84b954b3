"""The play client without a window, plus the pieces the window shares with it (the recorder
both use is world/data/recorder.py).

`run_headless` drives a session with exact per-frame actions (from a script file or the scripted
player), consumes the frames as fast as the worker delivers them (or at the world's fps with
`realtime`), optionally records them, and returns the summary that `play` prints as one JSON line.

Actions are queued just in time, one chunk at a time: the actions for chunk c + lookahead are queued
(then chunk c is acked) when chunk c arrives, so the worker's queue never runs dry and a frame's
action is sent about `lookahead` chunks before the frame comes back. The latency reported is that
*action-to-frame* time: from queueing a chunk's actions to receiving its frames (with realtime:
to showing its first frame).

A world whose first chunk after a reset is its reset view (the generated world, docs/protocol.md)
shows that chunk before any action: the run releases it without actions, it counts towards the
frames (and is recorded, so a recording still starts at the reset), and the actions start with
chunk 1. The run learns this from the first chunk after the session opened (`_prime`).

A worker that goes away (killed, restarted, shut down) is handled like the window does: the run
reconnects to the address (`play --connect`) and the world goes on after the newest chunk it
consumed (`WorldClient.reconnect(keep_delivered=True)`), in the same episode of a recording; the
actions of chunks the lost worker never sent are queued again. The resumed worker makes its next
chunks at once, so the first of them may come before those actions arrive and then follow the
idle action (their records say so). A local worker that died (`revive`) is restarted instead and
the world starts again from its first frame: an exact script is then replayed as written.

This module never imports pygame, so it runs on machines without a display or SDL.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from controls.pacing import FramePacer, percentiles_ms
from world.actions import IDLE, Action, ActionError
from world.data.recorder import Recorder
from world.procedural.scripted_player import ScriptedPlayer
from world.server.client import ChunkEvent, ErrorEvent, WorldClient, WorldConnectionError, WorldRequestError

DEFAULT_RECORD_DIR = Path("recordings")
RECONNECT_RETRY_S = 1.0  # between attempts to reopen the world on a worker that went away


class HeadlessError(RuntimeError):
    """The run cannot go on (worker silent, session closed, bad script)."""


def summary(*, frames: int, seconds: float, latency_ms: list[float], errors: int, backend: str, prompt: str,
            record: Path | None, gen_ms: list[float], latency_kind: str, start: str | None = None,
            start_notice: str | None = None) -> dict:  # fmt: skip
    """The one-line JSON summary printed by `play --headless` (and `play --json`). `start`: what
    the (last) world started from, None when the backend does not say (the engine); `start_notice`:
    why it is not the start that was asked for."""
    return {
        "frames": frames,
        "fps": round(frames / seconds, 2) if seconds > 0 else 0.0,
        "latency_ms": percentiles_ms(latency_ms),
        "latency_kind": latency_kind,
        "errors": errors,
        "backend": backend,
        "prompt": prompt,
        "record": str(record) if record else None,
        "gen_ms_p50": round(float(np.median(gen_ms)), 3) if gen_ms else None,
        "start": start,
        "start_notice": start_notice,
    }


# ---- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScriptStep:
    action: Action
    prompt: str | None = None  # switch to this prompt from the chunk holding this frame on


def load_script(path: str | Path) -> list[ScriptStep]:
    """A JSON list with one entry per frame: {"keys": [...], "mouse": [dx, dy]}, optionally with
    "prompt": "..." to switch prompts at that frame. Errors name the entry."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeadlessError(f"{path}: cannot read the action script: {exc}") from exc
    if not isinstance(data, list) or not data:
        raise HeadlessError(f"{path}: the action script must be a non-empty JSON list of per-frame actions")
    steps = []
    for k, entry in enumerate(data):
        entry = dict(entry) if isinstance(entry, dict) else entry
        prompt = entry.pop("prompt", None) if isinstance(entry, dict) else None
        try:
            if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
                raise ActionError("prompt must be a non-empty string")
            steps.append(ScriptStep(Action.from_json(entry), prompt))
        except ActionError as exc:
            raise HeadlessError(f"{path}: entry {k}: {exc}") from None
    return steps


def action_steps(script: list[ScriptStep] | None, seed: int, fps: float) -> Iterator[ScriptStep]:
    """The script's steps then idle frames, or the scripted player's endless random walk."""
    if script is not None:
        yield from script
        while True:
            yield ScriptStep(IDLE)
    player = ScriptedPlayer(seed, switch_every_s=None, fps=fps)
    while True:
        yield ScriptStep(player.next_action())


# ---- the run -----------------------------------------------------------------------------------


@dataclass
class HeadlessConfig:
    frames: int | None  # frames to consume, reset view included; None: the whole script plus the reset view
    seed: int = 0
    prompt: str = ""
    script: list[ScriptStep] | None = None
    realtime: bool = False
    record_dir: Path | None = None
    options: dict = field(default_factory=dict)
    # No chunk for this long gives up. A dead worker is caught sooner by the heartbeat (`connected`);
    # this only bounds a live worker that stopped producing, and a teacher chunk can take seconds.
    stall_s: float = 120.0
    max_restarts: int = 3  # local worker restarts (with a `revive`) before the run gives up
    reconnect_s: float = 120.0  # a worker elsewhere (no `revive`): how long to wait for it to come back


class HeadlessRun:
    """Drives one session chunk by chunk with exact actions.

    Flow control is explicit: the worker generates chunk j once it holds j + 1 acks counted from
    the reset (the first `window` of them are the acks of the warm-up chunks, see `_prime`). So
    "releasing" chunk j means: queue its actions, switch the prompt if it asks to, then send that
    one ack. A prompt switch must not reach chunk j - 1, so a chunk that switches is released only
    once chunk j - 1 has arrived; everything else is released as soon as an ack is available.
    """

    def __init__(self, client: WorldClient, info: dict, config: HeadlessConfig,
                 revive: Callable[[], None] | None = None) -> None:  # fmt: skip
        """`revive`: restarts the local worker this run owns when it died (controls/play.py's
        LocalWorker.revive); the run then reopens the world and goes on. None: a lost worker ends it."""
        self.client = client
        self.revive = revive
        self.restarts = 0
        self.world = 0  # bumped when the world is reopened on a restarted worker: a new episode
        self.info = info
        self.config = config
        self.F = info["chunk_frames"]
        self.lookahead = max(1, int(info.get("window") or 2))  # the session's effective lookahead
        self.n_chunks = 0 if config.frames is None else -(-config.frames // self.F)
        self.reset_view = False  # the world's chunk 0 after a reset is its reset view (no actions); see _prime
        self.steps = action_steps(config.script, config.seed, info["fps"])
        self.acks: deque[int] = deque()  # seqs whose ack releases the next chunk
        self.fresh_seq = 0  # chunks before this seq were counted as acknowledged by a resumed world
        self.next_chunk = 0  # the next chunk (index since the reset) to release
        self.received = -1  # highest chunk index received
        self.planned: list[ScriptStep] | None = None  # steps of next_chunk, drawn but not yet sent
        self.released: dict[int, list[ScriptStep]] = {}  # chunks released, not yet received: their steps
        self.replan: deque[list[ScriptStep]] = deque()  # steps to release again after a resume, in order
        self.sent_at: dict[int, float] = {}  # chunk index -> when its actions were queued
        self.latency_ms: list[float] = []
        self.gen_ms: list[float] = []
        self.errors = 0
        self.done = 0  # frames consumed
        self.last_chunk_at = time.perf_counter()
        self.recorder = Recorder(config.record_dir, info, config.options) if config.record_dir else None
        self.start: str | None = info.get("start")  # what the world starts from (generated), from open
        self.start_notice: str | None = info.get("start_notice")
        self.finished = False  # finish_now() was called: chunks still in flight are ignored
        self.pacer: FramePacer | None = None  # with realtime: frames waiting to be shown
        self.paced: dict[int, ChunkEvent] = {}  # their chunks, by seq

    # -- hooks for runs that watch the stream (controls/harness/worker_memory.py) ----------------

    def on_poll(self, chunks: list[ChunkEvent]) -> None:
        """Called after every poll with the chunks it brought (possibly none)."""

    def on_chunk(self, chunk: ChunkEvent) -> None:
        """Called after a chunk was consumed (measured, recorded, its ack freed)."""

    def finish_now(self) -> None:
        """End the run with the frames consumed so far; chunks in flight are neither counted nor acked."""
        self.finished = True
        self.config.frames = self.done

    def run(self) -> dict:
        if self.start_notice:  # e.g. "start: text (the engine does not know ...)": a fallback worth knowing
            print(f"play: {self.start_notice}", file=sys.stderr)
        self.acks.extend(self._prime())
        if self.config.frames is None:
            if self.config.script is None:
                raise HeadlessError("frames=None needs a script (it means: the whole script)")
            self.config.frames = len(self.config.script) + (self.F if self.reset_view else 0)
        self.n_chunks = -(-self.config.frames // self.F)
        if self.recorder:
            self.recorder.start(self.config.seed, self.config.prompt, self.world)
        start = time.perf_counter()
        try:
            self._release()
            self._loop()
        finally:
            if self.recorder:
                self.recorder.stop()
        return summary(
            frames=self.done, seconds=time.perf_counter() - start, latency_ms=self.latency_ms, errors=self.errors,
            backend=self.info["backend"], prompt=self.config.prompt,
            record=self.recorder.path if self.recorder else None, gen_ms=self.gen_ms,
            latency_kind="action-to-frame (shown)" if self.config.realtime else "action-to-frame (received)",
            start=self.start, start_notice=self.start_notice,
        )  # fmt: skip

    def _prime(self) -> list[int]:
        """Start the world exactly at the first scripted action; returns the warm-up chunks' seqs.

        The worker starts generating the moment the session opens, with the idle held action, and
        stops `window` chunks ahead of our (absent) acks. Once those warm-up chunks are in, a reset
        to the same seed restarts the world while the worker still waits for acks, so nothing of
        the new world is generated before its actions are queued. The first of them tells whether
        this world starts with a reset view (every reset of it then does).
        """
        seqs: list[int] = []
        while len(seqs) < self.lookahead:
            for event in self._poll(100):
                seqs.append(event.seq)
                if event.chunk == 0 and event.extra.get("reset_view"):
                    self.reset_view = True
        self.client.reset(self.config.seed)
        return sorted(seqs)

    def _release(self) -> None:
        while self.next_chunk < self.n_chunks and self.acks:
            j = self.next_chunk
            if j == 0 and self.reset_view:  # made by the reset: no actions, no prompt, no latency sample
                self.client.ack(self.acks.popleft())
                self.next_chunk = 1
                continue
            if self.planned is None:
                self.planned = self.replan.popleft() if self.replan else [next(self.steps) for _ in range(self.F)]
            prompts = [step.prompt for step in self.planned if step.prompt is not None]
            if prompts and self.received < j - 1:
                return  # wait for chunk j - 1, or the new prompt would reach it too
            if prompts:
                self.client.set_prompt(prompts[-1])
            self.client.queue_actions([step.action for step in self.planned])
            self.sent_at[j] = time.perf_counter()
            self.client.ack(self.acks.popleft())
            self.released[j] = self.planned
            self.planned, self.next_chunk = None, j + 1

    def _loop(self) -> None:
        pacer = self.pacer = FramePacer(self.info["fps"]) if self.config.realtime else None
        chunks = self.paced
        while self.done < self.config.frames:
            wait_ms = 50 if pacer is None else max(1, int(pacer.seconds_until_due(time.perf_counter()) * 1000))
            for chunk in self._poll(wait_ms):
                self.received = max(self.received, chunk.chunk)
                self.released.pop(chunk.chunk, None)
                if pacer is None:
                    self._consume(chunk)
                else:
                    chunks[chunk.seq] = chunk
                    pacer.push(chunk.seq, chunk.frames, chunk.records)
                self._release()
            while pacer is not None and self.done < self.config.frames:
                shown = pacer.next_frame(time.perf_counter())
                if shown is None:
                    break
                if shown.chunk_index == 0:
                    self._consume(chunks.pop(shown.chunk_seq), count=False)
                self.done += 1

    def _poll(self, timeout_ms: int) -> list[ChunkEvent]:
        """Chunks that arrived; errors are counted and reported on stderr; a silent worker ends
        the run instead of hanging it."""
        chunks = []
        for event in self.client.poll(timeout_ms):
            if isinstance(event, ChunkEvent):
                chunks.append(event)
                self.last_chunk_at = time.perf_counter()
            elif isinstance(event, ErrorEvent):
                self.errors += 1
                print(f"play: worker error {event.code}: {event.message}", file=sys.stderr)
                if event.code == "session_closed" and not self._worker_went_away():
                    raise HeadlessError(f"the worker closed the session: {event.message}")
        if not self.client.connected:
            self._recover()
            return []
        if time.perf_counter() - self.last_chunk_at > self.config.stall_s:
            raise HeadlessError(f"no frames from the worker at {self.client.address} for {self.config.stall_s:g} s")
        self.on_poll(chunks)
        return chunks

    def _worker_went_away(self) -> bool:
        """The session closed because its worker shut down, and the world can go on where it comes back."""
        return self.revive is None and self.client.closed_reason == "shutdown"

    def _recover(self) -> None:
        """The worker stopped answering: resume the world where it comes back (a worker elsewhere), or
        restart ours and reopen the world from its first frame, or give up."""
        gone = f"the worker at {self.client.address} stopped answering (no message for {self.client.liveness_s:g} s)"
        if self.client.closed_reason == "shutdown":
            gone = f"the worker at {self.client.address} shut down"
        if self.revive is None:
            self._resume(gone)
            return
        if self.restarts >= self.config.max_restarts:
            raise HeadlessError(gone)
        print(f"play: {gone}; restarting the local worker and reopening the world from its first frame "
              f"({self.done} frames done)", file=sys.stderr)  # fmt: skip
        self.restarts += 1
        try:
            self.revive()
            # A scripted run replays exact actions from a world's first frame: a new episode, not a resume.
            self.info = self.client.reconnect(resume=False)
        except Exception as exc:  # any failure to come back ends the run with its reason
            raise HeadlessError(f"{gone}; restarting it failed: {exc}") from None
        self._start_again()

    def _resume(self, gone: str) -> None:
        """Reopen the world at the same address until a worker takes it (at most `reconnect_s`); it goes
        on after the newest chunk consumed, or starts again when none was."""
        print(f"play: {gone}; reconnecting to go on after frame {self.done}", file=sys.stderr)
        deadline = time.monotonic() + self.config.reconnect_s
        while True:
            try:
                self.info = self.client.reconnect(keep_delivered=True)
                break
            except (WorldConnectionError, WorldRequestError, zmq.ZMQError) as exc:
                if time.monotonic() >= deadline:
                    raise HeadlessError(f"{gone}; no worker took the world back within "
                                        f"{self.config.reconnect_s:g} s ({exc})") from None  # fmt: skip
                time.sleep(RECONNECT_RETRY_S)
        resumed = self.info.get("resumed")
        if resumed is None:  # nothing of this world was consumed yet: it starts again
            print("play: reconnected: the world starts again", file=sys.stderr)
            self._start_again()
            return
        print(f"play: reconnected: the world goes on from frame {resumed['frame']}", file=sys.stderr)
        self._go_on_after(resumed)

    def _start_again(self) -> None:
        """A new world on the new session: a new episode, released from its first chunk."""
        self.world += 1
        if self.pacer is not None:  # frames of the lost session are never shown (seqs restart)
            self.pacer.clear()
        self.paced.clear()
        self.acks.clear()
        self.sent_at.clear()
        self.released.clear()
        self.replan.clear()
        self.next_chunk, self.received, self.planned, self.fresh_seq = 0, -1, None, 0
        self.last_chunk_at = time.perf_counter()
        self.acks.extend(self._prime())
        self._release()

    def _go_on_after(self, resumed: dict) -> None:
        """The resumed session counts every chunk before `resumed["seq"]` as acknowledged and makes
        the next `window` at once: release them without acks (acking an old seq changes nothing), with
        the steps of the chunks the lost worker never sent first; chunks received before the loss and
        still waiting in the pacer free no ack when shown."""
        last = resumed["chunk"] - 1  # the newest chunk consumed (or waiting in the pacer)
        again = [self.released[j] for j in sorted(self.released) if j > last]
        self.replan = deque(again + ([self.planned] if self.planned is not None else []))
        self.released.clear()
        self.sent_at.clear()
        self.planned, self.next_chunk, self.received = None, last + 1, last
        self.lookahead = max(1, int(self.info.get("window") or 2))
        self.fresh_seq = resumed["seq"]
        self.acks = deque([resumed["seq"] - 1] * self.lookahead)
        self.last_chunk_at = time.perf_counter()
        self._release()

    def _consume(self, chunk: ChunkEvent, count: bool = True) -> None:
        """A chunk received (or, with realtime, starting to show): measure, record, free its ack."""
        if self.finished:
            return
        now = time.perf_counter()
        if chunk.chunk == 0 and isinstance(chunk.extra.get("start"), str):  # a world's reset view says how it began
            self.start, self.start_notice = chunk.extra["start"], chunk.extra.get("start_notice")
        if chunk.chunk in self.sent_at:
            self.latency_ms.append((now - self.sent_at.pop(chunk.chunk)) * 1000.0)
        self.gen_ms.append(chunk.gen_ms)
        left = self.config.frames - self.done  # the last chunk may hold more frames than needed
        if self.recorder:
            self.recorder.append(chunk, self.config.seed, world=self.world, limit=min(left, len(chunk.frames)))
            failure = self.recorder.take_failure()
            if failure:  # e.g. the disk is full: the run goes on without recording
                print(f"play: {failure}", file=sys.stderr)
        if count:  # with realtime the loop counts frames as they are shown
            self.done += min(left, len(chunk.frames))
        if chunk.seq >= self.fresh_seq:
            self.acks.append(chunk.seq)
        self._release()
        self.on_chunk(chunk)


def run_headless(client: WorldClient, info: dict, config: HeadlessConfig,
                 revive: Callable[[], None] | None = None) -> dict:  # fmt: skip
    return HeadlessRun(client, info, config, revive).run()
