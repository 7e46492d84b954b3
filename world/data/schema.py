"""What a recording must be before replay, export or the window's playback trust it (docs/dataset.md,
"What replay and export check").

`EpisodeReader` reads any episode within bounds; a recording that is to be made again or shown as a
video is also checked against what a worker could have produced: its geometry within the limits a
worker enforces on a session (world/server/worker_config.py, read before anything is allocated),
options a client could have sent, frame times that are the frame index over fps, consecutive chunk
numbers that match the frame numbers, the same steps and nfe for every frame of a chunk (none for
the engine), an engine version that exists, no record field the format does not define, and no
bytes after the frames the records describe. A refusal is a `RecordingError` naming the file, the
field and, for a record, its line.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

from world.data.dataset import META_FILE, RECORD_KEYS, RECORDS_FILE, DatasetError, EpisodeReader

# Record fields the format defines beyond RECORD_KEYS (docs/dataset.md): the reset view's marks, the
# window's sound, the chunk facts datagen puts on a chunk's last record.
OPTIONAL_RECORD_KEYS = {"reset_view": bool, "start": str, "audio": dict, "theme": dict, "pose": dict}
KNOWN_RECORD_KEYS = frozenset(RECORD_KEYS) | frozenset(OPTIONAL_RECORD_KEYS)
STARTS = ("engine", "text", "image")
T_TOLERANCE = 2e-6  # `t` is written as round(i / fps, 6)


class RecordingError(DatasetError):
    """A recording whose fields disagree with the format or with what a worker could have made."""


def check_recording(reader: EpisodeReader, allow_tail: bool = False) -> None:
    """Refuse (RecordingError) a recording that a worker could not have produced; see the module
    docstring. `allow_tail`: a torn last chunk (what a writer killed mid-chunk leaves) is only warned
    about, as the reader does, instead of refused."""
    check_meta(reader.meta, reader.path / META_FILE)
    if reader.tail and not allow_tail:
        raise RecordingError(f"{reader.path}: trailing bytes: {reader.tail} (a writer killed mid-chunk leaves "
                             f"such a tail; --ignore-tail uses the {len(reader)} complete frames)")  # fmt: skip
    check_records(reader.records, reader.meta, reader.path / RECORDS_FILE)


def check_meta(meta: dict, file: Path) -> None:
    """Geometry, options, fps and versions of an episode's meta, before anything is allocated for it."""
    from world.procedural.engine import ENGINE_VERSION
    from world.server.worker_config import NUMBER_OPTIONS

    for name in ("height", "width", "chunk_frames", "fps"):
        low, high, _ = NUMBER_OPTIONS[name]
        if not low <= meta[name] <= high:
            raise RecordingError(f"{file}: {name} {meta[name]!r:.40} is outside [{low}, {high}], what a worker allows")
    _check_options(meta, file)
    version = meta.get("engine_version")
    if version is not None and not (_whole(version) and 1 <= version <= ENGINE_VERSION):
        raise RecordingError(f"{file}: engine_version {version!r:.40} is not a version of this engine (1 to "
                             f"{ENGINE_VERSION})")  # fmt: skip
    for name, kind in (("prompt", str), ("start_image", str), ("model", dict)):
        if name in meta and not isinstance(meta[name], kind):
            raise RecordingError(f"{file}: {name} must be a {kind.__name__}, got {meta[name]!r:.40}")
    if meta.get("start") not in (None, *STARTS):
        raise RecordingError(f"{file}: start {meta['start']!r:.40} is none of {', '.join(STARTS)}")


def _check_options(meta: dict, file: Path) -> None:
    """Options a client could have sent, whose geometry is the meta's own (replay builds the world from
    them: a bigger size there would be allocated, not read)."""
    from world.server import protocol as P
    from world.server.worker_config import GEOMETRY_OPTIONS, check_client_options

    options = meta["options"]
    try:
        check_client_options(options)
    except P.ProtocolError as exc:
        raise RecordingError(f"{file}: options: {exc.message}") from None
    for name in GEOMETRY_OPTIONS:
        if name in options and options[name] != meta[name]:
            raise RecordingError(f"{file}: options.{name} {options[name]!r:.40} differs from the episode's {name} "
                                 f"{meta[name]!r}")  # fmt: skip
    if meta["backend"] == "engine" and meta["fps"] != options.get("fps", engine_default("fps")):
        raise RecordingError(f"{file}: fps {meta['fps']!r} is not the engine's ({options.get('fps', 'default')} "
                             f"{engine_default('fps')}): an engine session runs at its fps option")  # fmt: skip


def engine_default(name: str) -> object:
    """The engine backend's own default for an option (its constructor's)."""
    from world.backends.engine_backend import EngineBackend

    return inspect.signature(EngineBackend).parameters[name].default


def check_records(records: list[dict], meta: dict, file: Path) -> None:
    """Every record: known fields, frame numbers consecutive, chunk = frame // chunk_frames, t = frame
    / fps, and one steps and nfe per chunk (0 for the engine)."""
    first = records[0].get("i", 0) if records else 0
    chunk_steps: dict[int, tuple[object, object]] = {}
    for k, record in enumerate(records):
        where = f"{file}:{k + 1}"
        _check_fields(record, where)
        i = record.get("i", first + k)
        if i != first + k:
            raise RecordingError(f"{where}: i {i} breaks the frame numbering (expected {first + k})")
        if record["chunk"] != i // meta["chunk_frames"]:
            raise RecordingError(f"{where}: chunk {record['chunk']} is not frame {i}'s chunk "
                                 f"({i // meta['chunk_frames']} with chunk_frames {meta['chunk_frames']})")  # fmt: skip
        if "t" in record and not math.isclose(record["t"], i / meta["fps"], rel_tol=0, abs_tol=T_TOLERANCE):
            raise RecordingError(f"{where}: t {record['t']!r:.40} is not frame {i} at fps {meta['fps']:g} "
                                 f"({round(i / meta['fps'], 6)})")  # fmt: skip
        _check_steps(record, meta, chunk_steps, where)


def _check_fields(record: dict, where: str) -> None:
    unknown = sorted(set(record) - KNOWN_RECORD_KEYS)
    if unknown:
        raise RecordingError(f"{where}: unknown field {unknown[0]!r:.60}; a record holds only "
                             f"{', '.join(sorted(KNOWN_RECORD_KEYS))}")  # fmt: skip
    for name, kind in OPTIONAL_RECORD_KEYS.items():
        if name in record and not isinstance(record[name], kind):
            raise RecordingError(f"{where}: {name} must be a {kind.__name__}, got {record[name]!r:.40}")
    if record.get("reset_view") is False or record.get("start") not in (None, *STARTS):
        raise RecordingError(f"{where}: reset_view is true when present, start one of {', '.join(STARTS)}")


def _check_steps(record: dict, meta: dict, chunk_steps: dict, where: str) -> None:
    steps = (record.get("steps", 0), record.get("nfe", 0))
    if meta["backend"] == "engine" and steps != (0, 0):
        raise RecordingError(f"{where}: steps {steps[0]} and nfe {steps[1]}: the engine takes no denoising steps")
    known = chunk_steps.setdefault(record["chunk"], steps)
    if known != steps:
        raise RecordingError(f"{where}: steps {steps[0]} and nfe {steps[1]} differ from the chunk's other frames "
                             f"({known[0]}, {known[1]})")  # fmt: skip


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
