"""`play --replay DIR`: a recording played back in the window, and L to take over live from any frame.

Like DIAMOND's dataset-replay env, a recording plugs into the window where the world would:
`RecordingLink` has the `WorldLink` interface (poll, call, info, state, generation), hands out the
episode's chunks as a worker would (at most `window` chunks past the last ack, so the window's
pacer and ack-when-shown rule work unchanged), and `seek(frame)` jumps anywhere. Nothing here
imports torch or talks to a worker.

Taking over (`catch_up`): a live session is opened on the recording's world (backend, seed, start
prompt, session options, start picture) and the recorded actions and prompt switches up to the end
of the chunk on screen are sent as an exact script (`controls.headless.HeadlessRun`), so the
worker regenerates the recording up to there; from the next chunk on, the world follows the
player's keys. On the recorded device and settings the world is then exactly where the recording
was (replay is bit-identical there, world/data/replay.py); elsewhere it is as close as regeneration is.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from controls.headless import HeadlessConfig, HeadlessRun, ScriptStep
from world.actions import Action
from world.data.dataset import START_IMAGE_FILE, EpisodeReader
from world.data.replay import is_reset_view
from world.data.schema import check_recording
from world.server.auth import ClientKeys
from world.server.client import ChunkEvent, WorldClient

SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0)  # [ and ] walk through these


class RecordingLink:
    """An episode as the window's world: chunks from disk, flow-controlled by the window's acks."""

    def __init__(self, reader: EpisodeReader, window: int = 2) -> None:
        """RecordingError (a DatasetError) for a recording no worker could have made (a tampered fps,
        chunk numbers, ...: world/data/schema.py); a torn last chunk plays, as the reader warns."""
        check_recording(reader, allow_tail=True)
        if len(reader) == 0:
            raise ValueError(f"{reader.path}: the episode has no complete frames to play back")
        self.reader, self.window = reader, window
        meta = reader.meta
        self.info = {
            "backend": meta["backend"], "height": meta["height"], "width": meta["width"],
            "chunk_frames": meta["chunk_frames"], "fps": float(meta["fps"]), "seed": meta["seed"],
            "prompt": meta.get("prompt") or reader.records[0].get("prompt", ""), "window": window,
            "description": f"replay of {reader.path.name}", "start": meta.get("start"),
        }  # fmt: skip
        self.state, self.generation, self.last_error = "connected", 0, ""
        self.client = None  # no worker behind a recording
        self._chunk_ids = reader.chunk_ids()
        prompts, n = reader.prompts(), max(len(reader) - 1, 1)
        self.switches = tuple(k / n for k in range(1, len(prompts)) if prompts[k] != prompts[k - 1])  # HUD marks
        self.cursor = 0  # the next frame to hand out
        self.epoch = 0  # bumped on every seek: chunks of the old position are never shown
        self._seq, self._acked = 0, -1

    @property
    def connected(self) -> bool:
        return True

    @property
    def frames(self) -> int:
        return len(self.reader)

    def seek(self, frame: int) -> int:
        """Hand out chunks from `frame` on (clamped to the episode); returns the frame."""
        self.cursor = max(0, min(int(frame), self.frames - 1))
        self.epoch += 1
        self._acked = self._seq - 1  # what was handed out before is dropped by the window
        return self.cursor

    def poll(self, timeout_ms: int) -> list[ChunkEvent]:
        events = []
        while self.cursor < self.frames and self._seq - self._acked <= self.window:
            events.append(self._next_chunk())
        if not events:
            time.sleep(timeout_ms / 1000.0)  # as a socket poll would wait
        return events

    def _next_chunk(self) -> ChunkEvent:
        start = self.cursor
        later = np.flatnonzero(self._chunk_ids[start:] != self._chunk_ids[start])
        end = start + int(later[0]) if len(later) else self.frames
        records = self.reader.records[start:end]
        first = records[0]
        event = ChunkEvent(seq=self._seq, frames=np.array(self.reader.frames[start:end]), records=records,
                           gen_ms=0.0, steps=int(first.get("steps", 0)), nfe=int(first.get("nfe", 0)),
                           epoch=self.epoch, chunk=int(first.get("chunk", 0)),
                           extra={"replay_frame": start})  # fmt: skip
        self._seq, self.cursor = self._seq + 1, end
        return event

    def call(self, method: str, *args: object) -> None:
        """Only acks matter to a recording (flow control); input, prompts and resets are ignored."""
        if method == "ack":
            self._acked = max(self._acked, int(args[0]))

    def close(self) -> None:
        pass


class _CatchUp(HeadlessRun):
    """The exact scripted run, telling `progress(frames done)` after each chunk."""

    progress: Callable[[int], None] | None = None

    def on_chunk(self, chunk: ChunkEvent) -> None:
        if self.progress is not None:
            self.progress(self.done)


def recorded_actions(record: dict) -> str:
    """The HUD's line for a recorded frame's action: held keys and mouse."""
    action = record.get("action") or {}
    keys = " + ".join(action.get("keys") or ()) or "no keys"
    dx, dy = (action.get("mouse") or (0.0, 0.0))[:2]
    return keys if (dx, dy) == (0.0, 0.0) else f"{keys} \u00b7 mouse {dx:+.2f} {dy:+.2f}"


def takeover_frame(reader: EpisodeReader, frame: int) -> int:
    """Frames the live world regenerates before it is the player's: up to the end of `frame`'s chunk
    (a world steps a chunk at a time)."""
    ids = reader.chunk_ids()
    later = np.flatnonzero(ids[frame:] != ids[frame])
    return frame + int(later[0]) if len(later) else len(reader)


def catch_up_script(reader: EpisodeReader, frames: int) -> list[ScriptStep]:
    """The recorded actions of frames [0, frames) after the reset view, a prompt where it changes."""
    records = reader.records[:frames]
    skip = sum(1 for r in records if is_reset_view(r))
    prompt = reader.meta.get("prompt") or records[0].get("prompt")
    steps = []
    for record in records[skip:]:
        switch = record.get("prompt") if record.get("prompt") != prompt else None
        prompt = record.get("prompt", prompt)
        steps.append(ScriptStep(Action.from_json(record["action"]), switch))
    return steps


def open_live(reader: EpisodeReader, endpoint: str, lookahead: int | None, timeout_s: float,
              keys: ClientKeys | None = None) -> tuple[WorldClient, dict]:  # fmt: skip
    """A session on the recording's world: its backend, seed, first prompt, options and start picture.
    `keys`: the CURVE keys for a worker that authenticates (controls/play.py `client_keys`)."""
    meta = reader.meta
    client = WorldClient(endpoint, timeout_s=timeout_s, keys=keys)
    image = reader.path / START_IMAGE_FILE
    extra = {"start_image": image.read_bytes()} if meta.get("start") == "image" and image.is_file() else {}
    options = dict(meta.get("options") or {})
    if meta.get("start") in ("engine", "text", "image"):
        options["start"] = meta["start"]  # what the recorded world actually started from (after a fallback: text)
    prompt = meta.get("prompt") or reader.records[0].get("prompt", "")
    info = client.open(meta["backend"], prompt, meta["seed"], options=options, lookahead=lookahead, **extra)
    return client, info


def catch_up(client: WorldClient, info: dict, reader: EpisodeReader, frames: int,
             progress: Callable[[int], None] | None = None) -> None:
    """Regenerate the recording's first `frames` frames in the live session (exact actions and
    prompts), then release the worker: its next chunk follows the held input."""
    prompt = reader.meta.get("prompt") or reader.records[0].get("prompt", "")
    script = catch_up_script(reader, frames)
    run = _CatchUp(client, info, HeadlessConfig(frames=frames, seed=reader.meta["seed"], prompt=prompt, script=script))
    run.progress = progress
    run.run()
    if run.acks:
        client.ack(max(run.acks))  # the chunks consumed: the worker goes on with the player's input

