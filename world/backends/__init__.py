"""The built-in backends: engine, baselines; `registry.py` builds them by name (the generated world by
its module path, model/runtime/generated_backend.py)."""
