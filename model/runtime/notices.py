"""Sentences for the player instead of Python warnings from the model (model/runtime/generated_backend.py).

The text encoder warns when a prompt is longer than its token slots; a warning on the terminal
(with a source line) tells a player nothing. `PromptNotice` catches it around the backend's
prompt calls and keeps a sentence in `.notice`, which the next chunk carries as
`extra.prompt_notice` and the window shows ("long prompt: cut to the first 23 words ...").
"""

from __future__ import annotations

import re
import warnings


class PromptNotice:
    """`with PromptNotice(prompt) as caught: ...`: the text encoder's truncation warning becomes
    `caught.notice`, a sentence for the player; other warnings pass on unchanged."""

    PATTERN = re.compile(r"prompt has (\d+) tokens, only the first (\d+)")

    def __init__(self, prompt: str) -> None:
        self.words = len(prompt.split())
        self.notice: str | None = None
        self._catcher = warnings.catch_warnings(record=True)

    def __enter__(self) -> PromptNotice:
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc: object) -> None:
        self._catcher.__exit__(*exc)
        for w in self._caught:
            match = self.PATTERN.search(str(w.message))
            if match is None:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)  # not ours: pass it on
                continue
            tokens, kept = int(match.group(1)), int(match.group(2))
            self.notice = cut_notice(self.words, tokens, kept)


def cut_notice(words: int, tokens: int, kept: int) -> str:
    """The player's sentence for a prompt longer than the text encoder's token slots: the words kept
    are estimated from the token counts (a word is one token or more)."""
    first = max(1, min(words, words * kept // max(tokens, 1)))
    return (f"long prompt: cut to the first {first} words (the world reads {kept} of its {tokens} tokens one "
            "by one, the rest only as a summary)")
