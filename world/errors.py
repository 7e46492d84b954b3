"""Errors every layer shares, and the one prompt limit; imports nothing.

They live apart from the backend interface so that code which only needs to refuse a prompt (the
theme parser, the text encoder, the protocol) does not import the interface, its registry and,
through it, every backend (docs/architecture.md, "Layers").
"""

MAX_PROMPT_CHARS = 500  # the longest prompt anything accepts: the protocol, the parser, the prompt box


class PromptError(ValueError):
    """A prompt the backend cannot use (empty, too long, names nothing the engine knows)."""


class BackendError(RuntimeError):
    """A backend that cannot be created or used (missing checkpoint, bad options)."""
