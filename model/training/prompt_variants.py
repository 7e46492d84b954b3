"""Variants of the latent cache's prompts for teacher training: paraphrases from the training synonyms,
with optional word dropout, encoded once with the text encoder that made the cache's tokens.

A latent cache holds one phrasing per prompt (prompts.json; 184 in data/teacher_ft_latents), so the
teacher can learn those strings rather than what they say. A variant re-composes the prompt's theme
(world/procedural/themes.py `compose_prompt`) from the "train" half of the synonym tables, with
another template and word order; word dropout then removes each word with a probability, so no
single word carries a prompt alone. The "heldout" half never enters: a variant in which the prompt
parser would read a held-out phrase (dropping "fall" from "fall foliage" leaves "foliage") is drawn
again.

Table layout (`PromptVariants`): rows 0..P-1 are the cache's own tokens; prompt p's variant k
(1..K) is row P + p K + k - 1; `rows` [P, K + 1] names them per prompt, column 0 the original.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model.nets.text_encoder import create_text_encoder
from world.errors import PromptError
from world.procedural.themes import BIOMES, TIMES, WEATHERS, compose_prompt, parse_prompt, synonyms

# Redraws of a variant that repeats an earlier one or shows a held-out phrase; with 5 templates and
# 4 to 12 synonyms per value a fresh phrasing is almost always found long before this.
MAX_DRAWS = 20


@dataclass(frozen=True)
class PromptVariants:
    """The extended text table: the cache's rows first, then every prompt's K variants."""

    tokens: torch.Tensor  # [P (K + 1), L, dim] float32
    mask: torch.Tensor  # [P (K + 1), L] bool
    rows: torch.Tensor  # [P, K + 1] int64: row of each prompt's phrasings, column 0 the cached prompt
    texts: list[str]  # the text of each row of `tokens`


def check_options(count: int, word_dropout: float) -> None:
    """ValueError naming the option for a bad count of variants or dropout probability."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"prompt_paraphrases (--prompt-paraphrases) must be a whole number >= 0, got {count!r}")
    if not 0.0 <= word_dropout < 1.0:  # also refuses NaN
        raise ValueError(f"word_dropout (--word-dropout) must be in [0, 1), got {word_dropout!r}")
    if word_dropout and not count:
        raise ValueError("word_dropout (--word-dropout) drops words from the prompts' variants: it needs "
                         "prompt_paraphrases (--prompt-paraphrases) > 0")


# ----------------------------------------------------------------------------- held-out phrases


def _normalise(text: str) -> str:
    # As the prompt parser reads text: lower case, punctuation and hyphens as spaces.
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def _phrase_table() -> list[tuple[re.Pattern[str], str, bool]]:
    """(pattern, phrase, held out) for every synonym, longest first, as the prompt parser matches them."""
    values = {"biome": BIOMES, "time_of_day": TIMES, "weather": WEATHERS}
    entries = {(_normalise(p), split == "heldout") for kind, names in values.items() for v in names
               for split in ("train", "heldout") for p in synonyms(kind, v, split)}
    ordered = sorted(entries, key=lambda e: (-len(e[0]), e[0]))
    return [(re.compile(rf"\b{re.escape(p)}\b"), p, heldout) for p, heldout in ordered]


_PHRASES = _phrase_table()


def heldout_phrases(text: str) -> list[str]:
    """The held-out synonym phrases the prompt parser would read in `text`. Longer phrases are
    matched first and blanked out, so "foliage" inside the training phrase "fall foliage" is none."""
    text, found = _normalise(text), []
    for pattern, phrase, heldout in _PHRASES:
        text, n = pattern.subn(lambda m: "#" * len(m.group()), text)
        if n and heldout:
            found.append(phrase)
    return found


# ----------------------------------------------------------------------------- drawing the texts


def paraphrase(prompt: str, rng: random.Random, avoid: set[str]) -> str:
    """`prompt`'s theme composed anew from the training synonyms, redrawn while it is in `avoid` or
    shows a held-out phrase; the prompt itself when it names no theme (nothing to re-compose)."""
    try:
        theme = parse_prompt(prompt)
    except PromptError:
        return prompt
    fallback = None
    for _ in range(MAX_DRAWS):
        text = compose_prompt(theme, rng, "train")
        if heldout_phrases(text):
            continue
        if text not in avoid:
            return text
        fallback = fallback or text
    return fallback or prompt


def drop_words(text: str, p: float, rng: random.Random) -> str:
    """`text` with each word dropped with probability p; one word (drawn) stays when all would go.
    Redrawn while what is left shows a held-out phrase (then `text` whole). Draws nothing at p = 0."""
    words = text.split()
    if p == 0.0 or not words:
        return text
    for _ in range(MAX_DRAWS):
        kept = [w for w in words if rng.random() >= p] or [rng.choice(words)]
        if not heldout_phrases(out := " ".join(kept)):
            return out
    return text


def variant_texts(prompts: Sequence[str], count: int, word_dropout: float, seed: int) -> list[list[str]]:
    """[P][K] each prompt's variants. The draws come from generators seeded by (seed, the prompt's
    text; string seeds hash the same in every process), so a prompt's variants do not depend on the
    rest of the cache, and its paraphrases do not depend on word_dropout."""
    check_options(count, word_dropout)
    table = []
    for prompt in prompts:
        words, drops = random.Random(f"paraphrase:{seed}:{prompt}"), random.Random(f"word-dropout:{seed}:{prompt}")
        avoid, variants = {prompt}, []
        for _ in range(count):
            text = paraphrase(prompt, words, avoid)
            avoid.add(text)
            variants.append(drop_words(text, word_dropout, drops))
        table.append(variants)
    return table


# ----------------------------------------------------------------------------- the table


def build_variants(prompts: Sequence[str], tokens: torch.Tensor, mask: torch.Tensor, count: int,
                   word_dropout: float, seed: int, text_encoder: str) -> PromptVariants:
    """The cache's text table (tokens [P, L, dim], mask [P, L]; row = prompt id) extended by each
    prompt's `count` variants, encoded by `text_encoder` (the name the cache records) at the cache's
    L token slots: `create_text_encoder(...).encode`, as encode-latents made the cache's rows."""
    P, L = mask.shape
    if len(prompts) != P or tokens.shape[:2] != mask.shape:
        raise ValueError(f"{len(prompts)} prompt strings for a text table of tokens {tuple(tokens.shape)}, "
                         f"mask {tuple(mask.shape)}: the cache's prompts.json and text.safetensors disagree")
    texts = [t for variants in variant_texts(prompts, count, word_dropout, seed) for t in variants]
    extra_tokens, extra_mask = _encode(texts, text_encoder, L, tokens.shape[2])
    rows = torch.cat([torch.arange(P)[:, None], P + torch.arange(P * count).view(P, count)], 1)
    return PromptVariants(torch.cat([tokens.float(), extra_tokens]), torch.cat([mask.bool(), extra_mask]), rows,
                          [*prompts, *texts])


def _encode(texts: list[str], text_encoder: str, slots: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """texts -> tokens [N, slots, dim] float32, mask [N, slots] bool. On the CPU: the same numbers on
    every machine, so a resumed run reads the same table."""
    if not texts:
        return torch.zeros(0, slots, dim), torch.zeros(0, slots, dtype=torch.bool)
    tokens, mask = create_text_encoder(text_encoder, "cpu", slots).encode(texts)
    if tokens.shape[2] != dim:
        raise ValueError(f"text encoder {text_encoder!r} gives {tokens.shape[2]} numbers per token, the cache's "
                         f"table {dim}: not the encoder that made the cache")
    # The cache stores its tokens in float16 (encode-latents): the variants get the same rounding, so a
    # variant that is the cached text exactly is the cached row exactly.
    return tokens.half().float(), mask.bool()
