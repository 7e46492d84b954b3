"""The one dataset format: engine data, recorded play and training input (docs/dataset.md).

A dataset is a directory of episode directories. An episode holds

    meta.json     written once, atomically (temp name + rename), before any frame
    frames.u8     raw RGB uint8 frames back to back, H*W*3 bytes each
    frames.jsonl  one JSON object per frame, in frame order
    start.png     optional: the picture a generated world started from (meta "start" == "image")

`EpisodeWriter.append_chunk` writes and flushes the frame bytes first, then the chunk's JSON
lines, so at every instant the lines on disk describe frames that are fully on disk. A reader
counts min(complete frames, complete lines): a writer killed with SIGKILL loses at most the chunk
it was writing, and nothing written by `close()` is needed to read the episode back.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np

from world.actions import ACTION_DIM, Action, ActionError
from world.files import atomic_write, atomic_write_json

FORMAT = "gworld-episode"
VERSION = 1
META_FILE = "meta.json"
FRAMES_FILE = "frames.u8"
RECORDS_FILE = "frames.jsonl"
EPISODE_FILES = (META_FILE, FRAMES_FILE, RECORDS_FILE)
# The start image of a world started from a picture (docs/dataset.md): the decoded picture at the
# episode's resolution, exactly as the world used it. Optional; written before meta.json.
START_IMAGE_FILE = "start.png"

# Keys every meta.json has; free-form extras (checkpoint, prompt, datagen, ...) may not shadow them.
META_KEYS = (
    "format",
    "version",
    "backend",
    "seed",
    "height",
    "width",
    "chunk_frames",
    "fps",
    "source",
    "created",
    "options",
)
# Keys every record has. The writer fills "i", "chunk", "steps", "nfe" and "t" when missing.
RECORD_KEYS = ("i", "chunk", "action", "prompt", "steps", "nfe", "t")

# Reading limits: an episode may come from anywhere (a download, a crafted directory), so no read
# is unbounded and no file is followed through a symlink or read from a device.
MAX_META_BYTES = 64 * 1024
MAX_RECORD_BYTES = 64 * 1024  # one frames.jsonl line
MAX_META_OPTIONS = 64
MAX_INDEX = 2**53  # frame and chunk indices, steps, nfe: integers in [0, 2**53]


class DatasetError(ValueError):
    """An episode or dataset that cannot be written or read; the message names file and problem."""


class DatasetWarning(UserWarning):
    """Something was skipped or ignored while reading (a damaged episode, a torn last chunk)."""


def episode_id(seed: int, now: datetime | None = None) -> str:
    """Sortable id: UTC timestamp to the microsecond, then the seed, e.g. 20250101T120000_000001Z-s42."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%S_%f}Z-s{seed}"


def new_episode_path(root: str | Path, seed: int) -> Path:
    """A fresh episode directory path under `root` (not yet created); unique even within one tick."""
    base = Path(root) / episode_id(seed)
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _write_png(path: Path, pixels: np.ndarray) -> None:
    """[H, W, 3] uint8 -> PNG, atomically (temp name + rename)."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class EpisodeWriter:
    """Appends chunks of frames and their records to a new episode directory.

    Usable as a context manager. `fsync=True` also survives power loss (slower); flush alone is
    enough to survive the process being killed.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        backend: str,
        seed: int,
        height: int,
        width: int,
        chunk_frames: int,
        fps: float,
        source: str,
        options: Mapping | None = None,
        extra: Mapping | None = None,
        fsync: bool = False,
        start_image: np.ndarray | None = None,
    ):
        """`start_image`: [height, width, 3] uint8, the picture the world started from; written as
        start.png (lossless) before meta.json, so a complete meta means it is on disk too."""
        self.path = Path(path)
        self.meta = self._build_meta(backend, seed, height, width, chunk_frames, fps, source, options, extra)
        self.frame_bytes = height * width * 3
        self.frames_written = 0
        self.chunks_written = 0
        self._fsync = fsync
        if start_image is not None:
            start_image = self._check_frames(np.asarray(start_image)[None])[0]
        self._open_files()
        if start_image is not None:
            _write_png(self.path / START_IMAGE_FILE, start_image)
        # meta.json last: its presence means both data files exist.
        atomic_write_json(self.path / META_FILE, self.meta, allow_nan=False)

    @staticmethod
    def _build_meta(backend, seed, height, width, chunk_frames, fps, source, options, extra) -> dict:
        for name, value in (("height", height), ("width", width), ("chunk_frames", chunk_frames)):
            if not _positive_int(value):
                raise DatasetError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not fps > 0:
            raise DatasetError(f"fps must be a positive number, got {fps!r}")
        clash = sorted(set(extra or {}) & set(META_KEYS))
        if clash:
            raise DatasetError(f"extra meta keys {clash} would shadow the format's own keys")
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "backend": str(backend),
            "seed": int(seed),
            "height": height,
            "width": width,
            "chunk_frames": chunk_frames,
            "fps": float(fps),
            "source": str(source),
            "created": _utc_now(),
            "options": dict(options or {}),
        }
        meta.update(extra or {})
        try:
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise DatasetError(f"episode meta is not JSON-serialisable: {e}") from e
        return meta

    def _open_files(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        existing = [n for n in EPISODE_FILES if (self.path / n).exists()]
        if existing:
            raise DatasetError(f"{self.path} already holds an episode ({', '.join(existing)}); not overwriting")
        self._frames = open(self.path / FRAMES_FILE, "xb")
        self._records = open(self.path / RECORDS_FILE, "xb")

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._frames.closed

    def append_chunk(self, frames: np.ndarray, records: Sequence[Mapping]) -> None:
        """Append F frames [F, H, W, 3] uint8 and one record per frame (see RECORD_KEYS)."""
        if self.closed:
            raise DatasetError(f"{self.path}: append_chunk after close")
        frames = self._check_frames(frames)
        if len(records) != len(frames):
            raise DatasetError(f"{len(frames)} frames but {len(records)} records; need one record per frame")
        # Encode everything before writing anything, so a bad record leaves the episode untouched.
        lines = b"".join(self._encode(r, j) for j, r in enumerate(records))
        self._frames.write(memoryview(frames).cast("B"))
        self._flush(self._frames)  # frames reach the OS before the lines that describe them
        self._records.write(lines)
        self._flush(self._records)
        self.frames_written += len(frames)
        self.chunks_written += 1

    def _check_frames(self, frames: np.ndarray) -> np.ndarray:
        expected = (self.meta["height"], self.meta["width"], 3)
        if not isinstance(frames, np.ndarray):
            raise DatasetError(f"frames must be a numpy array, got {type(frames).__name__}")
        if frames.dtype != np.uint8:
            raise DatasetError(f"frames must be uint8, got {frames.dtype}")
        if frames.ndim != 4 or frames.shape[1:] != expected:
            raise DatasetError(f"frames must have shape [F, {', '.join(map(str, expected))}], got {list(frames.shape)}")
        return np.ascontiguousarray(frames)

    def _encode(self, record: Mapping, j: int) -> bytes:
        if not isinstance(record, Mapping):
            raise DatasetError(f"record {j} must be a dict, got {type(record).__name__}")
        try:
            action = Action.from_json(record.get("action")).to_json()
        except ActionError as e:
            raise DatasetError(f"record {j}: bad action: {e}") from e
        if not isinstance(record.get("prompt"), str):
            raise DatasetError(f"record {j}: prompt must be a string, got {record.get('prompt')!r}")
        # Defaults for a caller that does not count frames itself; the worker's own "i"/"chunk"
        # (counted since the world's last reset) are kept, so replay can tell where a recording began.
        i = record.get("i", self.frames_written + j)
        rec = {
            "i": i,
            "chunk": record.get("chunk", self.chunks_written),
            "action": action,
            "prompt": record["prompt"],
            "steps": record.get("steps", 0),
            "nfe": record.get("nfe", 0),
            "t": record.get("t", round(i / self.meta["fps"], 6) if _index(i) else None),  # world time, as a worker's
        }
        rec.update((k, v) for k, v in record.items() if k not in rec)
        try:
            return json.dumps(rec, separators=(",", ":"), allow_nan=False).encode("utf-8") + b"\n"
        except (TypeError, ValueError) as e:
            raise DatasetError(f"record {j} is not JSON-serialisable: {e}") from e

    def _flush(self, f) -> None:
        f.flush()
        if self._fsync:
            os.fsync(f.fileno())

    def close(self) -> None:
        """Close the files. Writes nothing the reader needs: a killed writer's episode loads too.
        Both are closed even when flushing one fails (a full disk); then the first error is raised."""
        error: OSError | None = None
        for f in (self._frames, self._records):
            try:
                if not f.closed:
                    f.close()
            except OSError as exc:  # a buffered file is closed even when its last flush fails
                error = error or exc
        if error is not None:
            raise error


class EpisodeReader:
    """Reads an episode written by `EpisodeWriter` (or by a writer killed mid-way).

    meta: the meta.json dict. frames: [N, H, W, 3] uint8 read-only memmap. records: N dicts.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta = self._read_meta()
        lines, torn_line = self._read_records()
        n_frames, partial_frame = self._count_frames(self.meta["height"] * self.meta["width"] * 3)
        # What the files hold beyond the records' frames (a writer killed mid-chunk leaves it), or None.
        self.tail: str | None = self._warn_if_torn(torn_line, partial_frame, len(lines), n_frames)
        self.records: list[dict] = lines[: min(len(lines), n_frames)]

    @property
    def id(self) -> str:
        return self.path.name

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"EpisodeReader({str(self.path)!r}, frames={len(self)})"

    def _read_meta(self) -> dict:
        file = self.path / META_FILE
        if not self.path.is_dir():
            raise DatasetError(f"{self.path}: not an episode directory (does not exist or is a file)")
        if not file.is_file() and not file.is_symlink():
            raise DatasetError(f"{file}: missing; not an episode (or its writer died before starting)")
        try:
            meta = _loads(read_bounded(file, MAX_META_BYTES))
        except (UnicodeDecodeError, ValueError) as e:
            raise DatasetError(f"{file}: cannot read JSON: {e}") from e
        _check_meta(meta, file)
        return meta

    def _read_records(self) -> tuple[list[dict], bool]:
        file = self.path / RECORDS_FILE
        frames = self._count_frames(self.meta["height"] * self.meta["width"] * 3)[0]
        data = read_bounded(file, (frames + 1) * MAX_RECORD_BYTES)  # a line per frame, plus a torn one
        lines = data.split(b"\n")
        torn = lines.pop() != b""  # text after the last newline is a line cut short by a kill
        return [_parse_record(line, file, k + 1) for k, line in enumerate(lines)], torn

    def _count_frames(self, frame_bytes: int) -> tuple[int, bool]:
        file = self.path / FRAMES_FILE
        fd = open_regular(file)
        try:
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        return size // frame_bytes, size % frame_bytes != 0

    def _warn_if_torn(self, torn_line: bool, partial_frame: bool, n_lines: int, n_frames: int) -> str | None:
        problems = []
        if torn_line:
            problems.append(f"an incomplete last line in {RECORDS_FILE}")
        if partial_frame:
            problems.append(f"a partial last frame in {FRAMES_FILE}")
        if n_lines != n_frames:
            problems.append(f"{n_frames} complete frames but {n_lines} complete records")
        if not problems:
            return None
        warnings.warn(
            f"{self.path}: ignoring {'; '.join(problems)}; reading {min(n_lines, n_frames)} frames "
            "(the writer was probably killed mid-chunk)",
            DatasetWarning,
            stacklevel=3,
        )
        return "; ".join(problems)

    @cached_property
    def frames(self) -> np.ndarray:
        """[N, H, W, 3] uint8, read-only memmap, mapped on first use.

        Each map holds a file descriptor; code touching thousands of episodes should use
        `read_frames`, which holds none.
        """
        shape = (len(self), self.meta["height"], self.meta["width"], 3)
        if len(self) == 0:  # mmap cannot map zero bytes
            frames = np.zeros(shape, dtype=np.uint8)
            frames.flags.writeable = False
            return frames
        return np.memmap(self.path / FRAMES_FILE, dtype=np.uint8, mode="r", shape=shape)

    def read_frames(self, start: int, stop: int) -> np.ndarray:
        """Frames [start, stop) as a fresh writeable [T, H, W, 3] uint8 array (no file left open)."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"frames [{start}, {stop}) outside [0, {len(self)}) of {self.path}")
        h, w = self.meta["height"], self.meta["width"]
        count = (stop - start) * h * w * 3
        data = np.fromfile(self.path / FRAMES_FILE, dtype=np.uint8, count=count, offset=start * h * w * 3)
        return data.reshape(stop - start, h, w, 3)

    @cached_property
    def _actions(self) -> np.ndarray:
        out = np.zeros((len(self.records), ACTION_DIM), dtype=np.float32)
        for k, rec in enumerate(self.records):
            try:
                out[k] = Action.from_json(rec["action"]).to_vector()
            except ActionError as e:
                raise DatasetError(f"{self.path / RECORDS_FILE}:{k + 1}: bad action: {e}") from e
        out.flags.writeable = False
        return out

    def actions(self) -> np.ndarray:
        """[N, ACTION_DIM] float32, rows as `Action.to_vector` (read-only, computed once)."""
        return self._actions

    def action_list(self) -> list[Action]:
        """[N] Actions exactly as recorded (float64 mouse; the float32 vectors would round it and
        make a re-simulation drift)."""
        self._actions  # noqa: B018  (validates every action once, with file:line errors)
        return [Action.from_json(rec["action"]) for rec in self.records]

    def start_image(self) -> np.ndarray | None:
        """[H, W, 3] uint8 from start.png (a world started from a picture), or None without one."""
        file = self.path / START_IMAGE_FILE
        if not file.is_file() and not file.is_symlink():
            return None
        from PIL import Image

        data = read_bounded(file, 8 * self.meta["height"] * self.meta["width"] * 3 + 65536)  # PNG: never much larger
        try:
            with Image.open(io.BytesIO(data), formats=("PNG",)) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
        except Exception as e:  # a damaged file is the dataset's problem, reported with its name
            raise DatasetError(f"{file}: cannot read the start image: {e}") from e
        if pixels.shape != (self.meta["height"], self.meta["width"], 3):
            raise DatasetError(f"{file}: start image is {list(pixels.shape)}, the episode's frames are "
                               f"[{self.meta['height']}, {self.meta['width']}, 3]")  # fmt: skip
        return pixels

    def prompts(self) -> list[str]:
        """The prompt in force at each frame, [N]."""
        return [rec["prompt"] for rec in self.records]

    def chunk_ids(self) -> np.ndarray:
        """[N] int64: the chunk each frame came from (frames of one step_chunk call share it)."""
        return np.array([rec["chunk"] for rec in self.records], dtype=np.int64)


def _check_meta(meta: object, file: Path) -> None:
    if not isinstance(meta, dict):
        raise DatasetError(f"{file}: must hold a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise DatasetError(f"{file}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise DatasetError(f"{file}: version {meta.get('version')!r} is not supported (this reader reads {VERSION})")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise DatasetError(f"{file}: missing fields {missing}")
    for name in ("height", "width", "chunk_frames"):
        if not _positive_int(meta[name]):
            raise DatasetError(f"{file}: {name} must be a positive int, got {meta[name]!r}")
        if meta[name] > 1 << 16:
            raise DatasetError(f"{file}: {name} {meta[name]} is beyond any world's size")
    fps = meta["fps"]
    if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not (math.isfinite(fps) and 0 < fps <= 1000):
        raise DatasetError(f"{file}: fps must be a positive number (at most 1000), got {fps!r:.40}")
    seed = meta["seed"]
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**63):
        raise DatasetError(f"{file}: seed must be an integer in [0, 2**63), got {meta['seed']!r:.40}")
    options = meta["options"]
    if not isinstance(options, dict) or len(options) > MAX_META_OPTIONS:
        raise DatasetError(f"{file}: options must be an object with at most {MAX_META_OPTIONS} keys")
    for key, value in options.items():
        if not _scalar(value):
            raise DatasetError(f"{file}: option {key!r:.60} must be a number, bool, null or string of at most "
                               "256 characters")  # fmt: skip


def _parse_record(line: bytes, file: Path, lineno: int) -> dict:
    if len(line) > MAX_RECORD_BYTES:
        raise DatasetError(f"{file}:{lineno}: a record of {len(line)} bytes; the limit is {MAX_RECORD_BYTES}")
    try:
        rec = _loads(line)
    except (UnicodeDecodeError, ValueError) as e:
        raise DatasetError(f"{file}:{lineno}: bad JSON: {e}") from e
    if not isinstance(rec, dict):
        raise DatasetError(f"{file}:{lineno}: a record must be a JSON object")
    missing = [k for k in ("chunk", "action", "prompt") if k not in rec]
    if missing:
        raise DatasetError(f"{file}:{lineno}: record lacks {missing}")
    for key in ("i", "chunk", "steps", "nfe"):
        if key in rec and not _index(rec[key]):
            raise DatasetError(f"{file}:{lineno}: {key} must be an integer in [0, 2**53], got {rec[key]!r:.40}")
    if "t" in rec and not (isinstance(rec["t"], (int, float)) and not isinstance(rec["t"], bool)):
        raise DatasetError(f"{file}:{lineno}: t must be a number, got {rec['t']!r:.40}")
    if not isinstance(rec["prompt"], str):
        raise DatasetError(f"{file}:{lineno}: prompt must be a string")
    try:
        Action.from_json(rec["action"])  # refuses NaN, out-of-range and unknown keys by name
    except ActionError as e:
        raise DatasetError(f"{file}:{lineno}: bad action: {e}") from e
    return rec


def _index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INDEX


def _scalar(value: object) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, str):
        return len(value) <= 256
    if isinstance(value, int):
        return abs(value) <= MAX_INDEX
    return isinstance(value, float) and math.isfinite(value) and abs(value) <= 1e15


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _loads(data: bytes) -> object:
    """JSON without NaN/Infinity (Python's json would accept them), from UTF-8 bytes."""
    return json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)


def open_regular(file: Path) -> int:
    """A read-only descriptor of `file`, which must be a regular file and not a symlink
    (a crafted episode could link frames.jsonl to /dev/zero or to a file outside it)."""
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        if file.is_symlink():
            raise DatasetError(f"{file}: is a symlink; episode files must be regular files in the episode") from e
        raise DatasetError(f"{file}: cannot read: {e.strerror or e}") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DatasetError(f"{file}: not a regular file; episode files must be regular files in the episode")
    return fd


def read_bounded(file: Path, limit: int) -> bytes:
    """The bytes of a regular, non-symlinked file of at most `limit` bytes; DatasetError otherwise."""
    fd = open_regular(file)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise DatasetError(f"{file}: {size} bytes; the most this file may hold here is {limit}")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise DatasetError(f"{file}: more than {limit} bytes; the most this file may hold here is {limit}")
    return data


def open_dataset(root: str | Path) -> list[EpisodeReader]:
    """Readers for every episode under `root`, sorted by name; `root` may also be one episode.

    Damaged episodes are skipped with a DatasetWarning naming them and the problem.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset directory does not exist")
    if (root / META_FILE).exists():
        return [EpisodeReader(root)]
    readers = []
    for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            readers.append(EpisodeReader(path))
        except DatasetError as e:
            warnings.warn(f"skipping damaged episode {path}: {e}", DatasetWarning, stacklevel=2)
    return readers


class Clip(NamedTuple):
    """A training/eval window: frames [T, H, W, 3] uint8, actions [T, ACTION_DIM] float32, T prompts."""

    frames: np.ndarray
    actions: np.ndarray
    prompts: list[str]


def iter_clips(readers: Iterable[EpisodeReader], clip_frames: int, stride: int | None = None) -> Iterator[Clip]:
    """Windows of `clip_frames` consecutive frames, every `stride` frames (default: no overlap).

    Episodes shorter than a clip yield nothing. Frames are read fresh (writeable, no file kept open).
    """
    if not _positive_int(clip_frames):
        raise ValueError(f"clip_frames must be a positive int, got {clip_frames!r}")
    stride = clip_frames if stride is None else stride
    if not _positive_int(stride):
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    for reader in readers:
        actions, prompts = reader.actions(), reader.prompts()
        for start in range(0, len(reader) - clip_frames + 1, stride):
            end = start + clip_frames
            yield Clip(reader.read_frames(start, end), actions[start:end].copy(), prompts[start:end])
