"""Student distillation end to end on a tiny random teacher: ODE pairs (made once, resumable),
one init step and one DMD step writing playable diagonal worlds, one context noise for the
training rollout and inference, exact resume, --max-minutes, and the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from model.diffusion.samplers import diagonal_grid
from model.runtime.stream import WorldStream
from model.runtime.world_model import load_world_model, make_random_world
from model.training.distill import sample_exits
from model.training.encode_latents import CACHE_FILE, FORMAT, SHARD_PATTERN, TEXT_FILE, VERSION
from model.training.ode_pairs import OdePairs, OdePairsConfig, OdePairsError, build_ode_pairs, shard_spec
from model.training.student import STUDENT_PRESETS, DMDTrainer, InitTrainer, StudentTrainConfig, load_teacher
from tests.helpers import RecordingDiT, SyntheticClips, text_table

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

CPU = torch.device("cpu")
PAIRS = OdePairsConfig(pairs=4, shard=2, clip_chunks=2, teacher_steps=3)


@pytest.fixture(scope="module", params=[{}, {"copy_path": True, "action_tokens": True}], ids=["plain", "copy"])
def teacher(tmp_path_factory, request):
    """Every student test runs on a plain teacher and on one with the copy path and action tokens."""
    directory = tmp_path_factory.mktemp("teacher") / "t"
    return load_teacher(make_random_world(directory, text_encoder="hash", dit_options=request.param), CPU)


def make_pairs(teacher, directory, cfg: OdePairsConfig = PAIRS, context_noise: float = 100.0,
               deadline: float | None = None) -> bool:
    tokens, mask = text_table()
    return build_ode_pairs(teacher.dit, SyntheticClips(), tokens, mask, directory, cfg,
                           diagonal_grid(3.0, context_noise), 3.0, teacher.identity, CPU, deadline)


@pytest.fixture(scope="module")
def pairs(teacher, tmp_path_factory):
    directory = tmp_path_factory.mktemp("pairs") / "ode_pairs"
    assert make_pairs(teacher, directory)
    return OdePairs(directory)


def student_config(stage: str, **overrides) -> StudentTrainConfig:
    base = dict(steps=1, batch=2, ckpt_every=1, log_every=1, text_encoder="hash", shift=3.0, pairs=PAIRS)
    return dataclasses.replace(STUDENT_PRESETS[stage], **{**base, **overrides})


@pytest.fixture(scope="module")
def init_checkpoint(teacher, pairs, tmp_path_factory):
    trainer = InitTrainer(student_config("init"), teacher, pairs, tmp_path_factory.mktemp("init"), CPU)
    trainer.train()
    return trainer.checkpoint


def dmd_trainer(teacher, pairs, init_checkpoint, out, **overrides) -> DMDTrainer:
    return DMDTrainer(student_config("dmd", **overrides), teacher, pairs, out, CPU, init_checkpoint)


# ----------------------------------------------------------------------------- ODE pairs


def test_ode_pairs_hold_teacher_trajectories(teacher, pairs):
    K, Fr = len(pairs.grid), 2 * 3
    assert len(pairs) == 4 and pairs.states.shape == (4, K, Fr, 4, 16, 16) and pairs.x0.shape == (4, Fr, 4, 16, 16)
    assert pairs.grid == pytest.approx(diagonal_grid(3.0, 100.0)) and pairs.grid[-1] == pytest.approx(0.1)
    _, _, held, noise = shard_spec(SyntheticClips(), 0, PAIRS, (4, 16, 16))
    assert torch.equal(pairs.states[:2, 0].float(), noise.half().float())  # level 0 = the starting noise
    assert torch.isfinite(pairs.x0.float()).all()
    assert pairs.held.any()
    for actions in pairs.actions[pairs.held]:  # held rows keep one action throughout
        assert (actions == actions[0]).all()
    assert pairs.meta["teacher"] == teacher.identity
    b = pairs.batch(3, 2, 0, CPU)
    assert b.states.shape == (2, K, Fr, 4, 16, 16) and b.text.shape == (2, 6, 384) and b.noise.shape[1] == Fr


def test_ode_pairs_are_made_once_resume_and_refuse_other_settings(teacher, tmp_path):
    directory = tmp_path / "p"
    assert not make_pairs(teacher, directory, deadline=time.monotonic() - 1)  # out of time: nothing made
    assert not (directory / "pairs_0000.safetensors").exists()
    assert make_pairs(teacher, directory)
    stamp = (directory / "pairs_0001.safetensors").stat().st_mtime_ns
    assert make_pairs(teacher, directory)  # complete: nothing regenerated
    assert (directory / "pairs_0001.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(OdePairsError, match="grid"):
        make_pairs(teacher, directory, context_noise=200.0)
    with pytest.raises(OdePairsError, match="config"):
        make_pairs(teacher, directory, dataclasses.replace(PAIRS, teacher_steps=5))


# ----------------------------------------------------------------------------- stages


def test_init_step_writes_a_playable_diagonal_world(teacher, pairs, tmp_path):
    trainer = InitTrainer(student_config("init", schedule=[3, 2]), teacher, pairs, tmp_path, CPU)
    metrics = trainer.train()
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(trainer.student.parameters(), teacher.dit.parameters()))
    world = load_world_model(tmp_path)  # the stage directory holds checkpoint/
    assert (world.config.sampler, world.config.schedule, world.config.context_noise) == ("diagonal", [3, 2], 100.0)
    assert world.step == 1
    assert world.sampler() == trainer.sampler
    stream = world.stream()
    stream.reset(0, "green hills")
    assert stream.decode(stream.next_chunk(np.zeros((3, 12), dtype=np.float32)).latents).shape == (3, 64, 64, 3)


def test_dmd_step_end_to_end(teacher, pairs, init_checkpoint, tmp_path):
    trainer = dmd_trainer(teacher, pairs, init_checkpoint, tmp_path)
    teacher_before = [p.clone() for p in teacher.dit.parameters()]
    gen_before = [p.clone() for p in trainer.generator.parameters()]
    critic_before = [p.clone() for p in trainer.critic.parameters()]
    metrics = trainer.train()
    for key in ("loss_gen", "loss_dmd", "loss_flow_dmd", "loss_flow_reg", "loss_critic", "grad_norm",
                "critic_grad_norm", "motion", "motion_teacher"):
        assert np.isfinite(metrics[key]), key
    assert metrics["grad_norm"] > 0 and metrics["motion"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(gen_before, trainer.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, trainer.critic.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, teacher.dit.parameters()))
    world = load_world_model(tmp_path)
    assert world.config.sampler == "diagonal" and world.config.notes["stage"] == "dmd"
    meta = json.loads((trainer.checkpoint / "config.json").read_text())
    assert {"dit", "dit_online", "critic", "autoencoder"} <= set(meta["modules"])
    stream = world.stream()
    stream.reset(1, "snowy mountains")
    assert stream.next_chunk(np.zeros((3, 12), dtype=np.float32)).steps == 4


def test_dmd_rollouts_can_be_the_first_chunks_of_each_pair(teacher, pairs, init_checkpoint, tmp_path):
    b = pairs.batch(0, 2, 0, CPU)
    C = teacher.dit.config.chunk_frames
    short = b.leading(C)
    assert short.x0.shape[1] == C and b.x0.shape[1] == 2 * C
    assert torch.equal(short.noise, b.noise[:, :C]) and torch.equal(short.actions, b.actions[:, :C])
    assert torch.equal(short.states, b.states[:, :, :C]) and torch.equal(short.x0, b.x0[:, :C])
    with pytest.raises(ValueError, match="asked for the first"):
        b.leading(3 * C)
    with pytest.raises(ValueError, match="rollout_chunks"):
        student_config("dmd", rollout_chunks=-1)
    trainer = dmd_trainer(teacher, pairs, init_checkpoint, tmp_path, rollout_chunks=1)
    recorder = RecordingDiT(trainer.generator)
    trainer.generator = recorder
    trainer.train_step()
    assert len(recorder.per_chunk()) == 1  # the generator rolled out one chunk of the two-chunk pairs
    trainer.generator = recorder.dit
    recorder = RecordingDiT(trainer.generator)
    trainer.generator, trainer.cfg.rollout_chunks = recorder, 0
    trainer.train_step()
    assert len(recorder.per_chunk()) == 2  # 0: every chunk the pairs have


def test_training_rollout_and_inference_write_the_same_context_noise(teacher, pairs, init_checkpoint, tmp_path):
    trainer = dmd_trainer(teacher, pairs, init_checkpoint, tmp_path, context_noise=150.0)
    trainer.train()
    recorder = RecordingDiT(trainer.generator)
    trainer.generator = recorder
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # random exits, with and without gradient
        trainer.rollout(pairs.batch(0, 2, 0, CPU), gen, grad=True)
    training = [ts[-1] for ts in recorder.per_chunk()]
    world = load_world_model(tmp_path)
    inference = RecordingDiT(world.dit)
    stream = WorldStream(inference, world.autoencoder, world.text_encoder, world.sampler(), CPU)
    stream.reset(0, "desert at dusk")
    for _ in range(2):
        stream.next_chunk(np.zeros((3, 12), dtype=np.float32))
    assert world.sampler() == trainer.sampler
    assert set(training) == {150.0} == {ts[-1] for ts in inference.per_chunk()}
    assert sample_exits(trainer.sampler, 2, gen)  # exits are drawn per chunk of the rollout


def test_resume_continues_exactly(teacher, pairs, init_checkpoint, tmp_path):
    straight = dmd_trainer(teacher, pairs, init_checkpoint, tmp_path / "a", steps=3, generator_every=2)
    straight.train()
    first = dmd_trainer(teacher, pairs, init_checkpoint, tmp_path / "b", steps=1, generator_every=2)
    first.train()
    resumed = dmd_trainer(teacher, pairs, init_checkpoint, tmp_path / "b", steps=3, generator_every=2)
    resumed.resume()
    assert resumed.step == 1
    resumed.train()
    for name in ("generator", "critic", "ema"):
        for a, b in zip(getattr(straight, name).parameters(), getattr(resumed, name).parameters()):
            assert torch.equal(a, b), name


def test_max_minutes_saves_and_stops(teacher, pairs, init_checkpoint, tmp_path):
    trainer = dmd_trainer(teacher, pairs, init_checkpoint, tmp_path, steps=5, ckpt_every=100)
    trainer.train(deadline=time.monotonic() - 1)
    assert trainer.stopped and trainer.step == 1
    assert load_world_model(tmp_path).step == 1


def test_unworkable_schedules_are_refused_before_training():
    with pytest.raises(ValueError, match="positive"):
        StudentTrainConfig(schedule=[3, 0])
    with pytest.raises(ValueError, match="context_noise"):
        StudentTrainConfig(context_noise=1000.0)
    with pytest.raises(ValueError, match="4-level diagonal grid"):
        StudentTrainConfig(schedule=[5, 4, 3, 2])  # playable as an ablation, not trainable on the pairs


# ----------------------------------------------------------------------------- command line


def write_latent_cache(directory, episodes: int = 2, frames: int = 9) -> None:
    """A minimal latent cache (model/training/encode_latents.py layout) without rendering or encoding anything."""
    directory.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    shards = []
    for e in range(episodes):
        save_file({"latents": torch.randn(frames, 4, 16, 16, generator=g).half(),
                   "actions": (torch.rand(frames, 12, generator=g) > 0.7).float(),
                   "prompt_ids": torch.full((frames,), e % 2, dtype=torch.int64),
                   "episode": torch.full((frames,), e, dtype=torch.int64), "frame": torch.arange(frames)},
                  str(directory / SHARD_PATTERN.format(e)))
        shards.append({"file": SHARD_PATTERN.format(e), "episode": e, "episode_id": f"ep{e}", "frames": frames,
                       "chunk_frames": 3})
    tokens, mask = text_table(prompts=2)
    save_file({"tokens": tokens.half(), "mask": mask}, str(directory / TEXT_FILE))
    meta = {"format": FORMAT, "version": VERSION, "complete": True, "autoencoder": {}, "latent_shape": [4, 16, 16],
            "text_encoder": "hash", "chunk_frames": 3, "shards": shards}
    (directory / CACHE_FILE).write_text(json.dumps(meta))


def test_command_line_runs_both_stages(tmp_path):
    from model.training import train as train_cli

    write_latent_cache(tmp_path / "cache")
    world = make_random_world(tmp_path / "teacher", text_encoder="hash")
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    common = ["--teacher", str(world), "--out", str(tmp_path / "run"), "--device", "cpu", "--steps", "1",
              "--batch", "2", "--clip-chunks", "2"]
    init = parser.parse_args(["student", "--stage", "init", "--latents", str(tmp_path / "cache"), "--pairs", "2",
                              "--pair-shard", "2", "--teacher-steps", "2", "--context-noise", "150", *common])
    assert train_cli.run(init) == 0
    dmd = parser.parse_args(["student", "--stage", "dmd", *common])
    assert train_cli.run(dmd) == 0
    run = tmp_path / "run"
    assert json.loads((run / "ode_pairs" / "meta.json").read_text())["complete"]
    assert (run / "init" / "student_init.csv").exists() and (run / "dmd" / "student_dmd.csv").exists()
    student = load_world_model(run / "dmd")
    assert (student.config.sampler, student.config.context_noise) == ("diagonal", 150.0)  # from the init stage
    with pytest.raises(SystemExit, match="no init checkpoint"):
        train_cli.run(parser.parse_args(["student", "--stage", "dmd", "--init", str(tmp_path / "none"), *common]))
