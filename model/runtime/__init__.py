"""The streaming runtime: the one generation loop and world checkpoints (all the worker needs)."""
