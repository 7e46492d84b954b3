"""K/V-only context passes: `WorldNet.forward(context_only=True)` leaves the cache a full forward
leaves, alone and batched, for every family; a 1-step diagonal chunk predicts x0 in one forward and
writes its context with such a pass, exactly as a training rollout that exits at its first step."""

from __future__ import annotations

import pytest
import torch

from model.diffusion.samplers import CONTEXT_NOISE, diagonal_sampler, uniform_sampler
from model.nets.cache_batch import CacheBatch, Member
from model.runtime.stream import Conditioning, generate_chunk
from tests.helpers import RecordingDiT, random_dit

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

FAMILIES = ["tiny", "tiny-unet"]


def chunk_inputs(cfg, seed: int, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    C = cfg.chunk_frames
    x = torch.randn(batch, C, *cfg.latent_shape, generator=g)
    t = torch.full((batch, C), 100.0)
    actions = torch.randn(batch, C, cfg.action_dim, generator=g)
    text = torch.randn(batch, 4, cfg.text_dim, generator=g)
    return x, t, actions, text, torch.ones(batch, 4, dtype=torch.bool)


def cache_state(cache) -> list[torch.Tensor]:
    """Everything a later chunk can read: every layer's K/V buffers and the stored inputs."""
    held = [b for b in cache.k + cache.v if b is not None]
    inputs = cache.inputs
    return held + list(inputs.buffers())


def assert_same_cache(a, b, tol: float = 0.0) -> None:
    assert a.next_frame == b.next_frame
    for u, w in zip(cache_state(a), cache_state(b), strict=True):
        assert torch.equal(u, w) if tol == 0 else (u - w).abs().max() < tol


@pytest.mark.parametrize("preset", FAMILIES)
def test_context_only_leaves_the_cache_a_full_forward_leaves(preset):
    net = random_dit(preset)
    full, kv_only = net.new_cache(), net.new_cache()
    with torch.no_grad():
        for chunk in range(4):  # past the sink, into the window
            x, t, actions, text, mask = chunk_inputs(net.config, chunk)
            v = net(x, t, actions, text, mask, full)
            assert v.shape == x.shape
            assert net(x, t, actions, text, mask, kv_only, context_only=True) is None
            full.commit_chunk()
            kv_only.commit_chunk()
            assert_same_cache(full, kv_only)
        x, t, actions, text, mask = chunk_inputs(net.config, 9)
        assert torch.equal(net(x, t, actions, text, mask, full), net(x, t, actions, text, mask, kv_only))


@pytest.mark.parametrize("preset", FAMILIES)
def test_context_only_batched_over_streams_equals_each_alone(preset):
    net = random_dit(preset)
    alone = [net.new_cache(), net.new_cache()]
    batched = [net.new_cache(), net.new_cache()]
    with torch.no_grad():
        for chunk in range(2):
            ins = [chunk_inputs(net.config, 10 * chunk + i) for i in range(2)]
            for cache, (x, t, actions, text, mask) in zip(alone, ins):
                net(x, t, actions, text, mask, cache, context_only=True)
                cache.commit_chunk()
            batch = CacheBatch([Member(c, text, mask) for c, (_, _, _, text, mask) in zip(batched, ins)])
            x, t, actions = (torch.cat([i[j] for i in ins]) for j in range(3))
            assert net(x, t, actions, None, None, batch, torch.zeros(2, dtype=torch.bool), context_only=True) is None
            for cache in batched:
                cache.commit_chunk()
    for a, b in zip(alone, batched):  # a batched convolution may sum in another order: rounding only
        assert_same_cache(a, b, tol=1e-4)


def test_context_only_needs_a_cache():
    net = random_dit("tiny-unet")
    x, t, actions, text, mask = chunk_inputs(net.config, 0)
    with pytest.raises(AssertionError, match="context_only"):
        net(x, t, actions, text, mask, context_only=True)


def run_stream(net, sampler, n: int, exit_steps=None):
    cfg = net.config
    cache = net.new_cache()
    cond = Conditioning.build(torch.randn(1, 4, cfg.text_dim, generator=torch.Generator().manual_seed(1)),
                              torch.ones(1, 4, dtype=torch.bool), False)
    gen = torch.Generator().manual_seed(0)
    outs = []
    with torch.no_grad():
        for i in range(n):
            actions = torch.randn(1, cfg.chunk_frames, cfg.action_dim, generator=torch.Generator().manual_seed(i))
            exit_step = None if exit_steps is None else exit_steps[i]
            outs.append(generate_chunk(net, cache, sampler, cond, actions, lambda s: torch.randn(s, generator=gen),
                                       exit_step=exit_step))
    return outs, cache


def test_a_one_step_chunk_writes_its_context_with_a_kv_only_pass():
    net = RecordingDiT(random_dit("tiny-unet"))
    sampler = diagonal_sampler([4, 3, 1])
    outs, cache = run_stream(net, sampler, 4)
    per_chunk = net.per_chunk()
    assert [len(ts) for ts in per_chunk] == [4, 3, 2, 2]  # the 1-step chunks: one step + the context pass
    assert [ts[-1] for ts in per_chunk] == [CONTEXT_NOISE] * 4
    assert per_chunk[2][0] == 1000.0  # the one step starts from pure noise
    assert net.context_only == [False] * 7 + [False, True] * 2  # only the extra pass stops after the K/V
    assert [o.timesteps for o in outs[2:]] == [[1000, 100]] * 2 == [sampler.timesteps(2)] * 2
    assert [o.nfe for o in outs] == [sampler.nfe(i) for i in range(4)] == [4, 3, 2, 2]
    assert [sampler.context_pass(i) for i in range(4)] == [False, False, True, True]
    held = cache.inputs.t[0, : cache.n_ctx]
    assert torch.equal(held, torch.full_like(held, CONTEXT_NOISE))


def test_a_one_step_chunk_is_a_training_rollout_exiting_at_its_first_step():
    """4-3-1 at inference computes what DMD trains when a 4-3-2 rollout exits at step 0 of its steady
    chunks (model/training/distill.py): the same output and the same context in the cache."""
    net = random_dit("tiny-unet")
    inference, cache_a = run_stream(net, diagonal_sampler([4, 3, 1]), 4)
    training, cache_b = run_stream(net, diagonal_sampler([4, 3, 2]), 4, exit_steps=[None, None, 0, 0])
    for a, b in zip(inference, training):
        assert torch.equal(a.latents, b.latents)
    assert_same_cache(cache_a, cache_b)


def test_refresh_passes_are_kv_only_and_change_nothing():
    """The uniform sampler's clean refresh now stops after the K/V; its chunks are what they were."""
    net = RecordingDiT(random_dit("tiny-unet"))
    outs, cache = run_stream(net, uniform_sampler(2), 3)
    assert net.context_only == [False, False, True] * 3
    ref_outs, ref_cache = run_stream(_AlwaysFull(random_dit("tiny-unet")), uniform_sampler(2), 3)
    for a, b in zip(outs, ref_outs):
        assert torch.equal(a.latents, b.latents)
    assert_same_cache(cache, ref_cache)


class _AlwaysFull(torch.nn.Module):
    """A network that ignores context_only: every pass runs to the velocity (the behaviour before)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, x, t, actions, text, text_mask, cache=None, drop_actions=None, context_only=False):
        v = self.inner(x, t, actions, text, text_mask, cache, drop_actions)
        return None if context_only else v

    def new_cache(self):
        return self.inner.new_cache()
