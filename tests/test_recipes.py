"""Named training recipes (model/training/recipes.py): `train teacher --recipe unet-teacher` rebuilds
the released teacher's network, every option given on the command line still wins, and the command
lines written before recipes existed still mean what they meant."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from model.common.checkpoint import read_checkpoint_config
from model.nets.families import net_config_from_dict
from model.training import teacher
from model.training.recipes import TEACHER_RECIPES, teacher_recipe

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "assets" / "teacher"


def parse(*argv: str) -> teacher.TeacherTrainConfig:
    parser = argparse.ArgumentParser()
    teacher.add_arguments(parser)
    args = parser.parse_args(["--latents", "L", "--out", "O", *argv])
    return teacher.config_from_args(args, "minilm")


def released_teacher() -> dict:
    return read_checkpoint_config(TEACHER, kind="world")["configs"]


def test_the_unet_teacher_recipe_rebuilds_the_released_teachers_network():
    shipped = net_config_from_dict(released_teacher()["dit"])
    cfg = parse("--recipe", "unet-teacher")
    # The network's latent width is the latent cache's autoencoder's (8 channels for the release).
    assert teacher.fresh_dit_config(cfg, shipped.latent_channels) == shipped
    assert cfg.shift == released_teacher()["world"]["shift"]


def test_the_guided_recipe_is_the_release_and_distils_the_guidance_it_records():
    cfg = parse("--recipe", "unet-teacher-guided", "--init-from", "assets/teacher-reference")
    notes = released_teacher()["world"]["notes"]
    assert cfg.action_guidance == float(notes["action_guidance"])
    base = parse("--recipe", "unet-teacher")
    assert {**vars(base), "action_guidance": cfg.action_guidance, "init_from": cfg.init_from} == vars(cfg)


def test_the_recipe_holds_the_shipped_teachers_options():
    """The values the model card lists for the current teacher (docs/model-card.md)."""
    cfg = parse("--recipe", "unet-teacher")
    assert (cfg.preset, cfg.teacher_forcing_prob, cfg.context_noise_max, cfg.shift, cfg.level_sampling,
            cfg.copy_context, cfg.switch_share) == ("unet", 0.9, 0.1, 3.0, "uniform", "clean", 0.03)
    net = teacher.fresh_dit_config(cfg, 8)
    assert (net.copy_path, net.action_tokens, net.text_film, net.copy_frames) == (True, True, True, 3)


def test_options_given_on_the_command_line_win_over_the_recipe():
    cfg = parse("--recipe", "unet-teacher", "--shift", "2.0", "--no-text-film", "--copy-context", "input")
    assert (cfg.shift, cfg.copy_context, cfg.teacher_forcing_prob) == (2.0, "input", 0.9)
    assert teacher.fresh_dit_config(cfg, 8).text_film is False


def test_the_unet_preset_alone_is_the_shipped_network():
    """The preset's switches are no longer reset by the options' defaults: --preset unet is the
    released network (before, it silently dropped the copy path)."""
    shipped = net_config_from_dict(released_teacher()["dit"])
    assert teacher.fresh_dit_config(parse("--preset", "unet"), 8) == shipped


def test_the_old_option_strings_still_build_the_same_run():
    old = ("--preset unet --copy-path --action-tokens --teacher-forcing-prob 0.9 --context-noise-max 0.1 "
           "--shift 3.0 --level-sampling uniform --copy-context clean --text-film --switch-share 0.03").split()
    assert teacher.fresh_dit_config(parse(*old), 8) == teacher.fresh_dit_config(parse("--recipe", "unet-teacher"), 8)
    copy_only = parse("--preset", "default", "--copy-path")  # the DiT ablation's arms
    net = teacher.fresh_dit_config(copy_only, 4)
    assert (net.family, net.copy_path, net.action_tokens) == ("dit", True, False)


def test_no_recipe_keeps_the_configs_defaults_and_an_unknown_one_is_refused():
    assert parse() == teacher.TeacherTrainConfig(text_encoder="minilm")
    with pytest.raises(SystemExit):
        parse("--recipe", "no-such-recipe")
    with pytest.raises(ValueError, match="unet-teacher"):
        teacher_recipe("no-such-recipe")


@pytest.mark.parametrize("name", sorted(TEACHER_RECIPES))
def test_every_recipe_names_real_options(name):
    teacher.fresh_dit_config(parse("--recipe", name, "--init-from", "x"), 8)  # replace_config checks each key
