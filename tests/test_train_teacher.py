"""Teacher training: the objective, a playable checkpoint after one step, exact resume, the CLI."""

from __future__ import annotations

import argparse
from dataclasses import replace

import pytest
import torch

from model.common.checkpoint import CheckpointError, has_train_state
from model.nets.world_net import stacked_previous
from model.runtime.world_model import load_world_model
from model.training.teacher import (
    ClipBatches,
    add_arguments,
    config_from_args,
    context_levels,
    guided_target,
    switch_clips,
    teacher_forcing_prefix,
    teacher_loss,
)
from tests.helpers import PrevRecorder, SyntheticClips, make_trainer, text_table, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py



def test_teacher_forcing_prefix_leaves_a_noisy_chunk():
    g = torch.Generator().manual_seed(0)
    clean = teacher_forcing_prefix(256, 3, 0.5, g)
    assert clean.any() and not clean.all(dim=1).any()  # never the whole clip
    assert not (clean[:, 1:] & ~clean[:, :-1]).any()  # a prefix: clean chunks come first
    assert not teacher_forcing_prefix(16, 3, 0.0, g).any()


def test_one_step_writes_a_playable_world(tmp_path):
    trainer, batches = make_trainer(tiny_config(steps=1), tmp_path / "ckpt")
    before = [p.clone() for p in trainer.model.parameters()]
    metrics = trainer.train(batches)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["frames_per_s"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert has_train_state(tmp_path / "ckpt")
    world = load_world_model(tmp_path / "ckpt")
    assert world.step == 1 and world.config.sampler == "teacher" and world.config.text_encoder == "hash"
    stream = world.stream(world.sampler(steps=2))
    stream.reset(0, "green hills")
    assert stream.decode(stream.next_chunk(torch.zeros(3, 12)).latents).shape == (3, 64, 64, 3)


def test_resume_continues_exactly(tmp_path):
    straight, batches = make_trainer(tiny_config(steps=2), tmp_path / "a")
    straight.train(batches)

    first, batches = make_trainer(tiny_config(steps=1), tmp_path / "b")
    first.train(batches)
    resumed, batches = make_trainer(tiny_config(steps=2), tmp_path / "b", resume=True)
    assert resumed.step == 1
    resumed.train(batches)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(a, b)


def test_clip_batches_are_a_function_of_the_step():
    tokens, mask = text_table()
    a = ClipBatches(SyntheticClips(), tokens, mask, 4, 0, 1, seed=0)
    b = ClipBatches(SyntheticClips(), tokens, mask, 4, 0, 1, seed=0)
    assert torch.equal(a(3, torch.device("cpu")).latents, b(3, torch.device("cpu")).latents)
    assert a(0, torch.device("cpu")).text.shape == (4, 6, 384)
    with pytest.raises(ValueError, match="split"):
        ClipBatches(SyntheticClips(), tokens, mask, 3, 0, 2, seed=0)
    with pytest.raises(ValueError, match="too few"):
        ClipBatches(SyntheticClips(n=2), tokens, mask, 4, 0, 1, seed=0)


class SwitchClips(SyntheticClips):
    """SyntheticClips whose even items switch prompt at frame `at` (chunks of 3)."""

    def __init__(self, at: int, n: int = 8):
        super().__init__(n=n)
        self.prompt_ids = self.prompt_ids.clone()
        self.prompt_ids[::2, at:] = (self.prompt_ids[::2, at:] + 1) % 3


@pytest.mark.parametrize(("at", "context"), [(3, 1), (4, 1), (1, None), (0, None)])
def test_switch_clips_are_those_with_a_chunk_before_the_switch(at, context):
    indices, chunks = switch_clips(SwitchClips(at))
    if context is None:  # a switch in the first chunk leaves no context before it; at 0 there is no switch
        assert indices == [] and chunks == []
    else:
        assert indices == [0, 2, 4, 6] and chunks == [context] * 4


def test_switch_share_draws_switch_clips_with_their_context(tmp_path):
    tokens, mask = text_table()
    data = SwitchClips(3)
    every = ClipBatches(data, tokens, mask, 4, 0, 1, seed=0, switch_share=1.0)(5, torch.device("cpu"))
    assert every.context_chunks.tolist() == [1, 1, 1, 1]
    switched = torch.stack([data.latents[i] for i in (0, 2, 4, 6)])
    assert all(any(torch.equal(row, s) for s in switched) for row in every.latents)
    none = ClipBatches(data, tokens, mask, 4, 0, 1, seed=0)(5, torch.device("cpu"))
    assert none.context_chunks.tolist() == [-1] * 4
    with pytest.raises(ValueError, match="crosses a prompt switch"):
        ClipBatches(SyntheticClips(), tokens, mask, 4, 0, 1, seed=0, switch_share=0.5)
    # The loss: the chunk before the switch is the clean context (level 0), whatever the forcing draw.
    cfg = tiny_config(teacher_forcing_prob=0.0, context_noise_max=0.0)
    trainer, _ = make_trainer(cfg, tmp_path / "ckpt")
    net = TimeRecorder(trainer.model)
    teacher_loss(net, every, trainer.dit_cfg, cfg, torch.Generator().manual_seed(0))
    assert torch.all(net.t[:, :3] == 0) and torch.all(net.t[:, 3:] > 0)


def test_command_line_arguments():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--latents", "c", "--out", "o", "--batch", "8", "--clip-chunks", "3",
                              "--teacher-forcing-prob", "0.25", "--resume", "--device", "cpu"])
    assert (args.batch, args.clip_chunks, args.teacher_forcing_prob, args.resume) == (8, 3, 0.25, True)
    # Options not given stay None in args (a --recipe may set them); the config holds the defaults.
    assert args.autoencoder is None and args.preset is None
    assert config_from_args(args, "minilm").preset == "default"


def test_context_noise_levels_cover_the_diagonal_context_level():
    g = torch.Generator().manual_seed(0)
    levels = context_levels(4096, 0.3, g)
    assert levels.min() >= 0 and levels.max() <= 0.3
    assert (levels < 0.1).any() and (levels > 0.1).any()  # the diagonal context (t = 100) is inside
    assert torch.equal(context_levels(8, 0.0, g), torch.zeros(8))  # no augmentation: a clean prefix
    with pytest.raises(ValueError, match="context_noise_max"):
        context_levels(8, 1.0, g)


class TimeRecorder(torch.nn.Module):
    """Wraps a DiT and keeps the per-frame network times it is given."""

    def __init__(self, dit):
        super().__init__()
        self.dit, self.t = dit, None

    def forward(self, x, t, *args, **kwargs):
        self.t = t.clone()
        return self.dit(x, t, *args, **kwargs)


@pytest.mark.parametrize("most", [0.0, 0.3])
def test_teacher_forced_prefix_is_noised_to_one_level_per_clip(tmp_path, most):
    cfg = tiny_config(teacher_forcing_prob=1.0, context_noise_max=most, clip_chunks=2, batch=64)
    trainer, _ = make_trainer(tiny_config(), tmp_path / "ckpt")
    tokens, mask = text_table()
    batches = ClipBatches(SyntheticClips(n=64), tokens, mask, 64, 0, 1, 0)
    net = TimeRecorder(trainer.model)
    teacher_loss(net, batches(0, torch.device("cpu")), trainer.dit_cfg, cfg, torch.Generator().manual_seed(0))
    prefix = net.t[:, :3]  # with 2 chunks the prefix is always exactly chunk 0
    assert torch.equal(prefix, prefix[:, :1].expand_as(prefix))  # one level per clip, given as time
    if most == 0.0:
        assert torch.equal(prefix, torch.zeros_like(prefix))
    else:
        assert prefix.min() >= 0 and prefix.max() <= 1000 * most and prefix.std() > 0


def test_warm_start_copies_weights_and_leaves_the_new_inputs_silent(tmp_path):
    source, batches = make_trainer(tiny_config(steps=1), tmp_path / "src")
    source.train(batches)
    cfg = tiny_config(steps=1, copy_path=True, action_tokens=True, init_from=str(tmp_path / "src"))
    warm, batches = make_trainer(cfg, tmp_path / "warm")
    ema = dict(load_world_model(tmp_path / "src").dit.named_parameters())  # what the checkpoint holds
    for name, p in warm.model.named_parameters():
        if name in ema:
            assert torch.equal(p, ema[name].to(p.dtype)), name
        else:
            assert name.split(".")[0] in ("copy_in", "action_in") and torch.count_nonzero(p) == 0
    warm.train(batches)
    resumed, _ = make_trainer(tiny_config(steps=2), tmp_path / "warm", resume=True)  # the run's architecture wins
    assert resumed.dit_cfg.copy_path and resumed.dit_cfg.action_tokens and resumed.step == 1


def test_the_prompt_film_warm_starts_silent_from_a_conv_network_without_it(tmp_path):
    recipe = dict(preset="tiny-unet", copy_path=True)
    source, batches = make_trainer(tiny_config(steps=1, **recipe), tmp_path / "src")
    source.train(batches)
    cfg = tiny_config(steps=1, text_film=True, init_from=str(tmp_path / "src"), **recipe)
    warm, batches = make_trainer(cfg, tmp_path / "warm")
    src = load_world_model(tmp_path / "src").dit
    new = {n for n, _ in warm.model.named_parameters()} - {n for n, _ in src.named_parameters()}
    assert new == {"text_film.weight", "text_film.bias"}
    assert all(torch.count_nonzero(p) == 0 for n, p in warm.model.named_parameters() if n in new)
    batch = batches(0, torch.device("cpu"))
    x, t = batch.latents[:, :6], torch.full(batch.latents.shape[:2], 500.0)[:, :6]
    args = (x, t, batch.actions[:, :6], batch.text, batch.text_mask)
    with torch.no_grad():  # begins computing exactly what the checkpoint did
        assert torch.allclose(warm.model.eval()(*args), src.float().eval()(*args), atol=1e-5)
    warm.train(batches)
    assert load_world_model(tmp_path / "warm").dit.config.text_film


def test_a_wider_latent_warm_starts_all_but_its_latent_layers_and_plays(tmp_path):
    source, batches = make_trainer(tiny_config(steps=1), tmp_path / "src")
    source.train(batches)
    with pytest.raises(CheckpointError, match="--init-mismatched fresh"):  # another latent width: refused
        make_trainer(tiny_config(steps=1, init_from=str(tmp_path / "src")), tmp_path / "no", latent_channels=8)
    cfg = tiny_config(steps=1, init_from=str(tmp_path / "src"), init_mismatched="fresh")
    wide, batches = make_trainer(cfg, tmp_path / "wide", latent_channels=8)
    assert wide.dit_cfg.latent_channels == 8  # the network follows the autoencoder
    ema = dict(load_world_model(tmp_path / "src").dit.named_parameters())
    copied = [n for n, p in wide.model.named_parameters() if n in ema and p.shape == ema[n].shape]
    fresh = [n for n, p in wide.model.named_parameters() if n in ema and p.shape != ema[n].shape]
    assert fresh and len(copied) > 5 * len(fresh)  # only the layers that read or write latents
    assert all(torch.equal(dict(wide.model.named_parameters())[n], ema[n].to(torch.float32)) for n in copied)
    wide.train(batches)
    world = load_world_model(tmp_path / "wide")
    stream = world.stream(world.sampler(steps=2))
    stream.reset(0, "green hills")
    assert stream.next_chunk(torch.zeros(3, 12)).latents.shape[-3] == 8
    assert stream.decode(stream.next_chunk(torch.zeros(3, 12)).latents).shape == (3, 64, 64, 3)


def test_time_budget_stops_and_saves(tmp_path):
    trainer, batches = make_trainer(tiny_config(steps=1000, ckpt_every=500, max_minutes=1e-9), tmp_path / "t")
    trainer.train(batches)
    assert 1 <= trainer.step < 1000 and has_train_state(tmp_path / "t")


def test_clean_copy_context_gives_every_chunk_its_clean_predecessor(tmp_path):
    cfg = tiny_config(preset="tiny-unet", teacher_forcing_prob=0.0, context_noise_max=0.0, batch=4,
                      copy_path=True, copy_context="clean")
    trainer, _ = make_trainer(cfg, tmp_path / "ckpt")
    batch = ClipBatches(SyntheticClips(n=8), *text_table(), 4, 0, 1, 0)(0, torch.device("cpu"))
    net = PrevRecorder(trainer.model)
    loss = teacher_loss(net, batch, trainer.dit_cfg, cfg, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    K, C = trainer.dit_cfg.copy_frames, trainer.dit_cfg.chunk_frames
    x0 = batch.latents
    assert net.prev.shape == (4, x0.shape[1], K * x0.shape[2], *x0.shape[3:])
    assert torch.equal(net.prev[:, :C], torch.zeros_like(net.prev[:, :C]))  # the sink has no predecessor
    for i in range(1, x0.shape[1] // C):  # chunk i reads the clean frames before it, though they were noised
        expected = x0[:, i * C - K : i * C].flatten(1, 2)
        for j in range(C):
            torch.testing.assert_close(net.prev[:, i * C + j], expected)
    assert not torch.allclose(net.x[:, C:], x0[:, C:])  # no prefix: the chunks themselves are noisy

    cfg.copy_context = "input"  # the default derives the copy path from the noisy input itself
    teacher_loss(net, batch, trainer.dit_cfg, cfg, torch.Generator().manual_seed(0))
    assert net.prev is None


def test_uniform_levels_train_more_near_pure_noise(tmp_path):
    trainer, _ = make_trainer(tiny_config(), tmp_path / "ckpt")
    batch = ClipBatches(SyntheticClips(n=64), *text_table(), 64, 0, 1, 0)(0, torch.device("cpu"))
    net = TimeRecorder(trainer.model)
    share = {}
    for levels in ("logit_normal", "uniform"):
        cfg = tiny_config(teacher_forcing_prob=0.0, batch=64, shift=1.0, level_sampling=levels)
        teacher_loss(net, batch, trainer.dit_cfg, cfg, torch.Generator().manual_seed(0))
        share[levels] = float((net.t > 900).float().mean())
    assert share["uniform"] > 1.5 * share["logit_normal"]  # 10% of uniform levels against about 5%


def test_action_guidance_distils_the_references_guided_velocity(tmp_path):
    recipe = dict(preset="tiny-unet", copy_path=True, copy_context="clean", batch=6)
    source, batches = make_trainer(tiny_config(steps=2, **recipe), tmp_path / "src")
    source.train(batches)
    with pytest.raises(ValueError, match="--guidance-reference"):  # nothing to distil from
        make_trainer(tiny_config(action_guidance=2.0, **recipe), tmp_path / "none")
    cfg = tiny_config(steps=1, action_guidance=2.0, init_from=str(tmp_path / "src"), **recipe)
    trainer, batches = make_trainer(cfg, tmp_path / "distil")
    assert trainer.cfg.guidance_reference == str(tmp_path / "src")
    assert not any(p.requires_grad for p in trainer.reference.parameters())
    ref = trainer.reference

    # The target, by hand: the reference under the clip's actions (c) and under the null action (u).
    batch = batches(0, torch.device("cpu"))
    x, t = batch.latents, torch.full(batch.latents.shape[:2], 700.0)
    prev = stacked_previous(torch.randn_like(x), trainer.dit_cfg.chunk_frames, trainer.dit_cfg.copy_frames)
    dropped = torch.tensor([False, True, False, False, True, False])
    with torch.no_grad():
        c = ref(x, t, batch.actions, batch.text, batch.text_mask, prev=prev)
        null = torch.ones(6, dtype=torch.bool)
        u = ref(x, t, batch.actions, batch.text, batch.text_mask, drop_actions=null, prev=prev)
    target = guided_target(ref, x, t / 1000, batch.actions, batch.text, batch.text_mask, dropped, prev, 2.0)
    torch.testing.assert_close(target[~dropped], (c + 2.0 * (c - u))[~dropped], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(target[dropped], u[dropped], atol=1e-5, rtol=1e-4)
    assert (c - u).abs().mean() > 0  # the trained reference does read the actions

    # The warm-started network equals its reference, so its loss is exactly the guidance term's.
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    plain = teacher_loss(trainer.model, batch, trainer.dit_cfg, replace(cfg, action_guidance=0.0), gen())
    distilled = teacher_loss(trainer.model, batch, trainer.dit_cfg, cfg, gen(), ref)
    at_zero = teacher_loss(trainer.model, batch, trainer.dit_cfg, replace(cfg, action_guidance=1e-9), gen(), ref)
    assert distilled > 0 and at_zero < 1e-8 < plain  # a guidance of ~0 asks for the reference itself
    trainer.train(batches)
    saved = load_world_model(tmp_path / "distil")
    assert saved.step == 1
    resumed, _ = make_trainer(tiny_config(steps=2, action_guidance=2.0, **recipe), tmp_path / "distil", resume=True)
    assert resumed.step == 1 and resumed.cfg.guidance_reference == str(tmp_path / "src")  # the run remembers it
