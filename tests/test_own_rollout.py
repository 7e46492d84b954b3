"""The teacher trained on its own rollouts: the context it generates, and the loss that reads it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from model.diffusion.flow import level_grid
from model.training.own_rollout import own_context
from model.training.teacher import ClipBatches, own_rollout_rows, teacher_loss
from tests.helpers import PrevRecorder, SyntheticClips, make_trainer, text_table, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

RECIPE = dict(preset="tiny-unet", copy_path=True, copy_context="clean", clip_chunks=3, batch=4)


def clips_and_net(tmp_path, **overrides):
    cfg = tiny_config(**{**RECIPE, **overrides})
    trainer, _ = make_trainer(cfg, tmp_path / "ckpt")
    with torch.no_grad():  # a fresh network's zero-initialised outputs would ignore the context
        g = torch.Generator().manual_seed(9)
        for p in trainer.model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    batch = ClipBatches(SyntheticClips(n=8, frames=9), *text_table(), 4, 0, 1, 0)(0, torch.device("cpu"))
    return cfg, trainer, batch


def test_own_context_replaces_the_middle_chunks_causally(tmp_path):
    _, trainer, batch = clips_and_net(tmp_path)
    net, x0, C = trainer.model, batch.latents, trainer.dit_cfg.chunk_frames
    levels = level_grid(3, 3.0)
    args = (batch.actions, batch.text, batch.text_mask, levels)

    def middle(x):
        return own_context(net, trainer.dit_cfg, x, *args, torch.Generator().manual_seed(0))[:, C : 2 * C]

    out = own_context(net, trainer.dit_cfg, x0, *args, torch.Generator().manual_seed(0))
    assert out.shape == x0.shape
    torch.testing.assert_close(out[:, :C], x0[:, :C])  # the data start
    torch.testing.assert_close(out[:, 2 * C :], x0[:, 2 * C :])  # the loss chunk stays data
    assert not torch.allclose(out[:, C : 2 * C], x0[:, C : 2 * C])  # generated
    again = own_context(net, trainer.dit_cfg, x0, *args, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, out)  # a function of the generator
    later = x0.clone()
    later[:, 2 * C :] += 1.0  # what comes after the generated chunk cannot change it
    torch.testing.assert_close(middle(later), out[:, C : 2 * C])
    start = x0.clone()
    start[:, :C] += 1.0  # ...but the start it continues from does
    assert not torch.allclose(middle(start), out[:, C : 2 * C])
    with pytest.raises(ValueError, match="at least 3 whole chunks"):
        own_context(net, trainer.dit_cfg, x0[:, : 2 * C], batch.actions[:, : 2 * C], batch.text,
                    batch.text_mask, levels, torch.Generator())
    with pytest.raises(ValueError, match="descend"):
        own_context(net, trainer.dit_cfg, x0, batch.actions, batch.text, batch.text_mask, (0.2, 0.9), torch.Generator())


def test_own_rollout_rows_keep_switch_clips_and_draw_nothing_when_off():
    g = torch.Generator().manual_seed(0)
    assert own_rollout_rows(64, 1.0, None, g).all()
    switch = torch.tensor([-1, 1, -1, 2])
    assert own_rollout_rows(4, 1.0, switch, g).tolist() == [True, False, True, False]
    state = g.get_state()
    assert not own_rollout_rows(8, 0.0, None, g).any()
    assert torch.equal(g.get_state(), state)  # runs without the option keep their random sequence
    with pytest.raises(ValueError, match="own_rollout_share"):
        own_rollout_rows(4, 1.5, None, g)


def test_the_loss_reads_the_rollout_as_context_and_the_data_as_target(tmp_path):
    cfg, trainer, batch = clips_and_net(tmp_path, own_rollout_share=1.0, own_rollout_steps=2,
                                        teacher_forcing_prob=0.0)
    C = trainer.dit_cfg.chunk_frames
    net = PrevRecorder(trainer.model)
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    loss = teacher_loss(net, batch, trainer.dit_cfg, cfg, gen())
    assert torch.isfinite(loss)
    # The middle chunk the network read is its own (clean: context level 0), not the data's.
    assert not torch.allclose(net.x[:, C : 2 * C], batch.latents[:, C : 2 * C])
    torch.testing.assert_close(net.x[:, :C], batch.latents[:, :C])  # data start, clean
    # So the data's middle chunk does not enter the loss at all...
    moved = replace(batch, latents=batch.latents.clone())
    moved.latents[:, C : 2 * C] += 3.0
    torch.testing.assert_close(teacher_loss(trainer.model, moved, trainer.dit_cfg, cfg, gen()), loss)
    # ...while the last chunk is the target, and the copy path reads the rollout before it.
    moved = replace(batch, latents=batch.latents.clone())
    moved.latents[:, 2 * C :] += 3.0
    assert not torch.allclose(teacher_loss(trainer.model, moved, trainer.dit_cfg, cfg, gen()), loss)
    K = trainer.dit_cfg.copy_frames
    torch.testing.assert_close(net.prev[:, 2 * C], net.x[:, 2 * C - K : 2 * C].flatten(1, 2))
    # Gradient reaches the network through the last chunk.
    trainer.model.zero_grad()
    teacher_loss(trainer.model, batch, trainer.dit_cfg, cfg, gen()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())
