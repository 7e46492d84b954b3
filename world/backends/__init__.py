"""The built-in backends: engine, generated, baselines; `registry.py` builds them by name."""
