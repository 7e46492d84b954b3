"""Backends by name: `create_backend(name, **options)`, `backend_names()`, `register_backend`.

The built-in backends are registered here with factories that import their module only when one
is built, so `world` stays importable without torch for the engine-only paths ("generated" imports
torch when a generated world is created). The registry lives apart from the interface
(`world/backend.py`) so that no backend module imports the module that imports it.
"""

from __future__ import annotations

from collections.abc import Callable

from world.backend import Backend
from world.errors import BackendError

BackendFactory = Callable[..., Backend]

# Options a session opened over the protocol gets when its client leaves them out, where they
# differ from the backend's own defaults. Sessions of the generated world start from the engine's
# view of the prompt (world/start.py); code that builds a backend itself (evaluation, benchmarks,
# showcase) keeps the backend's default, the text start, so its measurements do not change.
SESSION_DEFAULTS: dict[str, dict] = {"generated": {"start": "engine"}}


def _engine(**options) -> Backend:
    from world.backends.engine import EngineBackend

    return EngineBackend(**options)


def _generated(**options) -> Backend:
    from world.backends.generated import GeneratedBackend

    return GeneratedBackend(**options)


def _still(**options) -> Backend:
    from world.backends.baselines import StillBackend

    return StillBackend(**options)


def _copy_last(**options) -> Backend:
    from world.backends.baselines import CopyLastBackend

    return CopyLastBackend(**options)


# "still" and "copy-last": the baseline worlds (world/backends/baselines.py, docs/evaluation.md).
_REGISTRY: dict[str, BackendFactory] = {"engine": _engine, "generated": _generated, "still": _still,
                                        "copy-last": _copy_last}  # fmt: skip


def register_backend(name: str, factory: BackendFactory) -> None:
    _REGISTRY[name] = factory


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def create_backend(name: str, **options) -> Backend:
    """Build a backend by name; options are backend-specific (e.g. checkpoint=..., device=...)."""
    if name not in _REGISTRY:
        raise BackendError(f"unknown backend {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**options)
