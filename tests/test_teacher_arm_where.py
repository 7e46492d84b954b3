"""Where in the picture: the U-Net's coordinate planes (UNetConfig.coord_planes) and the teacher's
first-frame loss weight (--first-frame-weight). Shapes, streaming == full sequence, causality, a
silent warm start from a network without the planes (by state dict, through the trainer, and from
the released teacher), gradient on the planes' weights, the config and the command line, and the
weighted loss."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model.common.configs import config_to_dict
from model.nets.families import build_net, net_config, net_config_from_dict
from model.nets.unet import CausalUNet, coordinate_planes
from model.runtime.world_model import load_world_model
from model.training import teacher
from model.training.teacher import ClipBatches, chunk_frame_weights, teacher_loss
from tests.helpers import (
    TOL,
    SyntheticClips,
    assert_causal,
    assert_release_warm_starts_silent,
    inputs,
    make_trainer,
    random_dit,
    stream,
    teacher_options,
    text_table,
    tiny_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

TEACHER = Path(__file__).resolve().parents[1] / "assets" / "teacher"
REFERENCE = TEACHER.parent / "teacher-reference"


def coord_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if n.endswith(".coord.weight")}


# ----------------------------------------------------------------------------- the coordinate planes


def test_coordinate_planes_run_from_minus_one_to_one_across_the_grid():
    planes = coordinate_planes(16, 16, torch.float32, torch.device("cpu"))
    assert planes.shape == (1, 2, 16, 16)
    x, y = planes[0]
    assert torch.equal(x[0], torch.linspace(-1, 1, 16)) and torch.equal(x, x[:1].expand(16, 16))  # x: the column
    assert torch.equal(y[:, 0], torch.linspace(-1, 1, 16)) and torch.equal(y, y[:, :1].expand(16, 16))  # y: the row
    assert coordinate_planes(8, 8, torch.bfloat16, torch.device("cpu")).dtype == torch.bfloat16


def test_every_residual_block_at_both_levels_reads_the_planes():
    model = build_net(replace(net_config("tiny-unet"), coord_planes=True))
    blocks = model.config.conv_blocks
    names = set(coord_params(model))
    assert names == {f"conv_{side}.{level}.{i}.coord.weight"
                     for side in ("in", "out") for level in ("full", "low") for i in range(blocks)}
    width = model.config.conv_width
    assert model.conv_in.full[0].coord.weight.shape == (width, 2, 3, 3)
    assert model.conv_in.low[0].coord.weight.shape == (2 * width, 2, 3, 3)
    assert all(torch.count_nonzero(p) == 0 for p in coord_params(model).values())  # zero-initialised
    assert not coord_params(build_net(net_config("tiny-unet")))  # off by default: no new layers


def test_a_fresh_network_with_planes_is_the_plain_one_plus_silent_planes():
    """The planes' layers draw nothing from the random generator, so the other layers' fresh weights,
    and every preset's without the planes, are what they were."""
    torch.manual_seed(0)
    plain = build_net(net_config("tiny-unet"))
    torch.manual_seed(0)
    coord = build_net(replace(net_config("tiny-unet"), coord_planes=True))
    own = coord.state_dict()
    assert set(own) - set(plain.state_dict()) == set(coord_params(coord))
    assert all(torch.equal(own[k], v) for k, v in plain.state_dict().items())


def test_shapes_and_streaming_equal_the_full_sequence():
    model = random_dit("tiny-unet", coord_planes=True)
    x, t, a, text, mask = inputs(model.config, 2, 4)
    with torch.no_grad():
        full = model(x, t, a, text, mask)
        streamed, _ = stream(model, x, t, a, text, mask)
        for p in coord_params(model).values():  # the planes do move the output
            p.zero_()
        without = model(x, t, a, text, mask)
    assert full.shape == x.shape
    assert (full - streamed).abs().max() < TOL
    assert not torch.allclose(full, without, atol=1e-4)


def test_a_later_chunk_does_not_change_an_earlier_chunks_output():
    assert_causal(random_dit("tiny-unet", coord_planes=True))


def test_the_planes_warm_start_silent_from_a_network_without_them_and_learn():
    source = random_dit("tiny-unet")  # a "trained" network: every zero-initialised part perturbed
    warm = build_net(replace(net_config("tiny-unet"), coord_planes=True)).eval()
    missing, unexpected = warm.load_state_dict(source.state_dict(), strict=False)
    assert unexpected == [] and set(missing) == set(coord_params(warm))
    x, t, a, text, mask = inputs(source.config, 2, 2)
    with torch.no_grad():
        assert torch.equal(warm(x, t, a, text, mask), source(x, t, a, text, mask))
    # Zero weights still get gradient: the planes can learn from the first step.
    warm.train()
    warm(x, t, a, text, mask, drop_actions=torch.tensor([False, True])).square().mean().backward()
    for name, p in coord_params(warm).items():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


def test_the_trainer_warm_starts_the_planes_silent_and_trains_them(tmp_path):
    recipe = dict(preset="tiny-unet", copy_path=True)
    source, batches = make_trainer(tiny_config(steps=2, **recipe), tmp_path / "src")
    source.train(batches)
    cfg = tiny_config(steps=1, coord_planes=True, init_from=str(tmp_path / "src"), **recipe)
    warm, batches = make_trainer(cfg, tmp_path / "warm")
    src = load_world_model(tmp_path / "src").dit.float().eval()
    new = {n for n, _ in warm.model.named_parameters()} - {n for n, _ in src.named_parameters()}
    assert new == set(coord_params(warm.model))
    assert all(torch.count_nonzero(p) == 0 for p in coord_params(warm.model).values())
    batch = batches(0, torch.device("cpu"))
    x, t = batch.latents[:, :6], torch.full(batch.latents.shape[:2], 500.0)[:, :6]
    args = (x, t, batch.actions[:, :6], batch.text, batch.text_mask)
    with torch.no_grad():  # begins computing exactly what the checkpoint did
        assert torch.allclose(warm.model.eval()(*args), src(*args), atol=1e-6)
    warm.model.train()
    warm.train(batches)
    assert any(torch.count_nonzero(p) > 0 for p in coord_params(warm.model).values())  # one step moved them
    saved = load_world_model(tmp_path / "warm").dit
    assert saved.config.coord_planes and coord_params(saved)
    resumed, _ = make_trainer(tiny_config(steps=2, **recipe), tmp_path / "warm", resume=True)  # the run's network
    assert resumed.dit_cfg.coord_planes and resumed.step == 1


@pytest.mark.skipif(not TEACHER.exists(), reason="the released teacher is not in this checkout")
def test_the_released_teacher_warm_starts_the_planes_silent():
    """The run the option is for: the released recipe with --coord-planes, --init-from assets/teacher."""
    model, fresh = assert_release_warm_starts_silent(TEACHER, "--coord-planes", "coord_planes")
    assert set(fresh) == set(coord_params(model)) and len(fresh) == 4 * model.config.conv_blocks



def test_a_reference_without_planes_gives_a_run_with_them_its_guided_target():
    """The guided recipe distils assets/teacher-reference, which has no planes: the same network up to
    the silent planes, so it is accepted; a different network is still refused."""
    cfg = teacher_options("--recipe", "unet-teacher-guided", "--coord-planes", "--init-from", str(TEACHER),
                "--guidance-reference", str(REFERENCE))
    released = load_world_model(TEACHER, "cpu", with_text_encoder=False).dit
    net_cfg = teacher.fresh_dit_config(cfg, released.config.latent_channels)
    reference = teacher.guidance_reference(cfg, net_cfg, torch.device("cpu"))
    assert reference is not None and not reference.config.coord_planes
    assert teacher.same_network(reference.config, net_cfg)
    assert not teacher.same_network(reference.config, replace(net_cfg, conv_width=64))
    with pytest.raises(teacher.CheckpointError, match="not this run's"):
        teacher.guidance_reference(cfg, replace(net_cfg, depth=3), torch.device("cpu"))


# ----------------------------------------------------------------------------- the config and the command line


def test_old_configs_load_without_planes_and_saved_configs_record_them():
    saved = config_to_dict(net_config("unet"))
    assert saved["coord_planes"] is False  # a saved config records the switch
    old = {k: v for k, v in saved.items() if k != "coord_planes"}
    assert net_config_from_dict(old).coord_planes is False
    on = net_config_from_dict({**saved, "coord_planes": True})
    assert on.coord_planes and isinstance(build_net(on), CausalUNet)


def test_command_line_options():
    cfg = teacher_options("--recipe", "unet-teacher-guided", "--coord-planes", "--first-frame-weight", "3")
    assert (cfg.coord_planes, cfg.first_frame_weight, cfg.action_guidance) == (True, 3.0, 1.0)
    net = teacher.fresh_dit_config(cfg, 8)
    assert net.coord_planes and net.text_film and net.copy_path  # the recipe's network, plus the planes
    plain = teacher_options("--recipe", "unet-teacher")
    assert (plain.coord_planes, plain.first_frame_weight) == (None, 1.0)  # not given: off, weight 1
    assert teacher.fresh_dit_config(plain, 8).coord_planes is False
    off = teacher_options("--preset", "tiny-unet", "--no-coord-planes")
    assert teacher.fresh_dit_config(off, 4).coord_planes is False
    with pytest.raises(ValueError, match="coord_planes"):  # a DiT has no conv blocks
        teacher.fresh_dit_config(teacher_options("--preset", "tiny", "--coord-planes"))


# ----------------------------------------------------------------------------- the first frame's loss weight


class Recorder(torch.nn.Module):
    """Wraps a network; keeps the per-frame times it is given (0: the clean context prefix)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.t = net, None

    def forward(self, x, t, *args, **kwargs):
        self.t = t.clone()
        return self.net(x, t, *args, **kwargs)


def test_frame_weights_weigh_the_first_frame_of_every_chunk():
    w = chunk_frame_weights(9, 3, tiny_config(first_frame_weight=2.5))
    assert w.tolist() == [2.5, 1, 1] * 3
    assert torch.equal(chunk_frame_weights(6, 3, tiny_config()), torch.ones(6))
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="first_frame_weight"):
            chunk_frame_weights(6, 3, tiny_config(first_frame_weight=bad))


def test_first_frame_weight_one_is_the_plain_loss_and_others_weigh_the_first_frames(tmp_path, monkeypatch):
    cfg = tiny_config(preset="tiny-unet", copy_path=True, clip_chunks=3, batch=8, teacher_forcing_prob=0.5,
                      context_noise_max=0.0)
    trainer, _ = make_trainer(cfg, tmp_path / "ckpt")
    with torch.no_grad():  # a network whose velocities differ from frame to frame
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = ClipBatches(SyntheticClips(n=8, frames=9), *text_table(), 8, 0, 1, 0)(0, torch.device("cpu"))
    net = Recorder(trainer.model)
    seen = []
    flow_loss = teacher.flow_loss

    def recording_flow_loss(v: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        seen.append((v, target, w))
        return flow_loss(v, target, w)

    monkeypatch.setattr(teacher, "flow_loss", recording_flow_loss)

    def loss(**options) -> float:
        with torch.no_grad():
            return float(teacher_loss(net, batch, trainer.dit_cfg, replace(cfg, **options),
                                      torch.Generator().manual_seed(0)))

    default = loss()
    assert loss(first_frame_weight=1.0) == default
    v, target, w = seen[-1]
    prefix = net.t == 0  # the teacher-forced context: clean, no loss
    assert prefix.any() and (~prefix).any()
    assert torch.equal(w, (~prefix).float())  # W = 1: exactly the unweighted loss over the loss frames
    plain = ((v - target).pow(2).mean(dim=(2, 3, 4)) * w).sum() / w.sum()
    assert abs(float(plain) - default) < 1e-6 * default

    three = loss(first_frame_weight=3.0)
    assert three != default
    w3 = seen[-1][2]
    first = (torch.arange(9) % 3 == 0)[None].expand_as(prefix)
    assert torch.equal(w3[first & ~prefix], torch.full_like(w3[first & ~prefix], 3.0))
    assert torch.equal(w3[~first & ~prefix], torch.ones_like(w3[~first & ~prefix]))
    assert torch.count_nonzero(w3[prefix]) == 0  # the context stays without loss
    # A weighted mean: L(W) (W n1 + n2) = W a + b is linear in W (n1 first frames with loss, n2 others).
    n1, n2 = float((first & ~prefix).sum()), float((~first & ~prefix).sum())
    five = loss(first_frame_weight=5.0)
    lin = [L * (W * n1 + n2) for W, L in ((1.0, default), (3.0, three), (5.0, five))]
    assert abs((lin[1] - lin[0]) - (lin[2] - lin[1])) < 1e-4 * abs(lin[1])

    for bad in (0.0, -3.0):
        with pytest.raises(ValueError, match="first_frame_weight"):
            loss(first_frame_weight=bad)


def test_a_bad_first_frame_weight_fails_before_the_run(tmp_path):
    with pytest.raises(ValueError, match="first_frame_weight"):
        make_trainer(tiny_config(first_frame_weight=0.0), tmp_path / "ckpt")
