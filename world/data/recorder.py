"""Recording what a client shows: the chunks of a session, exactly as received, as dataset episodes.

Both front ends (the window, controls/window.py, and the headless client, controls/headless.py)
record through one `Recorder`; the episodes are in the one dataset format (world/data/dataset.py,
docs/dataset.md), so a recording is training data and can be replayed (world/data/replay.py).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from world.data.dataset import START_IMAGE_FILE, EpisodeWriter, new_episode_path
from world.server.client import ChunkEvent

# Chunk facts (ChunkResult.extra, sent in every chunk header) that hold for the whole episode and
# belong in meta.json: the engine's version lets replay tell an old engine from a real mismatch.
META_FACTS = ("engine_version", "model")
# What a world started from (the generated world's `start`, world/start.py), from its reset view's
# extra: they go into meta.json of every episode of that world, so a recording says how to make
# its start again (and replay does).
START_FACTS = ("start", "start_source", "start_requested", "start_notice")


# Why a write failed, in the words a player reads ("recording stopped: disk full; ...").
WRITE_FAILURES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit reached",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def write_failure(exc: OSError) -> str:
    return WRITE_FAILURES.get(exc.errno, exc.strerror or type(exc).__name__)


@dataclass(frozen=True)
class _Planned:
    """An episode started but not yet written: its meta needs facts from the first chunk."""

    path: Path
    seed: int
    prompt: str


class Recorder:
    """Writes the chunks shown (or consumed) into episodes under `root`, exactly as received.

    One episode per world: `append` starts a new episode when the world changes (reset or
    reconnect), because an episode has one seed and its frame indices restart with the world.
    `start` only picks the episode's path; the episode is written from its first chunk on, whose
    facts (the worker's engine version) go into meta.json.

    Front ends pass every chunk they show to `append`, recording or not, so the recorder also
    learns how each world started from its reset view (START_FACTS) and puts that in the meta of
    episodes of that world; a world started from a picture also gets the picture as start.png.

    A disk that fills up (or a file-size limit, a read-only or unwritable directory) never ends
    play: the recording stops, everything flushed before the error stays readable (the dataset's
    reader ignores a torn last chunk), and `take_failure()` hands the front end the message to
    show once ("recording stopped: disk full; 252 frames saved to ...").
    """

    def __init__(self, root: str | Path, info: dict, options: dict | None = None, source: str = "play") -> None:
        self.root = Path(root)
        self.info = info
        self.options = dict(options or {})
        self.source = source
        self.writer: EpisodeWriter | None = None
        self.paths: list[Path] = []
        self._planned: _Planned | None = None
        self._world: object = None
        self._start: tuple[object, dict, np.ndarray] | None = None  # (world, START_FACTS, its first frame)
        self._failure: str | None = None  # a write failure not yet shown

    @property
    def recording(self) -> bool:
        return self.writer is not None or self._planned is not None

    @property
    def frames(self) -> int:
        return self.writer.frames_written if self.writer else 0

    @property
    def path(self) -> Path | None:
        return self.paths[-1] if self.paths else None

    def start(self, seed: int, prompt: str, world: object = None) -> Path:
        """Start a new episode (written from the next appended chunk on); returns its path."""
        self.stop()
        path = new_episode_path(self.root, seed)
        self._planned = _Planned(path, seed, prompt)
        self.paths.append(path)
        self._world = world
        return path

    def append(self, chunk: ChunkEvent, seed: int, world: object = None, limit: int | None = None) -> None:
        """Append a chunk (its first `limit` frames if given); `world` identifies the world it
        belongs to, and a new one starts a new episode."""
        if chunk.chunk == 0 and isinstance(chunk.extra.get("start"), str):
            facts = {k: chunk.extra[k] for k in START_FACTS if k in chunk.extra}
            self._start = (world, facts, np.array(chunk.frames[0], copy=True))
        if not self.recording:
            return
        if world != self._world:
            self.start(seed, chunk.records[0]["prompt"], world)
        n = len(chunk.frames) if limit is None else limit
        try:
            if self.writer is None:
                self.writer = self._open(self._planned, chunk)
                self._planned = None
            self.writer.append_chunk(chunk.frames[:n], chunk.records[:n])
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        """Stop recording after a write error, keeping what is on disk; remember the message."""
        frames = self.frames
        path = self.path
        try:
            self.stop()
        except OSError:  # the close's own flush hit the same full disk; the files are closed
            self.writer = None
        if frames == 0 and path is not None and not (path / "meta.json").exists():
            self.paths = [p for p in self.paths if p != path]  # nothing readable was written
            self._failure = f"recording stopped: {write_failure(exc)}; nothing saved ({exc.filename or path})"
        else:
            self._failure = f"recording stopped: {write_failure(exc)}; {frames} frames saved to {path}"

    def take_failure(self) -> str | None:
        """The message of a recording that stopped on a write error, once; else None."""
        failure, self._failure = self._failure, None
        return failure

    def _open(self, planned: _Planned, first: ChunkEvent) -> EpisodeWriter:
        info = self.info
        facts = {k: first.extra[k] for k in META_FACTS if k in first.extra}
        image = None
        if info["backend"] == "generated" and info.get("description"):
            facts["world"] = info["description"]  # which checkpoint and sampler made the frames
        if self._start is not None and self._start[0] == self._world:
            facts.update(self._start[1])
            if facts.get("start") == "image":  # the decoded, resized picture: what every frame grew from
                image, facts["start_image"] = self._start[2], START_IMAGE_FILE
        return EpisodeWriter(
            planned.path, backend=info["backend"], seed=planned.seed, height=info["height"], width=info["width"],
            chunk_frames=info["chunk_frames"], fps=info["fps"], source=self.source, options=self.options,
            extra={"prompt": planned.prompt, **facts}, start_image=image,
        )  # fmt: skip

    def stop(self) -> Path | None:
        """Close the episode; returns its path, or None if nothing was recorded (nothing is left
        on disk then)."""
        if self._planned is not None:  # started, but no chunk came: there is no episode
            self._planned = None
            self.paths.pop()
            return None
        if self.writer is None:
            return None
        self.writer.close()
        self.writer = None
        return self.paths[-1]
