"""The causal conv U-Net (model/nets/unet.py): shapes, action planes, stacked copy frames, batched
streams, the prompt's FiLM. Causality and streaming == full sequence for the U-Net are in
tests/test_dit.py, beside the patch DiT's (the rules every WorldNet shares)."""

from __future__ import annotations

import pytest
import torch

from model.diffusion.samplers import make_sampler
from model.nets import count_parameters
from model.nets.cache_batch import CacheBatch, Member
from model.nets.families import build_net, net_config
from model.nets.unet import CausalUNet, action_planes
from model.runtime.stream import Conditioning, generate_chunk
from model.training.teacher import TeacherTrainConfig, fresh_dit_config
from tests.helpers import TOL, inputs, random_dit, stream

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

def test_the_shipped_preset_fits_the_release_file():
    model = build_net(net_config("unet"))
    assert isinstance(model, CausalUNet)
    # fp16 release file <= 16 MiB (docs/design.md §5)
    assert 4e6 < count_parameters(model) and count_parameters(model) * 2 < 16 * 2**20


def test_fresh_unet_predicts_zero_and_keeps_shapes():
    model = build_net(net_config("tiny-unet"))
    x, t, a, text, mask = inputs(model.config, 2, 2)
    with torch.no_grad():
        v = model(x, t, a, text, mask)
    assert v.shape == x.shape
    assert torch.count_nonzero(v) == 0  # output conv starts at zero: warm starts and fresh runs begin silent


def test_stacked_copy_frames_are_the_frames_before_the_chunk():
    model = random_dit("tiny-unet")  # copy_frames 3
    x, *_ = inputs(model.config, 1, 3)
    prev = model.previous_frames(x, None)  # [B, F, 3 * c, h, w]
    c = model.config.latent_channels
    assert prev.shape[2] == 3 * c
    assert torch.count_nonzero(prev[:, :3]) == 0  # the sink chunk has no predecessor
    for chunk in (1, 2):
        for f in range(3):
            for k in range(3):  # oldest first: frames 3*chunk - 3 .. 3*chunk - 1
                assert torch.equal(prev[:, 3 * chunk + f, k * c : (k + 1) * c], x[:, 3 * chunk - 3 + k])


def test_copy_frames_stack_matches_a_stream_shorter_than_the_stack():
    """copy_frames 6 > one chunk: after chunk 0 the cache holds 3 frames, the other 3 are zeros, as in
    the full-sequence forward (frames before the stream are zero there too)."""
    model = random_dit("tiny-unet", copy_frames=6)
    x, t, a, text, mask = inputs(model.config, 1, 4)
    with torch.no_grad():
        full = model(x, t, a, text, mask)
        streamed, _ = stream(model, x, t, a, text, mask)
    assert (full - streamed).abs().max() < TOL


def test_action_planes_hold_own_action_and_chunk_running_sum():
    a = torch.arange(2 * 6 * 2, dtype=torch.float32).reshape(2, 6, 2)
    planes = action_planes(a, 3)
    assert torch.equal(planes[..., :2], a)
    assert torch.equal(planes[:, 0, 2:], a[:, 0])
    assert torch.equal(planes[:, 2, 2:], a[:, 0] + a[:, 1] + a[:, 2])
    assert torch.equal(planes[:, 3, 2:], a[:, 3])  # a new chunk starts its own sum


def test_actions_change_the_output_and_a_dropped_clip_ignores_them():
    model = random_dit("tiny-unet")
    x, t, a, text, mask = inputs(model.config, 2, 2)
    drop = torch.tensor([False, True])
    with torch.no_grad():
        base = model(x, t, a, text, mask, drop_actions=drop)
        other = model(x, t, torch.randn_like(a), text, mask, drop_actions=drop)
    assert not torch.allclose(base[0], other[0], atol=1e-4)
    assert torch.allclose(base[1], other[1], atol=1e-6)


@pytest.mark.parametrize("overrides", [{}, {"text_film": True, "action_tokens": True}])
def test_gradients_reach_every_parameter(overrides):
    model = random_dit("tiny-unet", **overrides).train()
    x, t, a, text, mask = inputs(model.config, 2, 2)
    model(x, t, a, text, mask, drop_actions=torch.tensor([False, True])).square().mean().backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not silent, silent


def test_batched_streams_equal_streams_one_by_one():
    """The worker batches players' chunks (CacheBatch): each row group reads its own stacked frames."""
    model = random_dit("tiny-unet")
    cfg = model.config
    C = cfg.chunk_frames
    xs, ts, acts, texts, masks = inputs(cfg, 2, 3)
    caches_one = [model.new_cache(), model.new_cache()]
    caches_batch = [model.new_cache(), model.new_cache()]
    with torch.no_grad():
        for i in range(3):
            s = slice(i * C, (i + 1) * C)
            alone = [model(xs[b : b + 1, s], ts[b : b + 1, s], acts[b : b + 1, s], texts[b : b + 1],
                           masks[b : b + 1], caches_one[b]) for b in range(2)]  # fmt: skip
            batch = CacheBatch([Member(caches_batch[b], texts[b : b + 1], masks[b : b + 1]) for b in range(2)])
            together = model(xs[:, s], ts[:, s], acts[:, s], None, None, batch)
            for cache in caches_one + caches_batch:
                cache.commit_chunk()
            assert (torch.cat(alone) - together).abs().max() < TOL


@pytest.mark.parametrize("sampler_name", ["uniform", "diagonal", "teacher"])
def test_conv_world_streams_through_every_sampler(sampler_name):
    model = random_dit("tiny-unet")
    cfg = model.config
    sampler = make_sampler(sampler_name, steps=3) if sampler_name != "diagonal" else make_sampler("diagonal")
    cache = model.new_cache()
    text, mask = torch.randn(1, 4, cfg.text_dim), torch.ones(1, 4, dtype=torch.bool)
    cond = Conditioning.build(text, mask, sampler.guidance > 0)
    gen = torch.Generator().manual_seed(0)
    actions = torch.zeros(1, cfg.chunk_frames, cfg.action_dim)
    with torch.no_grad():
        outs = [generate_chunk(model, cache, sampler, cond, actions, lambda s: torch.randn(s, generator=gen))
                for _ in range(5)]  # fmt: skip
    assert all(o.latents.shape == (1, cfg.chunk_frames, *cfg.latent_shape) for o in outs)
    assert all(torch.isfinite(o.latents).all() for o in outs)
    assert cache.next_frame == 5 * cfg.chunk_frames


# ----------------------------------------------------------------------------- the prompt's FiLM on the conv blocks


def film_dit() -> CausalUNet:
    return random_dit("tiny-unet", text_film=True)


def test_text_film_reaches_the_conv_blocks_and_a_dropped_prompt_ignores_the_text():
    model = film_dit()
    x, t, a, text, mask = inputs(model.config, 1, 2)
    none = torch.zeros_like(mask)
    with torch.no_grad():
        assert not torch.allclose(model(x, t, a, text, mask), model(x, t, a, -text, mask), atol=1e-4)
        # The FiLM alone moves the output: the same network with the film silenced differs.
        with_film = model(x, t, a, text, mask)
        model.text_film.weight.zero_()
        model.text_film.bias.zero_()
        assert not torch.allclose(with_film, model(x, t, a, text, mask), atol=1e-4)
    model = film_dit()
    with torch.no_grad():
        assert torch.allclose(model(x, t, a, text, none), model(x, t, a, torch.randn_like(text), none), atol=1e-6)


def test_text_film_streams_and_batches_as_the_full_sequence():
    model = film_dit()
    cfg = model.config
    x, t, a, text, mask = inputs(cfg, 2, 4)  # the two rows' prompts differ in length too
    with torch.no_grad():
        full = model(x, t, a, text, mask)
        streamed, _ = stream(model, x, t, a, text, mask)
        caches = [model.new_cache(), model.new_cache()]
        prompts = [(text[b : b + 1], mask[b : b + 1]) for b in range(2)]  # one tensor per prompt, as a session holds it
        together = []
        for i in range(4):
            s = slice(i * cfg.chunk_frames, (i + 1) * cfg.chunk_frames)
            batch = CacheBatch([Member(caches[b], *prompts[b]) for b in range(2)])
            together.append(model(x[:, s], t[:, s], a[:, s], None, None, batch))
            for cache in caches:
                cache.commit_chunk()
    assert (full - streamed).abs().max() < TOL
    assert (full - torch.cat(together, 1)).abs().max() < TOL
    assert caches[0].text_builds == 1  # built once per prompt, FiLM included


def test_text_film_needs_a_unet_preset():
    with pytest.raises(ValueError, match="text_film"):
        fresh_dit_config(TeacherTrainConfig(preset="tiny", text_film=True))
