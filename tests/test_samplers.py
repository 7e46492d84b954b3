"""Flow maths, sampler schedules and validation, and exact NFE bookkeeping of the streaming loop."""

from __future__ import annotations

import pytest
import torch

from model.diffusion.flow import add_noise, level_grid, predict_x0, shift_level, velocity_target
from model.diffusion.samplers import diagonal_sampler, make_sampler, teacher_sampler, uniform_sampler
from model.runtime.stream import Conditioning, generate_chunk
from tests.helpers import random_dit

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_flow_round_trip_and_shift():
    x0, eps = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    s = torch.rand(2, 3)
    xs = add_noise(x0, eps, s)
    assert torch.allclose(predict_x0(xs, velocity_target(x0, eps), s), x0, atol=1e-5)
    assert shift_level(0.0, 3.0) == 0.0 and shift_level(1.0, 3.0) == 1.0
    assert shift_level(0.5, 3.0) == pytest.approx(0.75)  # k s / (1 + (k - 1) s)
    assert level_grid(4, 1.0) == (1.0, 0.75, 0.5, 0.25)


def test_schedules():
    assert uniform_sampler(shift=1.0).levels(0) == (1.0, 0.75, 0.5, 0.25)  # Self-Forcing [1000, 750, 500, 250]
    diag = diagonal_sampler((4, 3, 2), shift=1.0)
    assert [diag.steps(i) for i in range(6)] == [4, 3, 2, 2, 2, 2]
    # every chunk ends on the context level (default t = 100); the grid is even before the shift
    assert diag.levels(1) == pytest.approx((1.0, 0.4, 0.1)) and diag.levels(5) == pytest.approx((1.0, 0.1))
    assert sum(diag.nfe(i) for i in range(7)) == 17  # docs/design.md §3: 17 NFE over 7 chunks
    assert sum(uniform_sampler().nfe(i) for i in range(7)) == 35  # ... against Self-Forcing's 35
    teacher = teacher_sampler(32, guidance=3.0)
    assert teacher.nfe(0) == 2 * 33 and teacher.timesteps(0)[0] == 1000 and teacher.timesteps(0)[-1] == 0


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: diagonal_sampler([]), "non-empty"),
        (lambda: diagonal_sampler([4, 0]), r"schedule\[1\]"),
        (lambda: diagonal_sampler([4, -2]), "positive"),
        (lambda: diagonal_sampler([33, 3]), r"schedule\[0\]=33 is more steps than the teacher's grid"),
        (lambda: diagonal_sampler([2.5]), "whole number"),
        (lambda: uniform_sampler(0), "positive"),
        (lambda: uniform_sampler(8), "more than"),
        (lambda: teacher_sampler(0), "positive"),
        (lambda: make_sampler("fancy"), "unknown sampler"),
        (lambda: make_sampler("diagonal", steps=3), "schedule"),
        (lambda: make_sampler("teacher", schedule=[4, 2]), "not a per-chunk schedule"),
        (lambda: make_sampler("teacher", guidance=-1.0), "guidance"),
    ],
)

def test_bad_schedules_are_refused_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()


class CountingDiT(torch.nn.Module):
    """Wraps a DiT and counts evaluated rows (a batched cond + uncond forward is 2)."""

    def __init__(self, dit):
        super().__init__()
        self.dit, self.rows, self.config = dit, 0, dit.config

    def forward(self, x, *args, **kwargs):
        self.rows += x.shape[0]
        return self.dit(x, *args, **kwargs)

    def new_cache(self):
        return self.dit.new_cache()


@pytest.mark.parametrize(
    "sampler, expected",
    [
        (teacher_sampler(6, guidance=3.0), [14, 14, 14]),
        (uniform_sampler(4), [5, 5, 5]),
        (diagonal_sampler([4, 3, 2]), [4, 3, 2]),
        (diagonal_sampler([2], guidance=2.0), [4, 4, 4]),
    ],
)
def test_reported_nfe_matches_network_evaluations(sampler, expected):
    net = CountingDiT(random_dit())
    cfg = net.config
    cache = net.new_cache()
    text, mask = torch.randn(1, 4, cfg.text_dim), torch.ones(1, 4, dtype=torch.bool)
    cond = Conditioning.build(text, mask, sampler.guidance > 0)
    gen = torch.Generator().manual_seed(0)
    actions = torch.zeros(1, cfg.chunk_frames, cfg.action_dim)
    with torch.no_grad():
        for want in expected:
            before = net.rows
            out = generate_chunk(net, cache, sampler, cond, actions, lambda shape: torch.randn(shape, generator=gen))
            assert out.nfe == net.rows - before == want
            assert out.steps == len(out.timesteps) - int(sampler.refresh)
            assert out.latents.shape == (1, cfg.chunk_frames, *cfg.latent_shape)


def test_cache_holds_kv_of_the_last_input():
    """Refresh samplers leave clean (t = 0) K/V; the diagonal one the last noisy level's."""
    net = random_dit()
    cfg = net.config
    text, mask = torch.randn(1, 4, cfg.text_dim), torch.ones(1, 4, dtype=torch.bool)
    actions = torch.zeros(1, cfg.chunk_frames, cfg.action_dim)
    for sampler, level in ((uniform_sampler(), 0.0), (diagonal_sampler([4, 3, 2]), diagonal_sampler().context_level)):
        cache = net.new_cache()
        cond = Conditioning.build(text, mask, False)
        with torch.no_grad():
            generate_chunk(net, cache, sampler, cond, actions, lambda shape: torch.randn(shape))
        assert torch.allclose(cache.inputs.t[0, :3], torch.full((3,), 1000 * level))


def test_exit_step_gradient_only_through_the_exit_forward():
    net = random_dit()
    cfg = net.config
    cache = net.new_cache()
    text, mask = torch.randn(1, 4, cfg.text_dim), torch.ones(1, 4, dtype=torch.bool)
    cond = Conditioning.build(text, mask, False)
    actions = torch.zeros(1, cfg.chunk_frames, cfg.action_dim)
    out = generate_chunk(net, cache, uniform_sampler(), cond, actions, lambda s: torch.randn(s), exit_step=1)
    assert out.steps == 2 and out.nfe == 3 and out.latents.requires_grad
    out.latents.square().mean().backward()
    assert net.final.weight.grad is not None and cache.chunk_index == 1
    assert not any(k.requires_grad for k in cache.k)
