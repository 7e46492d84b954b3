"""One loaded copy of each world model per process, shared by every session that uses it.

A worker serving several players of the same world must not hold one copy of the weights per
player (the network, the autoencoder and the text encoder are read-only at inference): the first
session of a checkpoint on a device loads it, later ones get the same object in microseconds. Each
session keeps its own state on top of it (cache, prompt, noise generator, sampler, start:
model/runtime/stream.py WorldStream).

The key is (checkpoint directory, device, the files' sizes and modification times), so a checkpoint
rewritten in place (a training run's periodic save) is loaded afresh by the next session while open
sessions keep the copy they started with. Models no session uses any more are dropped (weak
references), except the two most recently used (a world and the theme classifier its chunks are
read with), so a player who closes and reopens does not wait for a reload. Loading runs under a
per-key lock: two sessions opening the same world at once load it once, and sessions of other worlds
are not held up. Torch-free: the loader comes from the caller (model/runtime/generated_backend.py), so the
worker can read the counters without importing the model.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Hashable
from pathlib import Path


def checkpoint_stamp(directory: Path) -> tuple:
    """(name, size, mtime_ns) of every file in the checkpoint directory: changes when it is rewritten."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
        return tuple((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries if e.is_file())
    except OSError:
        return ()  # a missing directory: the loader raises the error that names it


class ModelCache:
    """`get(key, load)`: the object `load()` made for `key`, loaded once while anyone holds it."""

    def __init__(self, keep_idle: int = 2) -> None:
        self._models: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        # The most recently used models stay alive although no session uses them (fast reopen): a world
        # and the theme classifier its sessions read chunks with.
        self._recent: dict[Hashable, object] = {}
        self.keep_idle = keep_idle
        self._lock = threading.Lock()  # guards the dictionaries and the per-key locks
        self._loading: dict[Hashable, threading.Lock] = {}
        self.loads = 0  # models loaded by this process (tests and worker status read it)
        self.hits = 0  # gets served from memory

    def get(self, key: Hashable, load: Callable[[], object]) -> object:
        with self._lock:
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # one loader per key; other keys proceed
            with self._lock:
                model = self._models.get(key)
                if model is not None:
                    self.hits += 1
                    self._remember(key, model)
                    return model
            model = load()  # may raise: nothing is cached then
            with self._lock:
                self._models[key] = model
                self._remember(key, model)
                self.loads += 1
            return model

    def _remember(self, key: Hashable, model: object) -> None:
        self._recent.pop(key, None)
        self._recent[key] = model  # newest last
        while len(self._recent) > self.keep_idle:
            self._recent.pop(next(iter(self._recent)))

    def held(self) -> int:
        """Models in memory now."""
        with self._lock:
            return len(self._models)

    def stats(self) -> dict:
        return {"models_loaded": self.loads, "models_held": self.held(), "model_reuses": self.hits}

    def clear(self) -> None:
        """Forget every model (tests); sessions holding one keep it."""
        with self._lock:
            self._models.clear()
            self._recent.clear()


MODELS = ModelCache()  # the process's shared models (model/runtime/generated_backend.py)
