"""The distilled action guidance's two variants: its part along the conditional prediction
down-weighted (adaptive projected guidance; model/diffusion/guidance.py), and the data's velocity
as the base of the target with only the guidance term from the reference (--guidance-target data)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from model.diffusion.flow import predict_x0
from model.diffusion.guidance import apply_guidance, apply_projected_guidance
from model.training.teacher import guided_target, teacher_loss
from tests.helpers import make_trainer, teacher_options, tiny_config

FRAME = (-3, -2, -1)


def velocities(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[2B, F, C, h, w] velocities (cond rows first), x_s and levels s [B, F] for B = 2, F = 3."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(4, 3, 8, 4, 4, generator=gen)
    x_s = torch.randn(2, 3, 8, 4, 4, generator=gen)
    s = torch.rand(2, 3, generator=gen) * 0.9 + 0.05
    return v, x_s, s


RECIPE = dict(preset="tiny-unet", copy_path=True, copy_context="clean", batch=4)


def trained_reference(tmp_path) -> dict:
    """One step of a tiny U-Net run in tmp_path/src, the reference the tests distil; returns the recipe."""
    source, batches = make_trainer(tiny_config(steps=1, **RECIPE), tmp_path / "src")
    source.train(batches)
    return dict(RECIPE)


def test_parallel_one_is_plain_guidance():
    v, x_s, s = velocities()
    x0 = predict_x0(x_s, v.chunk(2)[0], s)
    torch.testing.assert_close(apply_projected_guidance(v, 2.0, x0, 1.0), apply_guidance(v, 2.0))


def test_parallel_zero_keeps_only_the_orthogonal_part_in_x0():
    v, x_s, s = velocities(1)
    c, u = v.chunk(2)
    x0_c, x0_u = predict_x0(x_s, c, s), predict_x0(x_s, u, s)
    guided = apply_projected_guidance(v, 1.5, x0_c, 0.0)
    # In x0 terms: x0_c + g * (the x0 difference minus its projection onto x0_c), per frame.
    diff = x0_c - x0_u
    along = (diff * x0_c).sum(FRAME, keepdim=True) / (x0_c * x0_c).sum(FRAME, keepdim=True)
    expected = x0_c + 1.5 * (diff - along * x0_c)
    torch.testing.assert_close(predict_x0(x_s, guided, s), expected, atol=1e-5, rtol=1e-4)
    step = predict_x0(x_s, guided, s) - x0_c
    assert (step * x0_c).sum(FRAME).abs().max() < 1e-3  # nothing left that scales the picture itself
    assert step.abs().mean() > 0.1  # while the orthogonal part is kept


def test_half_weight_lies_between():
    v, x_s, s = velocities(2)
    x0 = predict_x0(x_s, v.chunk(2)[0], s)
    full, none = apply_guidance(v, 1.0), apply_projected_guidance(v, 1.0, x0, 0.0)
    torch.testing.assert_close(apply_projected_guidance(v, 1.0, x0, 0.5), (full + none) / 2, atol=1e-5, rtol=1e-4)


def test_distilled_target_uses_the_projection(tmp_path):
    recipe = trained_reference(tmp_path)
    cfg = tiny_config(steps=1, action_guidance=1.0, guidance_parallel=0.0, init_from=str(tmp_path / "src"), **recipe)
    trainer, batches = make_trainer(cfg, tmp_path / "apg")
    ref, batch = trainer.reference, batches(0, torch.device("cpu"))
    x, s = batch.latents, torch.full(batch.latents.shape[:2], 0.7)
    dropped = torch.tensor([False, True, False, False])
    args = (ref, x, s, batch.actions, batch.text, batch.text_mask, dropped, None, 1.0)
    plain, projected = guided_target(*args), guided_target(*args, 0.0)
    with torch.no_grad():
        c = ref(x, s * 1000, batch.actions, batch.text, batch.text_mask)
        u = ref(x, s * 1000, batch.actions, batch.text, batch.text_mask, drop_actions=torch.ones(4, dtype=torch.bool))
    expected = apply_projected_guidance(torch.cat([c, u]), 1.0, predict_x0(x, c, s), 0.0)
    torch.testing.assert_close(projected[~dropped], expected[~dropped], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(projected[dropped], plain[dropped])  # dropped rows still learn u_a
    assert (projected - plain)[~dropped].abs().mean() > 0
    trainer.train(batches)  # a step of the distillation runs with it


def test_data_target_is_the_datas_velocity_plus_the_guidance_term(tmp_path):
    recipe = trained_reference(tmp_path)
    cfg = tiny_config(steps=1, action_guidance=1.0, guidance_target="data", init_from=str(tmp_path / "src"), **recipe)
    trainer, batches = make_trainer(cfg, tmp_path / "data")
    ref, batch = trainer.reference, batches(0, torch.device("cpu"))
    x, s = batch.latents, torch.full(batch.latents.shape[:2], 0.4)
    data = torch.randn_like(x)
    dropped = torch.tensor([False, True, False, True])
    args = (ref, x, s, batch.actions, batch.text, batch.text_mask, dropped, None, 2.0)
    reference = guided_target(*args)
    with torch.no_grad():
        c = ref(x, s * 1000, batch.actions, batch.text, batch.text_mask)
    # The reference's guidance term, g (c - u_a), rides on the data's velocity; dropped rows learn the data.
    target = guided_target(*args, 1.0, data)
    torch.testing.assert_close(target[~dropped], (data + reference - c)[~dropped], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(target[dropped], data[dropped])
    # With APG the same projected term rides on the data.
    projected = guided_target(*args, 0.0)
    torch.testing.assert_close(guided_target(*args, 0.0, data)[~dropped], (data + projected - c)[~dropped],
                               atol=1e-5, rtol=1e-4)

    # In the loss: the warm-started network equals its reference, so under "reference" the loss is the
    # guidance term alone, while under "data" it also holds the data's own error, as plain training's.
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    ref_cfg = replace(cfg, guidance_target="reference", action_guidance=1e-9)
    data_cfg = replace(cfg, action_guidance=1e-9)
    plain = teacher_loss(trainer.model, batch, trainer.dit_cfg, replace(cfg, action_guidance=0.0), gen())
    assert teacher_loss(trainer.model, batch, trainer.dit_cfg, ref_cfg, gen(), ref) < 1e-8
    torch.testing.assert_close(teacher_loss(trainer.model, batch, trainer.dit_cfg, data_cfg, gen(), ref), plain,
                               atol=1e-6, rtol=1e-4)
    trainer.train(batches)


class PromptReader(torch.nn.Module):
    """A reference that surely reads the prompt: the network plus the share of prompt tokens given
    (a one-step tiny network barely does, its prompt FiLM starting at zero)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, t, actions, text, mask, **kw):
        return self.net(x, t, actions, text, mask, **kw) + 0.1 * mask.float().mean(1)[:, None, None, None, None]


def test_text_guidance_adds_the_prompts_term(tmp_path):
    recipe = trained_reference(tmp_path)
    cfg = tiny_config(steps=1, text_guidance=2.0, init_from=str(tmp_path / "src"), **recipe)
    trainer, batches = make_trainer(cfg, tmp_path / "text")  # prompt guidance alone loads the reference too
    assert trainer.reference is not None
    ref, batch = PromptReader(trainer.reference), batches(0, torch.device("cpu"))
    x, s = batch.latents, torch.full(batch.latents.shape[:2], 0.6)
    mask = batch.text_mask.clone()
    mask[2] = False  # row 2's prompt is dropped
    dropped = torch.tensor([False, True, False, False])
    with torch.no_grad():
        c = ref(x, s * 1000, batch.actions, batch.text, mask)
        u_a = ref(x, s * 1000, batch.actions, batch.text, mask, drop_actions=torch.ones(4, dtype=torch.bool))
        u_t = ref(x, s * 1000, batch.actions, batch.text, torch.zeros_like(mask))
    target = guided_target(ref, x, s, batch.actions, batch.text, mask, dropped, None, 1.0, 1.0, None, 2.0)
    expected = c + 1.0 * (c - u_a) + 2.0 * (c - u_t)
    keep = ~dropped
    torch.testing.assert_close(target[keep], expected[keep], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(target[dropped], u_a[dropped], atol=1e-5, rtol=1e-4)
    without = guided_target(ref, x, s, batch.actions, batch.text, mask, dropped, None, 1.0)
    torch.testing.assert_close(target[2], without[2], atol=1e-5, rtol=1e-4)  # no prompt: no prompt term
    assert (target[0] - without[0]).abs().mean() > 0  # the reference reads the prompt
    data = torch.randn_like(x)  # on the data target the prompt's term rides on the data as well
    on_data = guided_target(ref, x, s, batch.actions, batch.text, mask, dropped, None, 1.0, 1.0, data, 2.0)
    torch.testing.assert_close(on_data[keep], (data + expected - c)[keep], atol=1e-5, rtol=1e-4)
    trainer.train(batches)
    with pytest.raises(ValueError, match="text_guidance"):
        make_trainer(tiny_config(text_guidance=-1.0, init_from=str(tmp_path / "src"), **recipe), tmp_path / "bad")


def test_command_line_and_range():
    cfg = teacher_options("--recipe", "unet-teacher-guided", "--guidance-parallel", "0")
    assert (cfg.action_guidance, cfg.guidance_parallel, cfg.guidance_target) == (1.0, 0.0, "reference")
    assert teacher_options("--recipe", "unet-teacher-guided").guidance_parallel == 1.0
    assert teacher_options("--recipe", "unet-teacher-guided", "--guidance-target", "data").guidance_target == "data"
    assert teacher_options("--recipe", "unet-teacher-guided", "--text-guidance", "1.5").text_guidance == 1.5
    with pytest.raises(SystemExit):  # argparse names the choices
        teacher_options("--guidance-target", "teacher")


def test_out_of_range_weight_is_refused(tmp_path):
    recipe = trained_reference(tmp_path)
    with pytest.raises(ValueError, match="guidance_parallel"):
        make_trainer(tiny_config(action_guidance=1.0, guidance_parallel=1.5, init_from=str(tmp_path / "src"),
                                 **recipe), tmp_path / "bad")
