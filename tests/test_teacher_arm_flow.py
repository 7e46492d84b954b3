"""Motion by resampling: the U-Net's warped previous frame (UNetConfig.flow_warp). The warp itself
(identity at zero flow, a one-pixel shift, the border), the new layers and their zero start, shapes,
streaming == full sequence, causality, a silent warm start from a network without the warp (by state
dict, through the trainer, and from the released teacher), the order in which the new layers learn
(the warped frame's input first, the flow head a step later), the guidance reference, the config and
the command line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model.common.configs import ConfigError, config_to_dict
from model.nets.families import build_net, net_config, net_config_from_dict
from model.nets.unet import CausalUNet, UNetConfig, identity_grid, warp
from model.runtime.world_model import load_world_model
from model.training import teacher
from tests.helpers import (
    TOL,
    assert_causal,
    assert_release_warm_starts_silent,
    inputs,
    make_trainer,
    random_dit,
    stream,
    teacher_options,
    tiny_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

TEACHER = Path(__file__).resolve().parents[1] / "assets" / "teacher"
REFERENCE = TEACHER.parent / "teacher-reference"


def flow_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The layers flow_warp adds: the warped frame's input convolution and the flow head."""
    return {n: p for n, p in model.named_parameters() if n.startswith(("conv_in.warp_in.", "flow_head."))}


def flow_model(preset: str = "tiny-unet") -> CausalUNet:
    return build_net(replace(net_config(preset), flow_warp=True)).eval()


def warped(model: CausalUNet, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the most recent previous frame [B, F, c, h, w], it warped, the flow [B, F, 2, h, w]) for x, actions a."""
    prev = model.previous_frames(x, None)
    acts = model.input_action_planes(a, torch.zeros(x.shape[0], dtype=torch.bool), x)
    with torch.no_grad():
        moved, flow = model.warped_previous(prev, acts)
    return prev[:, :, -model.config.latent_channels :], moved, flow


# ----------------------------------------------------------------------------- the warp


def test_a_zero_flow_samples_the_frame_itself():
    frame = torch.randn(3, 4, 16, 16)
    assert torch.equal(warp(frame, torch.zeros(3, 2, 16, 16)), frame)  # pixel centres exactly at 16x16
    odd = torch.randn(2, 4, 6, 10)
    assert torch.allclose(warp(odd, torch.zeros(2, 2, 6, 10)), odd, atol=1e-6)
    grid = identity_grid(6, 10, torch.float32, torch.device("cpu"))
    assert grid.shape == (1, 6, 10, 2) and grid is identity_grid(6, 10, torch.float32, torch.device("cpu"))


def test_the_grid_built_under_inference_mode_serves_training_later():
    with torch.inference_mode():
        warp(torch.randn(1, 2, 5, 7), torch.zeros(1, 2, 5, 7))  # first asked for here: cached
    flow = torch.zeros(1, 2, 5, 7, requires_grad=True)
    warp(torch.randn(1, 2, 5, 7), flow).sum().backward()
    assert flow.grad is not None


def test_a_constant_flow_of_one_pixel_shifts_the_previous_frame():
    """The flow head's last bias set to one latent pixel in x (then in y): the warped frame is the most
    recent previous frame moved by one pixel, the column (row) at the border repeated; chunk 0 has no
    previous frame and warps zeros into zeros."""
    model = flow_model()
    x, _, a, _, _ = inputs(model.config, 2, 2)
    C = model.config.chunk_frames
    with torch.no_grad():
        model.flow_head.last.bias.copy_(torch.tensor([1.0, 0.0]))
    last, moved, flow = warped(model, x, a)
    assert torch.equal(flow, torch.tensor([1.0, 0.0])[None, None, :, None, None].expand_as(flow))
    assert torch.count_nonzero(last[:, C:]) > 0 and torch.count_nonzero(moved[:, :C]) == 0
    assert torch.allclose(moved[..., :-1], last[..., 1:], atol=1e-6)  # each pixel reads its right neighbour
    assert torch.allclose(moved[..., -1], last[..., -1], atol=1e-6)  # the right border repeats
    assert torch.equal(last[:, C:], x[:, C - 1 : C].expand_as(last[:, C:]))  # the frame just before the chunk
    with torch.no_grad():
        model.flow_head.last.bias.copy_(torch.tensor([0.0, -1.0]))
    last, moved, _ = warped(model, x, a)
    assert torch.allclose(moved[..., 1:, :], last[..., :-1, :], atol=1e-6)  # each pixel reads the row above
    assert torch.allclose(moved[..., 0, :], last[..., 0, :], atol=1e-6)  # the top border repeats


# ----------------------------------------------------------------------------- the layers


def test_the_warp_adds_a_zero_input_convolution_and_a_flow_head_with_a_zero_last_layer():
    model = flow_model()
    cfg = model.config
    c, width = cfg.latent_channels, cfg.conv_width
    assert set(flow_params(model)) == {"conv_in.warp_in.weight", "flow_head.net.0.weight", "flow_head.net.0.bias",
                                       "flow_head.net.2.weight", "flow_head.net.2.bias"}
    assert model.conv_in.warp_in.weight.shape == (width, c, 3, 3)
    # The flow head reads the copy path's K previous frames and the action planes (2A + 1).
    assert model.flow_head.net[0].in_channels == cfg.copy_frames * c + 2 * cfg.action_dim + 1
    assert model.flow_head.last.out_channels == 2
    for name in ("conv_in.warp_in.weight", "flow_head.net.2.weight", "flow_head.net.2.bias"):
        assert torch.count_nonzero(flow_params(model)[name]) == 0, name
    assert torch.count_nonzero(model.flow_head.net[0].weight) > 0  # random: the head can learn
    plain = build_net(net_config("tiny-unet"))
    assert not flow_params(plain) and plain.conv_in.warp_in is None and plain.flow_head is None  # off by default


def test_a_fresh_network_with_the_warp_is_the_plain_one_plus_the_new_layers():
    """warp_in draws nothing from the random generator and the flow head is built last, so the other
    layers' fresh weights, and every preset's without the warp, are what they were."""
    torch.manual_seed(0)
    plain = build_net(net_config("tiny-unet"))
    torch.manual_seed(0)
    flow = flow_model()
    own = flow.state_dict()
    assert set(own) - set(plain.state_dict()) == set(flow_params(flow))
    assert all(torch.equal(own[k], v) for k, v in plain.state_dict().items())


def test_shapes_and_streaming_equal_the_full_sequence():
    model = random_dit("tiny-unet", flow_warp=True)  # every zero-initialised layer perturbed: a moving warp
    x, t, a, text, mask = inputs(model.config, 2, 4)
    drop = torch.tensor([False, True])
    with torch.no_grad():
        full = model(x, t, a, text, mask, drop_actions=drop)
        streamed, _ = stream(model, x, t, a, text, mask, drop)
        model.conv_in.warp_in.weight.zero_()  # the warped frame does move the output
        without = model(x, t, a, text, mask, drop_actions=drop)
    assert full.shape == x.shape
    assert (full - streamed).abs().max() < TOL
    assert not torch.allclose(full, without, atol=1e-4)


def test_a_later_chunk_does_not_change_an_earlier_chunks_output():
    assert_causal(random_dit("tiny-unet", flow_warp=True))


def test_the_network_runs_under_bf16_autocast():
    model = random_dit("tiny-unet", flow_warp=True)
    x, t, a, text, mask = inputs(model.config, 1, 2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, a, text, mask)
    assert out.shape == x.shape and torch.isfinite(out.float()).all()


# ----------------------------------------------------------------------------- warm starts and learning


def test_the_warp_warm_starts_silent_and_learns_its_input_first_then_its_flow():
    """Loaded from a network without the warp, only the new layers are missing and the output is the
    source's, bit for bit. Both zero layers in series: the first step's gradient reaches warp_in (the
    warped frame is the previous frame) but not the flow head (warp_in is zero, so the output does not
    depend on the flow); once warp_in has moved, the second step's reaches the flow head's last layer."""
    source = random_dit("tiny-unet")  # a "trained" network: every zero-initialised part perturbed
    warm = flow_model()
    missing, unexpected = warm.load_state_dict(source.state_dict(), strict=False)
    assert unexpected == [] and set(missing) == set(flow_params(warm))
    x, t, a, text, mask = inputs(source.config, 2, 2)
    with torch.no_grad():
        assert torch.equal(warm(x, t, a, text, mask), source(x, t, a, text, mask))

    warm.train()
    opt = torch.optim.SGD(warm.parameters(), lr=0.1)
    warp_in, last = warm.conv_in.warp_in.weight, warm.flow_head.last

    def step() -> None:
        opt.zero_grad()
        warm(x, t, a, text, mask, drop_actions=torch.tensor([False, True])).square().mean().backward()
        opt.step()

    step()
    assert torch.count_nonzero(warp_in.grad) > 0 and torch.count_nonzero(warp_in) > 0  # moved at once
    assert torch.count_nonzero(last.weight.grad) == 0 and torch.count_nonzero(last.bias.grad) == 0
    assert torch.count_nonzero(last.weight) == 0 and torch.count_nonzero(last.bias) == 0  # not yet
    step()
    assert torch.count_nonzero(last.weight.grad) > 0 and torch.count_nonzero(last.bias.grad) > 0
    assert torch.count_nonzero(last.weight) > 0 and torch.count_nonzero(last.bias) > 0  # the flow learns


def test_the_trainer_warm_starts_the_warp_silent_and_trains_it(tmp_path):
    recipe = dict(preset="tiny-unet", copy_path=True)
    source, batches = make_trainer(tiny_config(steps=2, **recipe), tmp_path / "src")
    source.train(batches)
    cfg = tiny_config(steps=2, flow_warp=True, init_from=str(tmp_path / "src"), **recipe)
    warm, batches = make_trainer(cfg, tmp_path / "warm")
    src = load_world_model(tmp_path / "src").dit.float().eval()
    new = {n for n, _ in warm.model.named_parameters()} - {n for n, _ in src.named_parameters()}
    assert new == set(flow_params(warm.model))
    batch = batches(0, torch.device("cpu"))
    x, t = batch.latents[:, :6], torch.full(batch.latents.shape[:2], 500.0)[:, :6]
    args = (x, t, batch.actions[:, :6], batch.text, batch.text_mask)
    with torch.no_grad():  # begins computing exactly what the checkpoint did
        assert torch.allclose(warm.model.eval()(*args), src(*args), atol=1e-6)
    warm.model.train()
    warm.train(batches)  # two steps: warp_in moves in the first, the flow head in the second
    assert torch.count_nonzero(warm.model.conv_in.warp_in.weight) > 0
    assert torch.count_nonzero(warm.model.flow_head.last.weight) > 0
    saved = load_world_model(tmp_path / "warm").dit
    assert saved.config.flow_warp and flow_params(saved)
    resumed, _ = make_trainer(tiny_config(steps=3, **recipe), tmp_path / "warm", resume=True)  # the run's network
    assert resumed.dit_cfg.flow_warp and resumed.step == 2


@pytest.mark.skipif(not TEACHER.exists(), reason="the released teacher is not in this checkout")
def test_the_released_teacher_warm_starts_the_warp_silent():
    """The run the option is for: the released recipe with --flow-warp, --init-from assets/teacher."""
    model, fresh = assert_release_warm_starts_silent(TEACHER, "--flow-warp", "flow_warp")
    assert set(fresh) == set(flow_params(model)) and len(fresh) == 5


@pytest.mark.skipif(not REFERENCE.exists(), reason="the guidance reference is not in this checkout")
def test_a_reference_without_the_warp_gives_a_run_with_it_its_guided_target():
    """The guided recipe distils assets/teacher-reference, which has no warp: the same network up to the
    silent warp, so it is accepted; a different network is still refused."""
    cfg = teacher_options("--recipe", "unet-teacher-guided", "--flow-warp", "--init-from", str(TEACHER),
                "--guidance-reference", str(REFERENCE))
    released = load_world_model(TEACHER, "cpu", with_text_encoder=False).dit
    net_cfg = teacher.fresh_dit_config(cfg, released.config.latent_channels)
    assert net_cfg.flow_warp
    reference = teacher.guidance_reference(cfg, net_cfg, torch.device("cpu"))
    assert reference is not None and not reference.config.flow_warp
    assert teacher.same_network(reference.config, net_cfg)
    assert teacher.same_network(reference.config, replace(net_cfg, coord_planes=True))  # both silent options
    assert not teacher.same_network(reference.config, replace(net_cfg, conv_width=64))
    with pytest.raises(teacher.CheckpointError, match="not this run's"):
        teacher.guidance_reference(cfg, replace(net_cfg, depth=3), torch.device("cpu"))


# ----------------------------------------------------------------------------- the config and the command line


def test_the_warp_without_a_copy_path_is_refused():
    with pytest.raises(ValueError, match="copy_path"):
        UNetConfig(copy_path=False, flow_warp=True)
    with pytest.raises(ConfigError, match="copy_path"):
        net_config_from_dict({**config_to_dict(net_config("unet")), "copy_path": False, "flow_warp": True})
    with pytest.raises(ValueError, match="copy_path"):
        teacher.fresh_dit_config(teacher_options("--preset", "tiny-unet", "--no-copy-path", "--flow-warp"), 4)


def test_old_configs_load_without_the_warp_and_saved_configs_record_it():
    saved = config_to_dict(net_config("unet"))
    assert saved["flow_warp"] is False  # a saved config records the switch
    old = {k: v for k, v in saved.items() if k != "flow_warp"}
    assert net_config_from_dict(old).flow_warp is False
    on = net_config_from_dict({**saved, "flow_warp": True})
    assert on.flow_warp and isinstance(build_net(on), CausalUNet)


def test_command_line_options():
    cfg = teacher_options("--recipe", "unet-teacher-guided", "--flow-warp")
    assert (cfg.flow_warp, cfg.action_guidance) == (True, 1.0)
    net = teacher.fresh_dit_config(cfg, 8)
    assert net.flow_warp and net.text_film and net.copy_path and not net.coord_planes  # the recipe's, plus the warp
    plain = teacher_options("--recipe", "unet-teacher")
    assert plain.flow_warp is None  # not given: the preset's, off
    assert teacher.fresh_dit_config(plain, 8).flow_warp is False
    assert teacher.fresh_dit_config(teacher_options("--preset", "tiny-unet", "--no-flow-warp"), 4).flow_warp is False
    both = teacher.fresh_dit_config(teacher_options("--preset", "tiny-unet", "--flow-warp", "--coord-planes"), 4)
    assert both.flow_warp and both.coord_planes
    with pytest.raises(ValueError, match="flow_warp"):  # a DiT has no conv stem
        teacher.fresh_dit_config(teacher_options("--preset", "tiny", "--flow-warp"))


def test_the_transfer_start_keeps_the_function_and_trains_the_flow_from_the_first_step(tmp_path):
    """--flow-warp-transfer: conv_in's weights for the most recent previous frame move onto warp_in. At
    flow 0 the warped frame is that frame, so the output is the checkpoint's (up to a sum's order), and
    the flow head's last layer gets gradient in the very first backward pass."""
    source = random_dit("tiny-unet")
    warm = flow_model()
    warm.load_state_dict(source.state_dict(), strict=False)
    c, K = warm.config.latent_channels, warm.config.copy_frames
    recent = source.conv_in.conv_in.weight[:, K * c : (K + 1) * c].clone()
    teacher.transfer_to_warp(warm)
    assert torch.equal(warm.conv_in.warp_in.weight, recent)
    assert torch.count_nonzero(warm.conv_in.conv_in.weight[:, K * c : (K + 1) * c]) == 0
    x, t, a, text, mask = inputs(source.config, 2, 2)
    with torch.no_grad():
        assert torch.allclose(warm(x, t, a, text, mask), source(x, t, a, text, mask), atol=1e-5)
    warm.train()
    warm(x, t, a, text, mask).square().mean().backward()
    assert warm.flow_head.last.weight.grad.abs().sum() > 0  # first order from the start
    with pytest.raises(ValueError, match="flow_warp"):
        teacher.transfer_to_warp(random_dit("tiny-unet"))


def test_the_transfer_start_through_the_trainer_needs_a_warm_start(tmp_path):
    recipe = dict(preset="tiny-unet", copy_path=True)
    source, batches = make_trainer(tiny_config(steps=1, **recipe), tmp_path / "src")
    source.train(batches)
    cfg = tiny_config(steps=1, flow_warp=True, flow_warp_transfer=True, init_from=str(tmp_path / "src"), **recipe)
    warm, _ = make_trainer(cfg, tmp_path / "warm")
    assert torch.count_nonzero(warm.model.conv_in.warp_in.weight) > 0
    assert teacher_options("--flow-warp", "--flow-warp-transfer").flow_warp_transfer
    with pytest.raises(ValueError, match="needs --init-from"):
        make_trainer(tiny_config(steps=1, flow_warp=True, flow_warp_transfer=True, **recipe), tmp_path / "bare")
