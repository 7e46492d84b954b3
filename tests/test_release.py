"""model.tools.release: a training checkpoint becomes a bundle-sized world with release weights only."""

from __future__ import annotations

import json

import pytest
import torch

from model.common.checkpoint import CheckpointError
from model.runtime.world_model import load_world_model, make_random_world, save_world
from model.tools.release import main, release_world


def _training_checkpoint(tmp_path):
    """A world checkpoint that also carries what a DMD run saves: a critic and an online generator."""
    world = load_world_model(make_random_world(tmp_path / "w", sampler="diagonal", schedule=[4, 3, 2],
                                               context_noise=250.0), "cpu", with_text_encoder=False)
    critic = type(world.dit)(world.dit.config)
    return save_world(tmp_path / "train", world.dit, world.autoencoder, world.config, 7,
                      extra_modules={"critic": critic, "dit_online": critic}), world


def test_release_keeps_only_playable_modules_and_the_distillation_settings(tmp_path):
    source, world = _training_checkpoint(tmp_path)
    out = release_world(source, tmp_path / "assets" / "default_world", {"stage": "dmd"})
    meta = json.loads((out / "config.json").read_text())
    assert sorted(meta["modules"]) == ["autoencoder", "dit"]
    assert sorted(p.name for p in out.iterdir()) == ["autoencoder.safetensors", "config.json", "dit.safetensors"]
    released = load_world_model(out, "cpu", with_text_encoder=False)
    assert released.step == 7
    assert released.config.schedule == [4, 3, 2] and released.config.context_noise == 250.0
    assert released.config.notes["stage"] == "dmd"
    for a, b in zip(released.dit.state_dict().values(), world.dit.state_dict().values()):
        torch.testing.assert_close(a, b.half().float())  # fp16 release of the same weights


def test_release_replaces_an_existing_bundle(tmp_path):
    source, _ = _training_checkpoint(tmp_path)
    target = tmp_path / "default_world"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    release_world(source, target)
    assert not (target / "stale.txt").exists()


def test_release_errors_name_the_problem(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    source, _ = _training_checkpoint(tmp_path)
    assert main([str(source), str(tmp_path / "out"), "--note", "no-equals"]) == 2
    with pytest.raises(CheckpointError):
        release_world(tmp_path / "missing", tmp_path / "out2")


def test_release_sets_the_sampler_a_teacher_was_measured_with(tmp_path):
    world = load_world_model(make_random_world(tmp_path / "w"), "cpu", with_text_encoder=False)
    assert world.config.steps is None and world.config.guidance is None  # the sampler's own defaults
    assert main([str(tmp_path / "w"), str(tmp_path / "t"), "--steps", "8", "--guidance", "0"]) == 0
    released = load_world_model(tmp_path / "t", "cpu", with_text_encoder=False)
    assert (released.config.steps, released.config.guidance) == (8, 0.0)
    sampler = released.sampler()
    assert sampler.guidance == 0.0 and len(sampler.levels(0)) == 8
    assert main([str(tmp_path / "w"), str(tmp_path / "bad"), "--steps", "0"]) == 2  # refused, nothing written
    assert not (tmp_path / "bad").exists()


def test_release_sets_the_diagonal_schedule_a_student_was_measured_with(tmp_path, capsys):
    make_random_world(tmp_path / "w", sampler="diagonal")
    assert main([str(tmp_path / "w"), str(tmp_path / "t"), "--schedule", "4,3,1"]) == 0
    released = load_world_model(tmp_path / "t", "cpu", with_text_encoder=False)
    assert released.config.schedule == [4, 3, 1]
    sampler = released.sampler()
    assert [sampler.steps(i) for i in range(4)] == [4, 3, 1, 1] and sampler.context_pass(3)
    for bad, words in (("4,x", "comma-separated whole numbers"), ("4,40", "more steps than the teacher's grid")):
        assert main([str(tmp_path / "w"), str(tmp_path / "bad"), "--schedule", bad]) == 2
        assert words in capsys.readouterr().err and not (tmp_path / "bad").exists()
