"""KVCache bookkeeping: the span rule, eviction, the current slot, KV-recache, text cache."""

from __future__ import annotations

import pytest
import torch

from model.nets.kv_cache import CacheLayout, KVCache, attention_span, context_frame_ids
from tests.helpers import inputs, random_dit

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


LAYOUT = CacheLayout(chunk_frames=3, sink_frames=3, window_frames=9, tokens_per_frame=4)


def test_attention_span_rule():
    # docs/design.md §3: sink = first chunk, window = the 9 most recent frames including the current chunk
    assert context_frame_ids(0, LAYOUT) == []
    assert context_frame_ids(1, LAYOUT) == [0, 1, 2]
    assert context_frame_ids(3, LAYOUT) == list(range(9))
    assert context_frame_ids(4, LAYOUT) == [0, 1, 2, 6, 7, 8, 9, 10, 11]
    assert context_frame_ids(100, LAYOUT) == [0, 1, 2, 294, 295, 296, 297, 298, 299]
    assert attention_span(100, LAYOUT) == (3, 294, 303)


def test_layout_refuses_partial_chunks():
    with pytest.raises(ValueError, match="whole"):
        CacheLayout(chunk_frames=3, sink_frames=2, window_frames=9, tokens_per_frame=4)


def fill_chunk(cache: KVCache, value: float) -> None:
    C, T = cache.layout.chunk_frames, cache.layout.tokens_per_frame
    x = torch.full((1, C, 1, 1, 1), value)
    cache.write_inputs(x, torch.full((1, C), value), torch.full((1, C, 2), value))
    for layer in range(cache.depth):
        kv = torch.full((1, 1, C * T, 2), value)
        cache.write_current(layer, kv, kv)


def test_eviction_keeps_the_sink_and_the_recent_window():
    cache = KVCache(LAYOUT, depth=2)
    for i in range(6):
        fill_chunk(cache, float(i))
        cache.commit_chunk()
    T = LAYOUT.tokens_per_frame
    assert cache.frame_ids == context_frame_ids(6, LAYOUT) == [0, 1, 2, 12, 13, 14, 15, 16, 17]
    per_frame = cache.k[1][0, 0, : cache.n_ctx * T : T, 0].tolist()
    assert per_frame == [0, 0, 0, 4, 4, 4, 5, 5, 5]  # chunk values: sink 0, then chunks 4 and 5
    assert cache.inputs.t[0, : cache.n_ctx].tolist() == per_frame
    assert cache.chunk_index == 6 and cache.span_tokens == 12 * T


def test_current_slot_is_rewritten_until_commit():
    cache = KVCache(LAYOUT, depth=1)
    fill_chunk(cache, 1.0)
    fill_chunk(cache, 2.0)  # a second denoising forward of the same chunk overwrites the slot
    assert cache.k[0][0, 0, 0, 0] == 2.0 and cache.n_ctx == 0
    cache.commit_chunk()
    with pytest.raises(RuntimeError, match="before every layer"):
        cache.commit_chunk()


def test_span_keeps_gradient_of_the_current_chunk_only():
    cache = KVCache(LAYOUT, depth=1)
    fill_chunk(cache, 1.0)
    cache.commit_chunk()
    k = torch.ones(1, 1, 3 * LAYOUT.tokens_per_frame, 2, requires_grad=True)
    cache.write_inputs(torch.zeros(1, 3, 1, 1, 1), torch.zeros(1, 3), torch.zeros(1, 3, 2))
    k_span, _ = cache.write_current(0, k, k)
    k_span.sum().backward()
    assert k.grad is not None and not cache.k[0].requires_grad


def streamed_cache(model, n_chunks: int):
    x, t, a, text, mask = inputs(model.config, 1, n_chunks)
    cache = model.new_cache()
    for i in range(n_chunks):
        s = slice(3 * i, 3 * i + 3)
        model(x[:, s], t[:, s], a[:, s], text, mask, cache)
        cache.commit_chunk()
    return cache, text, mask


def replay(model, cache, prompt, mask):
    return lambda inp: model(inp.x, inp.t, inp.actions, prompt, mask, cache)


def test_recache_with_the_same_prompt_reproduces_the_window():
    # Before any eviction the window chunks see the same context again, so K/V come back equal.
    model = random_dit()
    with torch.no_grad():
        cache, text, mask = streamed_cache(model, 3)
        before = [k.clone() for k in cache.k]
        cache.reset_text()
        assert cache.recache(replay(model, cache, text.clone(), mask)) == 2
    assert all(torch.allclose(b, k, atol=1e-5) for b, k in zip(before, cache.k))
    assert cache.frame_ids == list(range(9)) and cache.chunk_index == 3


def test_recache_rewrites_the_window_and_keeps_the_sink():
    model = random_dit()
    cfg = model.config
    with torch.no_grad():
        cache, text, mask = streamed_cache(model, 6)
        before = [k.clone() for k in cache.k]
        held = list(cache.frame_ids)
        cache.reset_text()
        assert cache.recache(replay(model, cache, torch.randn_like(text), mask)) == 2
    T, S = cfg.tokens_per_frame, cfg.sink_frames
    assert cache.frame_ids == held and cache.chunk_index == 6 and cache.text_builds == 2
    last = cfg.depth - 1
    assert torch.equal(before[last][:, :, : S * T], cache.k[last][:, :, : S * T])  # sink kept
    window = slice(S * T, cache.n_ctx * T)
    assert not torch.allclose(before[last][:, :, window], cache.k[last][:, :, window], atol=1e-4)


def test_reset_forgets_everything():
    cache = KVCache(LAYOUT, depth=1)
    fill_chunk(cache, 1.0)
    cache.commit_chunk()
    cache.reset()
    assert cache.n_ctx == 0 and cache.frame_ids == [] and cache.nbytes() == 0 and cache.text_k is None
