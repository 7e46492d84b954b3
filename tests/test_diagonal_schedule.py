"""The diagonal schedule: per-chunk steps and timesteps, the context level, no refresh pass, refusal
of unworkable schedules at construction, and one context noise for training and inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.diffusion.samplers import (
    CONTEXT_NOISE,
    FEW_STEP_GRID,
    diagonal_grid,
    diagonal_sampler,
    make_sampler,
    parse_schedule,
    uniform_sampler,
)
from model.runtime.stream import Conditioning, generate_chunk
from model.runtime.world_model import load_world_model, make_random_world
from model.training.distill import sample_exits, self_forcing_rollout
from tests.helpers import RecordingDiT, random_dit
from world.actions import Action
from world.backend import BackendError
from world.backends.registry import create_backend

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py



def conditioning(cfg, batch: int = 1) -> Conditioning:
    text, mask = torch.randn(batch, 4, cfg.text_dim), torch.ones(batch, 4, dtype=torch.bool)
    return Conditioning.build(text, mask, False)


def stream_chunks(net, sampler, n: int) -> list:
    cache, cond = net.new_cache(), conditioning(net.config)
    gen = torch.Generator().manual_seed(0)
    actions = torch.zeros(1, net.config.chunk_frames, net.config.action_dim)
    with torch.no_grad():
        return [generate_chunk(net, cache, sampler, cond, actions, lambda s: torch.randn(s, generator=gen))
                for _ in range(n)], cache


def test_bookkeeping_of_the_default_schedule():
    diag, uni = diagonal_sampler(), uniform_sampler()
    assert [diag.steps(i) for i in range(7)] == [4, 3, 2, 2, 2, 2, 2]
    assert [diag.nfe(i) for i in range(7)] == [4, 3, 2, 2, 2, 2, 2]
    assert sum(diag.nfe(i) for i in range(7)) == 17 and sum(uni.nfe(i) for i in range(7)) == 35
    assert diag.context_noise == CONTEXT_NOISE == 100
    assert diag.timesteps(0) == [1000, 864, 625, 100]  # shift 3: 4 levels, even before the shift
    assert diag.timesteps(1) == [1000, 625, 100] and diag.timesteps(6) == [1000, 100]
    assert uni.timesteps(0)[-1] == 0 and uni.context_noise == 0  # Self-Forcing: refresh writes clean K/V
    for i in range(7):  # the last forward of every chunk runs at the context level
        assert diag.levels(i)[-1] == diag.context_level == pytest.approx(0.1)
    assert diag.describe()["context_noise"] == 100


def test_configurable_schedule_and_context_noise():
    diag = make_sampler("diagonal", schedule=[3, 3, 2, 4], context_noise=199)
    assert [diag.steps(i) for i in range(6)] == [3, 3, 2, 4, 4, 4]
    assert all(diag.timesteps(i)[-1] == 199 for i in range(6))
    assert all(diag.timesteps(i)[0] == 1000 for i in range(6))
    grid = set(diag.levels(3))
    assert all(set(diag.levels(i)) <= grid for i in range(3))  # every chunk uses levels of the one grid


# diagonal_grid(3.0) and diagonal_grid(1.0) before the grid size became a parameter: ODE pairs,
# training and the default 4-3-2 sampler depend on these exact values.
OLD_GRID_SHIFT_3 = (1.0, 0.8636363636363635, 0.6249999999999999, 0.1)
OLD_GRID_SHIFT_1 = (1.0, 0.7, 0.4, 0.1)


def test_the_default_grid_is_unchanged():
    assert diagonal_grid(3.0) == diagonal_grid(3.0, CONTEXT_NOISE, FEW_STEP_GRID) == OLD_GRID_SHIFT_3  # bit for bit
    assert diagonal_grid(1.0) == OLD_GRID_SHIFT_1
    assert diagonal_sampler().levels(0) == OLD_GRID_SHIFT_3
    assert diagonal_sampler([4, 3, 2, 4]).levels(3) == OLD_GRID_SHIFT_3  # max 4: still the distilled grid


def test_a_schedule_longer_than_the_distilled_grid_runs_on_a_finer_one():
    """The paper figure's 5-4-3-2: a 5-level grid (an inference-time ablation, see model/diffusion/samplers.py)."""
    diag = make_sampler("diagonal", schedule=[5, 4, 3, 2])
    grid = diagonal_grid(3.0, CONTEXT_NOISE, 5)
    assert len(grid) == 5 and grid[0] == 1.0 and grid[-1] == pytest.approx(0.1)
    assert [diag.steps(i) for i in range(6)] == [5, 4, 3, 2, 2, 2]
    assert [diag.nfe(i) for i in range(5)] == [5, 4, 3, 2, 2]
    assert diag.levels(0) == grid and diag.levels(1) == (grid[0], *grid[2:]) and diag.levels(3) == (1.0, grid[-1])
    assert diag.timesteps(0) == [1000, 904, 763, 534, 100]  # shift 3, even before the shift
    for i in range(6):  # every chunk still ends on the context level: the K/V it leaves is unchanged
        assert diag.levels(i)[-1] == diag.context_level and diag.timesteps(i)[-1] == CONTEXT_NOISE
    assert diag.levels(1) != diagonal_sampler().levels(0)  # its 4-step chunk is not the distilled one
    assert make_sampler("diagonal", schedule=[32, 2]).steps(0) == 32  # as fine as the teacher, no finer
    with pytest.raises(ValueError, match=r"schedule\[0\]=33 is more steps than the teacher's grid"):
        make_sampler("diagonal", schedule=[33])
    with pytest.raises(ValueError, match="grid size"):
        diagonal_grid(3.0, CONTEXT_NOISE, 1)


def test_a_long_schedule_streams_with_the_steps_it_reports():
    net = RecordingDiT(random_dit())
    outs, _ = stream_chunks(net, diagonal_sampler([5, 4, 3, 2]), 5)
    assert [len(ts) for ts in net.per_chunk()] == [5, 4, 3, 2, 2] == [o.nfe for o in outs]
    assert [ts[-1] for ts in net.per_chunk()] == [CONTEXT_NOISE] * 5


def test_schedule_strings():
    assert parse_schedule("5, 4,3,2") == [5, 4, 3, 2]
    for bad, message in (("", "non-empty"), ("4,,2", "comma-separated"), ("4.5", "comma-separated")):
        with pytest.raises(ValueError, match=message):
            parse_schedule(bad)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: diagonal_sampler([]), "non-empty"),
        (lambda: diagonal_sampler([0]), "positive"),
        (lambda: diagonal_sampler([3, -1]), "positive"),
        (lambda: diagonal_sampler([4, 33]), r"schedule\[1\]=33 is more steps than the teacher's grid"),
        (lambda: diagonal_sampler([4, True]), r"schedule\[1\] must be a positive whole number"),
        (lambda: diagonal_sampler([4, 3.0]), r"schedule\[1\] must be a positive whole number"),
        (lambda: diagonal_sampler("432"), "non-empty list"),
        (lambda: diagonal_sampler(4), "non-empty list"),
        (lambda: diagonal_sampler(context_noise=0), "context_noise"),
        (lambda: diagonal_sampler(context_noise=1000), "context_noise"),
        (lambda: diagonal_sampler(context_noise=-5), "context_noise"),
        (lambda: diagonal_sampler(context_noise="100"), "context_noise"),
        (lambda: make_sampler("uniform", context_noise=100), "option of 'diagonal'"),
        (lambda: make_sampler("teacher", context_noise=100), "option of 'diagonal'"),
    ],
)
def test_unworkable_schedules_are_refused_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_a_session_with_an_unworkable_schedule_is_refused_when_it_opens(tmp_path):
    world = make_random_world(tmp_path / "w", sampler="diagonal", context_noise=0.0)
    with pytest.raises(BackendError, match="context_noise"):
        create_backend("generated", checkpoint=str(world), device="cpu")
    good = make_random_world(tmp_path / "g")
    with pytest.raises(BackendError, match="more steps than the teacher's grid"):
        create_backend("generated", checkpoint=str(good), device="cpu", sampler="diagonal", schedule=[2, 40])


def test_diagonal_never_runs_a_refresh_pass():
    net = RecordingDiT(random_dit())
    outs, cache = stream_chunks(net, diagonal_sampler([4, 3, 2]), 5)
    per_chunk = net.per_chunk()
    assert [len(ts) for ts in per_chunk] == [4, 3, 2, 2, 2]  # one forward per step, nothing else
    assert all(t > 0 for ts in per_chunk for t in ts)  # never a clean (t = 0) pass
    assert [ts[-1] for ts in per_chunk] == [CONTEXT_NOISE] * 5  # the K/V-writing forward
    assert [round(t) for t in per_chunk[1]] == diagonal_sampler().timesteps(1) == outs[1].timesteps
    held = cache.inputs.t[0, : cache.n_ctx]
    assert torch.equal(held, torch.full_like(held, CONTEXT_NOISE))  # what the cache holds as context


def test_uniform_refreshes_with_a_clean_pass():
    net = RecordingDiT(random_dit())
    stream_chunks(net, uniform_sampler(), 2)
    assert [ts[-1] for ts in net.per_chunk()] == [0.0, 0.0] and [len(ts) for ts in net.per_chunk()] == [5, 5]


def test_training_rollout_writes_context_at_the_inference_level():
    """Self-forcing rollouts exit at random steps; each chunk's K/V still land at context_noise."""
    sampler = make_sampler("diagonal", schedule=[4, 3, 2], context_noise=150)
    net = RecordingDiT(random_dit())
    cfg = net.config
    gen = torch.Generator().manual_seed(3)
    B, n = 2, 4
    initial = torch.randn(B, n * cfg.chunk_frames, *cfg.latent_shape, generator=gen)
    actions = torch.zeros(B, n * cfg.chunk_frames, cfg.action_dim)
    for exits in ([0, 0, 0, 0], [3, 2, 1, 1], sample_exits(sampler, n, gen)):
        net.calls.clear()
        roll = self_forcing_rollout(net, sampler, conditioning(cfg, B), actions, initial, exits,
                                    lambda s: torch.randn(s, generator=gen))
        assert torch.equal(roll.context_t, torch.full_like(roll.context_t, 150.0))
        assert [ts[-1] for ts in net.per_chunk()] == [150.0] * n
        for ts, exit_step, i in zip(net.per_chunk(), exits, range(n)):  # steps up to the exit, + context pass
            last = exit_step == sampler.steps(i) - 1
            assert len(ts) == exit_step + 1 + (0 if last else 1)
    # Inference with the same sampler: its K/V-writing forwards run at the same level.
    net.calls.clear()
    stream_chunks(net, sampler, n)
    assert [ts[-1] for ts in net.per_chunk()] == [150.0] * n


def test_the_checkpoint_context_noise_drives_inference(tmp_path):
    world_dir = make_random_world(tmp_path / "w", sampler="diagonal", schedule=[4, 3, 2], context_noise=250.0)
    world = load_world_model(world_dir)
    assert world.sampler() == make_sampler("diagonal", schedule=[4, 3, 2], context_noise=250.0)
    assert world.sampler("diagonal", schedule=[2]).context_noise == 250.0  # a property of the weights
    assert world.sampler("diagonal", context_noise=150).context_noise == 150.0  # unless a session asks otherwise
    assert create_backend("generated", checkpoint=str(world_dir), device="cpu", context_noise=150).sampler == (
        make_sampler("diagonal", schedule=[4, 3, 2], context_noise=150))
    stream = world.stream()
    stream.reset(0, "green hills")
    for _ in range(3):
        out = stream.next_chunk(np.zeros((3, 12), dtype=np.float32))
        assert out.timesteps[-1] == 250
    held = stream.cache.inputs.t[0, : stream.cache.n_ctx]
    assert torch.equal(held, torch.full_like(held, 250.0))
    b = create_backend("generated", checkpoint=str(world_dir), device="cpu")
    b.reset(0, "desert")
    assert b.step_chunk([Action()] * 3).extra["timesteps"] == world.sampler().timesteps(1)
    assert world.sampler().timesteps(1)[-1] == 250
