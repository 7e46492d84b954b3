"""The streaming runtime: the one generation loop, world checkpoints and the generated backend (all
the worker needs from the model)."""
