"""A tiny deterministic backend for worker/client tests, registered as "fake" on import.

Each frame encodes what produced it, so a test can check bytes without a renderer:
channel 0 = (seed + frame index) % 256, channel 1 = bitmask of the first 8 held keys,
channel 2 = crc32(prompt) % 256. A worker subprocess loads it with `--backend-module tests.fakes`.
"""

from __future__ import annotations

import errno
import time
import zlib
from collections.abc import Sequence

import numpy as np

from world.actions import KEY_INDEX, Action
from world.backend import Backend, BackendInfo, ChunkResult, PromptError
from world.backends.registry import register_backend


def fake_frame(seed: int, i: int, action: Action, prompt: str, height: int, width: int) -> np.ndarray:
    """[H, W, 3] uint8: the frame FakeBackend renders for frame index i."""
    mask = sum(1 << KEY_INDEX[k] for k in action.keys if KEY_INDEX[k] < 8)
    pixel = [(seed + i) % 256, mask, zlib.crc32(prompt.encode()) % 256]
    return np.broadcast_to(np.array(pixel, dtype=np.uint8), (height, width, 3)).copy()


class FakeBackend(Backend):
    """Prompts containing "unknowable" raise PromptError; `fail_after` chunks makes step_chunk raise."""

    closed = 0  # class-wide count of close() calls, for in-process tests
    built = 0  # class-wide count of backends built

    def __init__(self, height: int = 16, width: int = 16, chunk_frames: int = 3, fail_after: int = -1,
                 delay_s: float = 0.0, reset_delay_s: float = 0.0):
        """`delay_s`: each chunk takes this long; `reset_delay_s`: each reset (slow worlds for the
        isolation tests)."""
        FakeBackend.built += 1
        self.delay_s, self.reset_delay_s = float(delay_s), float(reset_delay_s)
        self._info = BackendInfo("fake", height, width, chunk_frames, fps=30.0, description="test pattern")
        self.fail_after = fail_after
        self.seed, self.prompt, self.i, self.chunks = 0, "", 0, 0

    @property
    def info(self) -> BackendInfo:
        return self._info

    def _check(self, prompt: str) -> None:
        if not prompt.strip() or "unknowable" in prompt:
            raise PromptError(f"the fake world does not know {prompt!r}")

    def reset(self, seed: int, prompt: str) -> np.ndarray:
        self._check(prompt)
        time.sleep(self.reset_delay_s)
        self.seed, self.prompt, self.i, self.chunks = seed, prompt, 0, 0
        return fake_frame(seed, 0, Action(), prompt, self._info.height, self._info.width)

    def set_prompt(self, prompt: str) -> None:
        self._check(prompt)
        self.prompt = prompt

    def step_chunk(self, actions: Sequence[Action]) -> ChunkResult:
        if self.chunks == self.fail_after:
            raise RuntimeError("fake backend failure")
        time.sleep(self.delay_s)
        H, W = self._info.height, self._info.width
        frames = np.stack([fake_frame(self.seed, self.i + k, a, self.prompt, H, W) for k, a in enumerate(actions)])
        self.i += len(actions)
        self.chunks += 1
        return ChunkResult(frames=frames, steps=2, nfe=2, extra={"fake": True})

    def close(self) -> None:
        FakeBackend.closed += 1


register_backend("fake", FakeBackend)


# A disk that fills up (recorder tests).


class FullDisk:
    """A file object whose writes fail like a full disk after `room` bytes."""

    def __init__(self, real, room: int):
        self.real, self.room = real, room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)
