"""Sentences for the player about what the model did with their input (model/runtime/generated_backend.py).

A prompt longer than the text encoder's token slots is cut: the encoder says so as a value
(`PromptLength`), and the backend keeps this module's sentence for the next chunk, which carries it
as `extra.prompt_notice` for the window to show ("long prompt: cut to the first 23 words ...").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model.nets.text_encoder import PromptLength


def cut_notice(prompt: str, length: PromptLength) -> str | None:
    """The player's sentence for a prompt longer than the token slots, None for one that fits. The
    words kept are estimated from the token counts (a word is one token or more)."""
    if not length.truncated:
        return None
    words = len(prompt.split())
    first = max(1, min(words, words * length.kept // max(length.tokens, 1)))
    return (f"long prompt: cut to the first {first} words (the world reads {length.kept} of its {length.tokens} "
            "tokens one by one, the rest only as a summary)")
