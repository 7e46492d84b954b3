"""`run_world.py replay EPISODE_DIR`: make a recording again (engine or generated) and compare every frame.

The engine is deterministic, so an episode recorded from it (by datagen or by playing through
the worker) must come out byte-identical when its seed, per-frame actions and prompts are fed
back in. Replay mirrors the worker exactly: `reset(seed, prompt)`, then one `step_chunk` per
recorded chunk, with `set_prompt` before a chunk whose prompt differs from the one in force. A
recording whose first chunk is a reset view (records with `"reset_view": true`, docs/dataset.md:
a generated world's chunk 0, made by the reset itself) is compared with the backend's
`take_reset_chunk()` instead of a step; recordings without the flag replay as before.
`frame_mismatches(reader, backend)` runs that comparison with any backend the caller built (the
generated world is deterministic on one device); `replay_episode` rebuilds the engine from meta.
A generated recording says what its world started from (meta `start`, world/start.py: "engine",
"text", "image" with the picture in start.png; recordings made before start modes: "text"); a
backend with `set_start` (the generated one) is set to that start before the reset, so the reset
view comes out as recorded. Engine recordings carry no start and replay exactly as before.

A generated recording's meta `model` (model/runtime/generated_backend.py `regeneration_facts`: checkpoint
path, step and weight hashes, sampler and its options, device, dtype) says how to regenerate it:
the checkpoint is found by its hashes (the recorded path, `--checkpoint DIR`, or a bundled world),
the sampler is rebuilt from the recorded options, and the device is the recorded one unless
`--device` says otherwise. A checkpoint that cannot be found is named in the error (exit 2).

Prints {"frames", "identical", "first_mismatch", "mismatched_frames", "max_abs_error",
"mean_abs_error", "psnr_db", "same_settings", "engine_version_recorded", "engine_version_now",
"message"}. Frames are expected to be bit-identical on the same device and settings
(`same_settings`: device, dtype, sampler, CPU kernel family and torch build; the recorded thread
count is applied before regenerating, so the caller's does not matter), and a difference there exits
1; on another device, dtype, CPU kernel family or torch build the frames are "equivalent within
N/255" (exit 3, EXIT_EQUIVALENT) and the measured difference is the result. The versions tell a
recording made by another engine version (expected to differ: re-record it) from a real
determinism failure. A recording that cannot be
replayed at all (no frames, a seed that is not a seed, a missing checkpoint) exits 2: bad input.

Before anything is built, every field replay reads is checked against what a worker could have
produced (world/data/schema.py `check_recording`: geometry within a worker's limits, options, frame
times, chunk numbers, steps and nfe, versions, record fields, trailing bytes); an engine recording
must carry this engine's version, and a regenerated chunk must take the recorded steps and nfe.
A recording that fails is refused by field (exit 2), never replayed as "identical".
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from world.backend import Backend, BackendError, ChunkResult, PromptError
from world.backends.registry import create_backend, regenerator
from world.data.dataset import RECORDS_FILE, DatasetError, EpisodeReader
from world.data.schema import check_recording
from world.procedural.engine import ENGINE_VERSION

MAX_SEED = 2**63  # world/server/protocol.py's seed range: what a recording's seed can be
EXIT_MISMATCH = 1  # same settings, different frames: a determinism bug or an altered recording
EXIT_BAD_INPUT = 2
EXIT_EQUIVALENT = 3  # other device / kernels / build: frames differ by the measured amount


class ReplayError(RuntimeError):
    """The episode cannot be re-simulated (no frames, bad seed, missing checkpoint, inconsistent records)."""


@dataclass(frozen=True)
class ReplayResult:
    frames: int
    identical: bool
    first_mismatch: int | None  # index of the first frame that differs, None when all match
    mismatched_frames: int
    max_abs_error: int  # over every pixel channel of every frame, in uint8 levels
    mean_abs_error: float
    psnr_db: float | None  # over all frames; None when identical (infinite)
    same_settings: bool  # replayed on the recorded device and dtype: frames must then be bit-identical
    engine_version_recorded: int | None  # meta["engine_version"]; None: recorded before versions were stored
    engine_version_now: int
    message: str | None  # on a mismatch: what it most likely means


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("episode", type=Path, help="a recorded episode directory (from play, datagen or serve)")
    parser.add_argument("--checkpoint", metavar="DIR",
                        help="generated recordings: the world checkpoint to regenerate with (default: the "
                        "recorded one, found by its weight hashes; it must have the same weights)")
    parser.add_argument("--device", help="generated recordings: cpu, cuda, ... (default: the recorded device "
                        "when it exists here, else cpu); another device measures the difference")
    parser.add_argument("--ignore-tail", action="store_true", help="replay the complete frames of a recording "
                        "whose writer was killed mid-chunk (default: a torn tail is refused: replay vouches for every "
                        "byte)")


def run(args: argparse.Namespace) -> int:
    try:
        result = replay_episode(args.episode, checkpoint=args.checkpoint, device=args.device,
                                ignore_tail=args.ignore_tail)  # fmt: skip
    except (DatasetError, ReplayError, BackendError, PromptError) as e:
        print(f"replay: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if result.message:
        print(f"replay: {result.message}", file=sys.stderr)
    print(json.dumps(asdict(result)))
    if result.identical:
        return 0
    return EXIT_MISMATCH if result.same_settings else EXIT_EQUIVALENT


def replay_episode(path: str | Path, checkpoint: str | None = None, device: str | None = None,
                   ignore_tail: bool = False) -> ReplayResult:  # fmt: skip
    reader = EpisodeReader(path)
    check_recording(reader, allow_tail=ignore_tail)
    check_replayable(reader)
    try:
        agreement, same_settings, differences = _agreement(reader, checkpoint, device)
    except MemoryError:  # a size within a worker's limits that this machine cannot hold
        raise ReplayError(f"{reader.path}: not enough memory to make its {reader.meta['height']}x"
                          f"{reader.meta['width']} world again (meta.json height, width)") from None  # fmt: skip
    recorded = reader.meta.get("engine_version")
    first = agreement.first_mismatch
    message = None
    if first is not None:
        message = (mismatch_message(first, recorded) if reader.meta["backend"] == "engine"
                   else generated_mismatch_message(first, same_settings, agreement.max_abs, differences))  # fmt: skip
    return ReplayResult(frames=len(reader), identical=first is None, first_mismatch=first,
                        mismatched_frames=len(agreement.mismatches), max_abs_error=agreement.max_abs,
                        mean_abs_error=agreement.mean_abs, psnr_db=agreement.psnr_db,
                        same_settings=same_settings, engine_version_recorded=recorded,
                        engine_version_now=ENGINE_VERSION, message=message)  # fmt: skip


def _agreement(reader: EpisodeReader, checkpoint: str | None, device: str | None) -> tuple[Agreement, bool, list]:
    """Make the recording again: (frame agreement, same settings, the settings that differ)."""
    threads = _torch_threads()
    backend, same_settings = _backend_for(reader, checkpoint, device)  # may apply the recorded thread count
    agreement = Agreement()
    try:
        for start, result, recorded in _chunks(reader, backend):
            _check_sampler(reader, start, result)
            agreement.add(start, np.asarray(result.frames)[: len(recorded)], recorded)
        return agreement, same_settings, _setting_differences(reader.meta, backend)
    finally:
        backend.close()
        _restore_torch_threads(threads)


def _torch_threads() -> int | None:
    """torch's intra-op thread count when torch is loaded (engine replays never load it)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _restore_torch_threads(threads: int | None) -> None:
    torch = sys.modules.get("torch")
    if torch is not None and threads is not None:
        torch.set_num_threads(threads)


class Agreement:
    """Frame agreement between a replay and its recording: which frames differ, max and mean absolute
    error and PSNR over every pixel channel (uint8 levels)."""

    def __init__(self) -> None:
        self.mismatches: list[int] = []
        self._max, self._abs_sum, self._sq_sum, self._count = 0, 0.0, 0.0, 0

    def add(self, start: int, frames: np.ndarray, recorded: np.ndarray) -> None:
        diff = frames.astype(np.int16) - np.asarray(recorded).astype(np.int16)  # [F, H, W, 3]
        per_frame = np.abs(diff).reshape(len(diff), -1)
        self.mismatches += [start + int(k) for k in np.flatnonzero(per_frame.max(axis=1) > 0)]
        self._max = max(self._max, int(per_frame.max(initial=0)))
        self._abs_sum += float(per_frame.sum())
        self._sq_sum += float(np.square(diff, dtype=np.float64).sum())
        self._count += diff.size

    @property
    def first_mismatch(self) -> int | None:
        return self.mismatches[0] if self.mismatches else None

    @property
    def max_abs(self) -> int:
        return self._max

    @property
    def mean_abs(self) -> float:
        return round(self._abs_sum / max(self._count, 1), 6)

    @property
    def psnr_db(self) -> float | None:
        mse = self._sq_sum / max(self._count, 1)
        return None if mse == 0 else round(10 * math.log10(255.0**2 / mse), 3)


def check_replayable(reader: EpisodeReader) -> None:
    """Bad input, told apart from a determinism failure: an episode without frames has nothing to
    compare, a seed that is no seed (not an integer in [0, 2^63)) was never a world's, and an engine
    recording made by another engine version cannot come out the same."""
    if len(reader) == 0:
        raise ReplayError(f"{reader.path}: the episode has no complete frames; there is nothing to replay")
    seed = reader.meta.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ReplayError(f"{reader.path}: meta.json seed {seed!r:.40} is not a world seed (an integer in "
                          "[0, 2^63)); the recording is damaged or was edited")  # fmt: skip
    version = reader.meta.get("engine_version")
    if reader.meta["backend"] == "engine" and version not in (None, ENGINE_VERSION):
        raise ReplayError(f"{reader.path}: meta.json engine_version {version} is not this engine's "
                          f"({ENGINE_VERSION}): it was recorded with another engine, whose frames are expected to "
                          "differ (re-record it), or the field was edited")  # fmt: skip


def _check_sampler(reader: EpisodeReader, start: int, result) -> None:
    """A chunk made again takes the steps and nfe its records say (the sampler they name)."""
    record = reader.records[start]
    recorded, now = (record.get("steps", 0), record.get("nfe", 0)), (result.steps, result.nfe)
    if recorded != now:
        raise ReplayError(f"{reader.path / RECORDS_FILE}:{start + 1}: steps {recorded[0]} and nfe {recorded[1]} are "
                          f"not the recorded sampler's ({now[0]} and {now[1]} for this chunk): the records were "
                          "edited or come from another sampler")  # fmt: skip


def generated_mismatch_message(first: int, same_settings: bool, max_abs: int = 0,
                               differences: list[str] | None = None) -> str:
    where = f"frame {first} differs from the recording"
    if same_settings:
        return (f"{where} with the same checkpoint, sampler, device, dtype, threads, CPU kernels and torch build: "
                "a real mismatch (a determinism bug or an altered recording)")
    why = "; ".join(differences or []) or "another device or dtype"
    return (f"equivalent within {max_abs}/255 (different CPU kernels or device: {why}); {where}, as expected "
            "where the arithmetic differs: see max_abs_error, mean_abs_error and psnr_db")


def _setting_differences(meta: dict, backend: Backend) -> list[str]:
    """What differs between the recording's compute facts and this replay's, in words."""
    recorded, now = meta.get("model"), getattr(backend, "_facts", None)
    if not isinstance(recorded, dict) or not isinstance(now, dict):
        return []
    return [f"{k}: {recorded.get(k)} -> {now.get(k)}" for k in ("device", "dtype")
            if recorded.get(k) != now.get(k)] + kernel_differences(recorded, now)  # fmt: skip


def kernel_differences(recorded: dict, now: dict) -> list[str]:
    """The compute facts (CPU kernel family, torch build) that differ from the recording's, as
    "name: recorded -> now"; facts a recording predates are not compared."""
    return [f"{k}: {recorded[k]} -> {now.get(k)}" for k in ("cpu_kernels", "torch")
            if recorded.get(k) is not None and recorded[k] != now.get(k)]  # fmt: skip


def mismatch_message(first: int, recorded: object) -> str:
    """Why frames may differ: another engine version is expected to; the same one is not."""
    where = f"frame {first} differs from the recording"
    if recorded is None:
        return (
            f"{where}; the episode does not say which engine version recorded it (it predates "
            f"versioned recordings), so it may simply be older than this engine (version {ENGINE_VERSION})"
        )
    if recorded != ENGINE_VERSION:
        return (
            f"{where}: it was recorded with engine version {recorded} and this is version {ENGINE_VERSION}, "
            "whose frames are expected to differ; re-record it with this engine (not a determinism bug)"
        )
    return (
        f"{where} with the same engine version ({ENGINE_VERSION}): a real mismatch (a determinism bug, "
        "another machine or numpy build, or an altered recording)"
    )


def _backend_for(reader: EpisodeReader, checkpoint: str | None, device: str | None) -> tuple[Backend, bool]:
    """The backend that makes the recording again, and whether it runs with the recorded settings."""
    meta = reader.meta
    regenerate = regenerator(meta["backend"])  # the generated world's, registered by module path
    if regenerate is not None:
        return regenerate(meta, reader.path, checkpoint, device)
    if meta["backend"] != "engine":
        raise ReplayError(f"{reader.path} was recorded from the {meta['backend']!r} backend; only 'engine' and "
                          "'generated' recordings can be made again")  # fmt: skip
    if checkpoint is not None or device is not None:
        raise ReplayError("--checkpoint and --device apply to generated recordings; this one is the engine's")
    options = {"height": meta["height"], "width": meta["width"], "chunk_frames": meta["chunk_frames"],
               **meta["options"]}  # fmt: skip
    try:
        return create_backend("engine", **options), True
    except (TypeError, BackendError) as e:  # an option this engine does not take
        raise ReplayError(f"{reader.path}: cannot rebuild the engine from meta options {options}: {e}") from e


def chunk_spans(chunk_ids: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) frame ranges of consecutive equal chunk ids: one step_chunk call each."""
    if len(chunk_ids) == 0:
        return []
    starts = [0, *(np.flatnonzero(chunk_ids[1:] != chunk_ids[:-1]) + 1).tolist()]
    return list(zip(starts, [*starts[1:], len(chunk_ids)]))


def _check_starts_at_reset(reader: EpisodeReader) -> None:
    """Replay starts from reset(seed); a recording must too, and must not span a reset."""
    index = np.array([rec.get("i", k) for k, rec in enumerate(reader.records)])
    if index[0] != 0:
        raise ReplayError(f"{reader.path}: recording starts at frame {index[0]} of its world, not at the "
                          "reset; only recordings started at a reset can be re-simulated")  # fmt: skip
    jumps = np.flatnonzero(index != np.arange(len(index)))
    if len(jumps):
        raise ReplayError(f"{reader.path}: frame numbering breaks at record {jumps[0]} (the world was "
                          "reset during the recording); replay the part before it only")  # fmt: skip


def frame_mismatches(reader: EpisodeReader, backend: Backend) -> list[int]:
    """Indices of the frames whose bytes, re-simulated on `backend` (which the caller built to
    match the recording, and closes), differ from the recording. A backend with `set_start` is
    first set to the recording's start (`prepare_start`). Raises ReplayError."""
    agreement = Agreement()
    for start, result, recorded in _chunks(reader, backend):
        agreement.add(start, np.asarray(result.frames)[: len(recorded)], recorded)
    return agreement.mismatches


def recorded_start(reader: EpisodeReader) -> str | None:
    """What the recording's world started from: meta["start"]; a generated recording made before
    start modes existed started from text; None for the engine (its own view, nothing to set)."""
    start = reader.meta.get("start")
    if start is None and reader.meta["backend"] == "generated":
        return "text"
    return start


def prepare_start(reader: EpisodeReader, backend: Backend) -> None:
    """Set `backend` to start its world as the recording's did (see recorded_start). A start image
    comes from the episode's start.png, else from the first frame of its reset view. ReplayError
    when the recording's start cannot be made again."""
    start = recorded_start(reader)
    set_start = getattr(backend, "set_start", None)
    if start is None:
        return
    if set_start is None:
        if start == "engine":
            return  # the engine's own view
        raise ReplayError(f"{reader.path}: the recording's world started from {start!r}; this "
                          f"{backend.info.name!r} backend cannot start that way")  # fmt: skip
    image = None
    if start == "image":
        image = reader.start_image()
        if image is None and len(reader) and is_reset_view(reader.records[0]):
            image = np.array(reader.frames[0])  # the picture, repeated over the reset view
        if image is None:
            raise ReplayError(f"{reader.path}: the world started from a picture, but the episode has neither "
                              "start.png nor its reset view")  # fmt: skip
    try:
        set_start(start, image)
    except BackendError as e:
        raise ReplayError(f"{reader.path}: cannot set the recorded start {start!r}: {e}") from e


def is_reset_view(record: dict) -> bool:
    """Whether a frame record belongs to a reset view (the chunk a backend's reset produced)."""
    return record.get("reset_view") is True


def _chunks(reader: EpisodeReader, backend: Backend) -> Iterator[tuple[int, ChunkResult, np.ndarray]]:
    """(first frame index, the re-simulated chunk, recorded frames) for each recorded chunk; the
    chunk's frames are at least as many as the recorded ones (a recording may keep part of one)."""
    if len(reader) == 0:
        return
    _check_starts_at_reset(reader)
    prompts, actions = reader.prompts(), reader.action_list()
    # The worker records the prompt it reset with in meta; older recordings: the first frame's.
    prompt = reader.meta.get("prompt") or prompts[0]
    prepare_start(reader, backend)
    backend.reset(reader.meta["seed"], prompt)
    for k, (start, end) in enumerate(chunk_spans(reader.chunk_ids())):
        if len(set(prompts[start:end])) > 1:
            raise ReplayError(f"{reader.path}: prompt changes inside chunk at frame {start}; "
                              "prompts can only switch between chunks")  # fmt: skip
        view = any(is_reset_view(r) for r in reader.records[start:end])
        if view and k != 0:
            raise ReplayError(f"{reader.path}: frame {start} is marked as a reset view but is not in the "
                              "first chunk; only a reset's own chunk can be one")  # fmt: skip
        if view:  # made by the reset itself, with the reset's prompt: nothing to step or switch
            result = backend.take_reset_chunk()
            if result is None:
                raise ReplayError(f"{reader.path}: the recording starts with a reset view, but this "
                                  f"{backend.info.name!r} backend's reset produces none")  # fmt: skip
        else:
            if prompts[start] != prompt:
                prompt = prompts[start]
                backend.set_prompt(prompt)
            result = backend.step_chunk(actions[start:end])
        frames, recorded = np.asarray(result.frames)[: end - start], reader.frames[start:end]
        if frames.shape != recorded.shape:
            raise ReplayError(f"{reader.path}: engine returned {list(frames.shape)} for frames "
                              f"{start}..{end - 1}, recording has {list(recorded.shape)}")  # fmt: skip
        yield start, result, recorded
