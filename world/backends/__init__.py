"""Built-in backends. "generated" imports torch only when a generated world is actually created."""

from world.backend import Backend, register_backend


def _engine(**options) -> Backend:
    from world.backends.engine import EngineBackend

    return EngineBackend(**options)


def _generated(**options) -> Backend:
    from world.backends.generated import GeneratedBackend

    return GeneratedBackend(**options)


register_backend("engine", _engine)
register_backend("generated", _generated)
import world.backends.baselines  # noqa: E402, F401  (registers the baseline worlds "still" and "copy-last")
