"""The world networks' shared rules, for the patch DiT and the U-Net: shapes, causality, streaming ==
full sequence, text cache, adaLN-Zero."""

from __future__ import annotations

import pytest
import torch

from model.nets import count_parameters
from model.nets.families import build_net, net_config
from model.nets.kv_cache import context_frame_ids
from tests.helpers import TOL, inputs, random_dit, stream

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_shapes_and_presets():
    model = random_dit()
    x, t, a, text, mask = inputs(model.config, 2, 2)
    with torch.no_grad():
        v = model(x, t, a, text, mask)
    assert v.shape == x.shape and v.dtype == torch.float32
    default = build_net(net_config("default"))
    # fp16 release file <= 16 MiB (docs/design.md §5) and within the 5-15M parameters the design sizes it for
    assert 5e6 < count_parameters(default) and count_parameters(default) * 2 < 16 * 2**20


def test_untrained_network_predicts_zero():
    model = build_net(net_config("tiny"))  # adaLN-Zero: gates and output layer start at 0
    x, t, a, text, mask = inputs(model.config, 1, 1)
    with torch.no_grad():
        assert torch.count_nonzero(model(x, t, a, text, mask)) == 0


# The patch DiT (model/nets/dit.py) and the U-Net (model/nets/unet.py) obey the same causal rules;
# conv arithmetic sums more terms, hence its looser float tolerance.
PRESETS = {"tiny": 1e-6, "tiny-unet": 1e-5}


@pytest.mark.parametrize("preset", PRESETS)
def test_later_chunks_never_change_earlier_outputs(preset):
    model = random_dit(preset)
    x, t, a, text, mask = inputs(model.config, 2, 4)
    with torch.no_grad():
        base = model(x, t, a, text, mask)
        x2, t2, a2 = x.clone(), t.clone(), a.clone()
        x2[:, 6:] += 1.0
        t2[:, 6:] = 17.0
        a2[:, 6:] = -a2[:, 6:]
        changed = model(x2, t2, a2, text, mask)
    assert torch.allclose(base[:, :6], changed[:, :6], atol=PRESETS[preset])  # chunks 0 and 1 untouched
    assert not torch.allclose(base[:, 6:], changed[:, 6:], atol=1e-3)


def test_frames_inside_a_chunk_see_each_other():
    model = random_dit()
    x, t, a, text, mask = inputs(model.config, 1, 1)
    with torch.no_grad():
        base = model(x, t, a, text, mask)
        x2 = x.clone()
        x2[:, 2] += 1.0  # the last frame of the chunk changes the first one (bidirectional)
        assert not torch.allclose(base[:, 0], model(x2, t, a, text, mask)[:, 0], atol=1e-4)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("n_chunks", [1, 2, 7])
def test_streaming_with_cache_equals_full_sequence(preset, n_chunks):
    # 7 chunks = 21 frames > sink 3 + window 9: exercises eviction, window-relative RoPE and, for
    # the conv stems, the stacked previous frames after eviction.
    model = random_dit(preset)
    x, t, a, text, mask = inputs(model.config, 2, n_chunks)
    drop = torch.tensor([False, True])
    with torch.no_grad():
        full = model(x, t, a, text, mask, drop_actions=drop)
        streamed, held = stream(model, x, t, a, text, mask, drop)
    assert (full - streamed).abs().max() < TOL
    for i, ids in enumerate(held):
        assert ids == context_frame_ids(i, model.layout)


def test_streaming_equals_full_sequence_for_other_window_sizes():
    model = random_dit(sink_frames=6, window_frames=6)
    x, t, a, text, mask = inputs(model.config, 1, 6)
    with torch.no_grad():
        full = model(x, t, a, text, mask)
        streamed, _ = stream(model, x, t, a, text, mask)
    assert (full - streamed).abs().max() < TOL


def test_long_stream_memory_is_bounded():
    model = random_dit()
    cfg = model.config
    cache = model.new_cache()
    x, t, a, text, mask = inputs(cfg, 1, 1)
    sizes = []
    with torch.no_grad():
        for _ in range(20):  # 60 frames: far beyond any absolute RoPE table of 12 frames
            v = model(x, t, a, text, mask, cache)
            cache.commit_chunk()
            sizes.append(cache.nbytes())
    assert torch.isfinite(v).all()
    assert len(set(sizes)) == 1 and cache.n_ctx == cfg.sink_frames + cfg.window_frames - cfg.chunk_frames
    assert cache.frame_ids[:3] == [0, 1, 2] and cache.frame_ids[-1] == 59


def test_text_cache_built_once_per_prompt_and_reset_on_switch():
    model = random_dit()
    x, t, a, text, mask = inputs(model.config, 1, 1)
    other = torch.randn_like(text)
    cache = model.new_cache()
    with torch.no_grad():
        first = model(x, t, a, text, mask, cache)
        again = model(x, t, a, text, mask, cache)  # same slot rewritten, same prompt: cached K/V
        assert cache.text_builds == 1 and torch.allclose(first, again)
        cache.reset_text()
        switched = model(x, t, a, other, mask, cache)
    assert cache.text_builds == 2 and cache.text_source is other
    assert not torch.allclose(first, switched, atol=1e-4)


def test_dropped_prompt_ignores_the_text():
    model = random_dit()
    x, t, a, text, _ = inputs(model.config, 1, 1)
    none = torch.zeros(1, text.shape[1], dtype=torch.bool)
    with torch.no_grad():
        u1 = model(x, t, a, text, none)
        u2 = model(x, t, a, torch.randn_like(text), none)
    assert torch.allclose(u1, u2, atol=1e-6)


def test_dropped_actions_ignore_the_actions():
    model = random_dit()
    x, t, a, text, mask = inputs(model.config, 1, 1)
    drop = torch.tensor([True])
    with torch.no_grad():
        assert torch.allclose(model(x, t, a, text, mask, drop_actions=drop),
                              model(x, t, -a, text, mask, drop_actions=drop), atol=1e-6)
        assert not torch.allclose(model(x, t, a, text, mask), model(x, t, -a, text, mask), atol=1e-4)


def test_gradients_reach_every_parameter():
    model = random_dit().train()
    x, t, a, text, mask = inputs(model.config, 2, 2)
    model(x, t, a, text, mask, drop_actions=torch.tensor([False, True])).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
