"""Files written whole or not at all, and file hashes (stdlib only; model/common/tensor_files.py adds tensors).

`atomic_write(path, write)`: `write(tmp)` fills a temporary sibling, which is flushed to disk (fsync)
and renamed over `path`, so a reader (or a run resumed after a kill or a power cut) sees the old
file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` to fill a temporary sibling of `path`, fsync it and rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename must never expose a half-written file
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | os.PathLike, obj: object, *, allow_nan: bool = True) -> Path:
    """`obj` as indented JSON plus a newline, atomically; allow_nan=False refuses NaN and infinities."""
    text = json.dumps(obj, indent=1, allow_nan=allow_nan) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
