"""Distillation objectives: DMD and flow DMD carry gradient to the generator (through a real
self-forcing rollout), the critic trains on detached samples, the ODE regression's inputs."""

from __future__ import annotations

import pytest
import torch

from model.diffusion.samplers import diagonal_grid, make_sampler
from model.runtime.stream import Conditioning
from model.training.distill import (
    DMDConfig,
    critic_loss,
    dmd_gradient,
    dmd_loss,
    flow_dmd_loss,
    flow_regression_loss,
    generator_losses,
    ode_regression_loss,
    sample_dmd_levels,
    self_forcing_rollout,
    temporal_diff,
)
from tests.helpers import RecordingDiT, random_dit

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


B, CHUNKS = 2, 2


@pytest.fixture(scope="module")
def nets():
    """(generator, teacher, critic): tiny DiTs with different weights; the generator trains."""
    generator = random_dit(seed=0).requires_grad_(True)
    teacher = random_dit(seed=1).requires_grad_(False)
    critic = random_dit(seed=2).requires_grad_(True)
    return generator, teacher, critic


def batch(cfg, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    Fr = CHUNKS * cfg.chunk_frames
    actions = (torch.rand(B, Fr, cfg.action_dim, generator=g) > 0.7).float()
    text, mask = torch.randn(B, 4, cfg.text_dim, generator=g), torch.ones(B, 4, dtype=torch.bool)
    noise = torch.randn(B, Fr, *cfg.latent_shape, generator=g)
    teacher_x = torch.randn(B, Fr, *cfg.latent_shape, generator=g)
    return actions, text, mask, noise, teacher_x


def rollout(generator, sampler, actions, text, mask, noise, exits, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cond = Conditioning.build(text, mask, False)
    return self_forcing_rollout(generator, sampler, cond, actions, noise, exits,
                                lambda s: torch.randn(s, generator=gen))


def grads(module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.grad is not None and p.grad.abs().sum() > 0]


def test_dmd_loss_gradient_is_the_normalised_score_difference():
    x = torch.randn(2, 3, 4, 2, 2, requires_grad=True)
    x0_real, x0_fake = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    grad = dmd_gradient(x, x0_fake, x0_real)
    norm = (x.detach() - x0_real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    assert torch.allclose(grad, (x0_fake - x0_real) / norm)
    dmd_loss(x, grad).backward()
    assert torch.allclose(x.grad, grad / x.numel(), atol=1e-7)  # 0.5 mse(x, sg(x - grad))


def test_flow_dmd_gradient_moves_temporal_differences():
    x = torch.randn(2, 6, 4, 2, 2, requires_grad=True)
    x0_real, x0_fake = torch.randn(2, 6, 4, 2, 2), torch.randn(2, 6, 4, 2, 2)
    flow_dmd_loss(x, x0_fake, x0_real, weight=4.0).backward()
    dx = temporal_diff(x.detach())
    dx_fake, dx_real = temporal_diff(x0_fake), temporal_diff(x0_real)
    g = (dx_fake - dx_real) / (dx - dx_real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    d_dx = 2 * 4.0 * g / dx.numel()  # d/d(dx) of mean(w (dx - sg(dx - g))^2)
    expected = torch.zeros_like(x)
    expected[:, 1:] += d_dx
    expected[:, :-1] -= d_dx
    assert torch.allclose(x.grad, expected, atol=1e-6)
    x.grad = None
    flow_dmd_loss(x, x0_real, x0_real, weight=4.0).backward()  # fake == real: nothing to match
    assert x.grad.abs().max() == 0


def test_levels_are_shifted_and_clamped():
    s = sample_dmd_levels(4096, 3.0, DMDConfig(), torch.Generator().manual_seed(0))
    assert s.min() >= 0.02 and s.max() <= 0.98 and s.median() > 0.5  # shift 3 favours noise


@pytest.mark.parametrize("term", ["dmd", "flow_dmd", "flow_regression", "total"])
def test_every_generator_loss_reaches_the_generator(nets, term):
    """Through the real diagonal rollout: exit forwards carry gradient into the generator."""
    generator, teacher, critic = nets
    cfg = generator.config
    actions, text, mask, noise, teacher_x = batch(cfg)
    sampler = make_sampler("diagonal", schedule=[3, 2])
    generator.zero_grad(set_to_none=True)
    critic.zero_grad(set_to_none=True)
    x = rollout(generator, sampler, actions, text, mask, noise, exits=[1, 0]).latents
    assert x.requires_grad
    losses = generator_losses(x, teacher, critic, actions, text, mask, teacher_x, 3.0, DMDConfig(),
                              torch.Generator().manual_seed(0))
    getattr(losses, term).backward()
    assert torch.isfinite(getattr(losses, term)) and getattr(losses, term) > 0
    assert len(grads(generator)) > 0.5 * len(list(generator.parameters()))
    assert not grads(critic)  # the fake score only scores here


def test_flow_terms_change_what_the_generator_learns(nets):
    generator, teacher, critic = nets
    actions, text, mask, noise, teacher_x = batch(generator.config)
    sampler = make_sampler("diagonal", schedule=[3, 2])
    by_weight = []
    for flow in (0.0, 4.0):
        generator.zero_grad(set_to_none=True)
        x = rollout(generator, sampler, actions, text, mask, noise, exits=[2, 1]).latents
        cfg = DMDConfig(flow_weight=flow, flow_regression_weight=flow)
        generator_losses(x, teacher, critic, actions, text, mask, teacher_x, 3.0, cfg,
                         torch.Generator().manual_seed(0)).total.backward()
        by_weight.append(generator.final.weight.grad.clone())
    assert not torch.allclose(by_weight[0], by_weight[1])


def test_critic_learns_from_detached_samples(nets):
    generator, _, critic = nets
    actions, text, mask, noise, _ = batch(generator.config)
    generator.zero_grad(set_to_none=True)
    critic.zero_grad(set_to_none=True)
    x = rollout(generator, make_sampler("diagonal", schedule=[2]), actions, text, mask, noise, exits=[1, 1]).latents
    loss = critic_loss(critic, x, actions, text, mask, 3.0, DMDConfig(), torch.Generator().manual_seed(0))
    loss.backward()
    assert grads(critic) and not grads(generator)


def test_rollout_gradient_only_through_exit_forwards(nets):
    generator, _, _ = nets
    actions, text, mask, noise, _ = batch(generator.config)
    sampler = make_sampler("diagonal", schedule=[3, 2])
    with torch.no_grad():
        assert not rollout(generator, sampler, actions, text, mask, noise, exits=[2, 1]).latents.requires_grad
    roll = rollout(generator, sampler, actions, text, mask, noise, exits=[2, 1])
    assert roll.latents.requires_grad and roll.nfe == 3 + 2  # no context pass: both exits are last steps
    assert torch.equal(roll.context_t, torch.full_like(roll.context_t, 100.0))
    generator.zero_grad(set_to_none=True)
    roll.latents[:, 3:].sum().backward()  # chunk 1 alone: its exit forward, context detached
    assert grads(generator)


def test_ode_regression_inputs_follow_the_diagonal_schedule():
    student = RecordingDiT(random_dit(seed=4).requires_grad_(True))
    calls = []
    student.forward = lambda x, t, *a, **k: calls.append(t.clone()) or student.dit(x, t, *a, **k)
    cfg = student.config
    sampler = make_sampler("diagonal", schedule=[4, 3, 2], context_noise=100)
    grid = diagonal_grid(3.0, 100)
    g = torch.Generator().manual_seed(0)
    Fr = 3 * cfg.chunk_frames
    states = torch.randn(B, len(grid), Fr, *cfg.latent_shape, generator=g)
    x0 = torch.randn(B, Fr, *cfg.latent_shape, generator=g)
    actions, text, mask = torch.zeros(B, Fr, cfg.action_dim), torch.randn(B, 4, cfg.text_dim), torch.ones(B, 4).bool()
    for seed in range(6):
        loss = ode_regression_loss(student, states, x0, grid, sampler, actions, text, mask,
                                   torch.Generator().manual_seed(seed))
        loss.backward()
        t = calls[-1]
        n = t.shape[1] // cfg.chunk_frames
        assert torch.all(t[:, : (n - 1) * cfg.chunk_frames] == 100)  # context chunks at the context level
        last = {round(float(v)) for v in t[:, -1]}
        assert last <= set(sampler.timesteps(n - 1))  # the last chunk at one of its own step levels
    assert grads(student.dit)
    with pytest.raises(ValueError, match="not on the ODE-pair grid"):
        ode_regression_loss(student, states, x0, diagonal_grid(3.0, 300), sampler, actions, text, mask,
                            torch.Generator().manual_seed(0))


def test_flow_regression_is_zero_for_the_teacher_motion():
    x = torch.randn(2, 6, 4, 2, 2)
    # an offset has the same temporal differences; reversed time does not
    assert flow_regression_loss(x + 3.0, x) < 1e-10 < flow_regression_loss(x.flip(1), x)
