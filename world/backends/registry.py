"""Backends by name: `create_backend(name, **options)`, `backend_names()`, `register_backend`.

A backend is registered by module path, "package.module:factory", and its module is imported only
when one is built. So `world` stays importable without torch for the engine-only paths, and world/
imports nothing from the layers above it: the generated world lives with the model
(model/runtime/generated_backend.py) and is named here by its path, never imported. The registry
lives apart from the interface (`world/backend.py`) so that no backend module imports the module
that imports it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from world.backend import Backend
from world.errors import BackendError

BackendFactory = Callable[..., Backend]

# Options a session opened over the protocol gets when its client leaves them out, where they
# differ from the backend's own defaults. Sessions of the generated world start from the engine's
# view of the prompt (world/start.py); code that builds a backend itself (evaluation, benchmarks,
# showcase) keeps the backend's default, the text start, so its measurements do not change.
SESSION_DEFAULTS: dict[str, dict] = {"generated": {"start": "engine"}}

# "still" and "copy-last": the baseline worlds (world/backends/baselines.py, docs/evaluation.md).
_REGISTRY: dict[str, str | BackendFactory] = {
    "engine": "world.backends.engine_backend:EngineBackend",
    "generated": "model.runtime.generated_backend:GeneratedBackend",
    "still": "world.backends.baselines:StillBackend",
    "copy-last": "world.backends.baselines:CopyLastBackend",
}

# What makes a backend's recording again (world/data/replay.py), by module path like the backends:
# `regenerator(meta, where, checkpoint, device) -> (backend, same_settings)`.
_REGENERATORS: dict[str, str] = {"generated": "model.runtime.regenerate:regenerating_backend"}


def load_object(path: str) -> object:
    """The object a "package.module:name" path names, its module imported now."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def register_backend(name: str, factory: str | BackendFactory) -> None:
    """`factory`: a callable, or its "package.module:factory" path (imported when a backend is built)."""
    _REGISTRY[name] = factory


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def create_backend(name: str, **options) -> Backend:
    """Build a backend by name; options are backend-specific (e.g. checkpoint=..., device=...)."""
    if name not in _REGISTRY:
        raise BackendError(f"unknown backend {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    factory = _REGISTRY[name]
    return (load_object(factory) if isinstance(factory, str) else factory)(**options)


def regenerator(name: object) -> Callable | None:
    """The function that makes a recording of backend `name` again, or None when none is registered
    (`name` comes from a recording's meta.json, so it may be anything)."""
    path = _REGENERATORS.get(name) if isinstance(name, str) else None
    return None if path is None else load_object(path)
