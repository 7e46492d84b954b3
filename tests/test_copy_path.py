"""The copy path and action tokens: the previous frame the network sees is exactly what the cache holds."""

from __future__ import annotations

import pytest
import torch

from model.diffusion.samplers import diagonal_sampler, make_sampler, uniform_sampler
from model.runtime.stream import Conditioning, generate_chunk
from tests.helpers import TOL, inputs, random_dit, stream

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py



def copy_dit(**overrides):
    return random_dit(copy_path=True, action_tokens=True, **overrides)


class CopyInputs:
    """Records every forward's (x, copy-path input) pair, in order."""

    def __init__(self, model):
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.model = model
        original = model.forward

        def forward(x, *args, **kwargs):
            cache = args[4] if len(args) > 4 else kwargs.get("cache")
            prev = kwargs.get("prev")
            if prev is None:
                prev = model.previous_frames(x, cache)
            self.calls.append((x.detach().clone(), prev.detach().clone()))
            return original(x, *args, **kwargs)

        model.forward = forward


@pytest.mark.parametrize("n_chunks", [1, 2, 5])
def test_streaming_equals_full_sequence_with_copy_path_and_action_tokens(n_chunks):
    model = copy_dit()
    x, t, a, text, mask = inputs(model.config, 2, n_chunks)
    with torch.no_grad():
        full = model(x, t, a, text, mask)
        streamed, _ = stream(model, x, t, a, text, mask)
    assert torch.allclose(full, streamed, atol=TOL)


def test_copy_input_is_the_previous_chunks_last_frame_and_zero_for_the_sink():
    model = copy_dit()
    x, *_ = inputs(model.config, 1, 3)
    prev = model.previous_frames(x, None)
    assert torch.equal(prev[:, :3], torch.zeros_like(prev[:, :3]))
    for c in (1, 2):
        for f in range(3):
            assert torch.equal(prev[:, 3 * c + f], x[:, 3 * c - 1])


def test_the_copy_path_changes_the_output_and_is_silent_when_fresh():
    model = copy_dit()
    x, t, a, text, mask = inputs(model.config, 1, 2)
    with torch.no_grad():
        base = model(x, t, a, text, mask)
        x2 = x.clone()
        x2[:, 2] += 1.0  # only the copy input of chunk 1 and chunk 0's own frame change
        moved = model(x2, t, a, text, mask)
    assert not torch.allclose(base[:, 3:], moved[:, 3:])
    fresh = type(model)(model.config)  # zero-initialised copy and action projections
    assert torch.count_nonzero(fresh.copy_in.weight) == 0 and torch.count_nonzero(fresh.action_in.weight) == 0


def _stream_through_sampler(model, sampler, n_chunks: int):
    recorder = CopyInputs(model)
    cfg = model.config
    cache = model.new_cache()
    text, mask = torch.randn(1, 4, cfg.text_dim), torch.ones(1, 4, dtype=torch.bool)
    cond = Conditioning.build(text, mask, sampler.guidance > 0)
    gen = torch.Generator().manual_seed(0)
    actions = torch.zeros(1, cfg.chunk_frames, cfg.action_dim)
    outs, per_chunk = [], []
    with torch.no_grad():
        for _ in range(n_chunks):
            recorder.calls.clear()
            outs.append(generate_chunk(model, cache, sampler, cond, actions, lambda s: torch.randn(s, generator=gen)))
            per_chunk.append(list(recorder.calls))
    return outs, per_chunk, cache


def test_teacher_copy_path_sees_the_clean_refreshed_chunk():
    """Refresh samplers write clean K/V: the next chunk copies the clean x0 of the last frame."""
    model = copy_dit()
    outs, per_chunk, _ = _stream_through_sampler(model, uniform_sampler(), 4)
    for i in range(1, 4):
        clean_last = outs[i - 1].latents[:, -1]
        for _, prev in per_chunk[i]:  # every denoising forward and the refresh of chunk i
            assert torch.allclose(prev[:, 0], clean_last, atol=1e-6)
            assert torch.equal(prev[:, 0], prev[:, -1])
    assert all(torch.count_nonzero(prev) == 0 for _, prev in per_chunk[0])  # the first chunk has no predecessor


@pytest.mark.parametrize("context_noise", [100.0, 250.0])
def test_diagonal_copy_path_sees_the_context_level_input(context_noise):
    """Without a refresh pass the cache holds the last noisy input: that is what gets copied, at
    the diagonal context level, in inference and in the training rollout alike."""
    model = copy_dit()
    sampler = make_sampler("diagonal", schedule=[4, 3, 2], context_noise=context_noise)
    outs, per_chunk, cache = _stream_through_sampler(model, sampler, 5)  # 5 chunks: evictions happen
    for i in range(1, 5):
        last_input = per_chunk[i - 1][-1][0]  # the K/V-writing (last) forward's input of chunk i - 1
        for _, prev in per_chunk[i]:
            assert torch.equal(prev[:, 0], last_input[:, -1])
    assert torch.equal(cache.inputs.t[0, : cache.n_ctx], torch.full((cache.n_ctx,), context_noise))


def test_recache_replays_the_stored_copy_input_after_eviction():
    """After eviction the first window chunk's predecessor is gone; recache must feed the stored one."""
    model = copy_dit()
    sampler = diagonal_sampler([4, 3, 2])
    _, per_chunk, cache = _stream_through_sampler(model, sampler, 6)
    first_window = cache.layout.sink_frames  # slot of the oldest window frame
    held = cache.inputs.prev[:, first_window].clone()
    recorder = CopyInputs(model)
    cfg = model.config
    text, mask = torch.randn(1, 4, cfg.text_dim), torch.ones(1, 4, dtype=torch.bool)
    cache.reset_text()
    with torch.no_grad():
        cache.recache(lambda inp: model(inp.x, inp.t, inp.actions, text, mask, cache, prev=inp.prev))
    assert torch.equal(recorder.calls[0][1][:, 0], held[:, None][:, 0])
    sink_last = cache.inputs.x[:, first_window - 1]
    assert not torch.equal(held, sink_last)  # the evicted predecessor, not the sink's frame
