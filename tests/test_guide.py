"""Separate classifier-free guidance (the sampler's `guide`): which rows leave out what, that guiding on
one conditioning leaves a network blind to it exactly unguided, validation, and the option threaded
through checkpoints, the generated backend, regeneration of older recordings and the CLIs."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace

import pytest
import torch

from model.diffusion.samplers import GUIDES, make_sampler, teacher_sampler, uniform_sampler
from model.runtime.stream import Conditioning, generate_chunk
from tests.helpers import random_dit

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# ----------------------------------------------------------------------------- conditioning rows


def prompt_rows(cfg, batch: int = 2, length: int = 5):
    g = torch.Generator().manual_seed(0)
    text = torch.randn(batch, length, cfg.text_dim, generator=g)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[-1, 2:] = False  # prompts of different lengths
    return text, mask


@pytest.mark.parametrize(
    "guide, uncond_keeps_prompt, uncond_drops_actions",
    [("all", False, True), ("actions", True, True), ("text", False, False)],
)
def test_uncond_rows_leave_out_what_the_guide_says(guide, uncond_keeps_prompt, uncond_drops_actions):
    text, mask = prompt_rows(random_dit().config)
    cond = Conditioning.build(text, mask, True, guide)
    assert cond.text.shape[0] == cond.text_mask.shape[0] == cond.drop_actions.shape[0] == 4
    assert torch.equal(cond.text, torch.cat([text, text]))
    assert torch.equal(cond.text_mask[:2], mask) and not cond.drop_actions[:2].any()  # cond rows: everything
    assert torch.equal(cond.text_mask[2:], mask if uncond_keeps_prompt else torch.zeros_like(mask))
    assert cond.drop_actions[2:].tolist() == [uncond_drops_actions] * 2
    plain = Conditioning.build(text, mask, False, guide)  # no guidance: the cond rows alone, whatever the guide
    assert torch.equal(plain.text_mask, mask) and plain.drop_actions.tolist() == [False, False]


def test_default_guide_is_the_joint_guidance_of_before():
    text, mask = prompt_rows(random_dit().config)
    a, b = Conditioning.build(text, mask, True), Conditioning.build(text, mask, True, "all")
    assert all(torch.equal(x, y) for x, y in zip((a.text, a.text_mask, a.drop_actions),
                                                 (b.text, b.text_mask, b.drop_actions)))  # fmt: skip
    assert teacher_sampler(3).guide == "all" and teacher_sampler(3).describe()["guide"] == "all"


# ----------------------------------------------------------------------------- guidance on one conditioning


class Blind(torch.nn.Module):
    """A DiT that cannot see one conditioning: "actions" (every row gets zero actions, never the null
    action) or "text" (every row's prompt masked out)."""

    def __init__(self, dit, blind_to: str):
        super().__init__()
        self.dit, self.blind_to, self.config = dit, blind_to, dit.config

    def forward(self, x, t, actions, text, text_mask, cache=None, drop_actions=None, **kwargs):
        if self.blind_to == "actions":
            actions, drop_actions = torch.zeros_like(actions), torch.zeros_like(drop_actions)
        else:
            text_mask = torch.zeros_like(text_mask)
        return self.dit(x, t, actions, text, text_mask, cache, drop_actions, **kwargs)

    def new_cache(self):
        return self.dit.new_cache()


def rollout(net, sampler, chunks: int = 2) -> torch.Tensor:
    cfg = net.config
    text, mask = prompt_rows(cfg, batch=1)
    cond = Conditioning.build(text, mask, sampler.guidance > 0, sampler.guide)
    g = torch.Generator().manual_seed(5)
    actions = torch.rand(chunks, 1, cfg.chunk_frames, cfg.action_dim, generator=g)
    cache, outs = net.new_cache(), []
    with torch.no_grad():
        for i in range(chunks):
            out = generate_chunk(net, cache, sampler, cond, actions[i], lambda shape: torch.randn(shape, generator=g))
            outs.append(out.latents)
    return torch.cat(outs, 1)


@pytest.mark.parametrize("guide, other", [("actions", "text"), ("text", "actions")])
def test_guiding_on_what_the_network_ignores_changes_nothing(guide, other):
    """c - u_a is the actions' effect alone: a network blind to actions gives exactly its unguided
    chunks under guide "actions" (the uncond rows keep the prompt), while joint guidance, guidance on
    the other conditioning, or a network that sees actions all move them (likewise for "text")."""
    dit = random_dit()
    blind = Blind(dit, blind_to=guide)
    unguided = uniform_sampler(guidance=0.0)
    guided = replace(uniform_sampler(guidance=3.0), guide=guide)
    reference = rollout(blind, unguided)
    torch.testing.assert_close(rollout(blind, guided), reference, rtol=0, atol=1e-5)
    for net, sampler in ((blind, replace(guided, guide="all")), (blind, replace(guided, guide=other)),
                         (dit, guided)):  # fmt: skip
        base = reference if net is blind else rollout(dit, unguided)
        assert (rollout(net, sampler) - base).abs().max() > 1e-2, (sampler.guide, net is blind)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "build",
    [
        lambda: make_sampler("teacher", guide="keys"),
        lambda: make_sampler("uniform", guidance=2.0, guide="ACTIONS"),
        lambda: replace(teacher_sampler(3), guide=None),
        lambda: Conditioning.build(torch.zeros(1, 2, 4), torch.ones(1, 2, dtype=torch.bool), True, "prompt"),
    ],
)
def test_an_unknown_guide_names_the_options(build):
    with pytest.raises(ValueError, match="guide must be one of all, actions, text"):
        build()


def test_a_guide_without_guidance_is_refused_not_ignored():
    with pytest.raises(ValueError, match="needs guidance > 0"):
        make_sampler("uniform", guide="actions")  # the uniform sampler's own guidance is 0
    assert make_sampler("uniform", guide="all").guidance == 0.0  # "all" is the default: nothing to ignore
    s = make_sampler("diagonal", guidance=2.0, guide="text", schedule=[3, 2])
    assert (s.guide, s.rows, s.nfe(0)) == ("text", 2, 6) and s.describe()["guide"] == "text"
    assert GUIDES == ("all", "actions", "text")


# ----------------------------------------------------------------------------- checkpoints and backend


def test_a_checkpoint_config_without_guide_loads_as_all(world_dir, tmp_path):
    from model.runtime.world_model import load_world_model

    old = shutil.copytree(world_dir, tmp_path / "old")
    meta = json.loads((old / "config.json").read_text())
    meta["configs"]["world"].pop("guide", None)  # a checkpoint written before the option
    (old / "config.json").write_text(json.dumps(meta))
    world = load_world_model(old)
    assert world.config.guide is None and world.sampler().guide == "all"
    assert world.sampler(guide="actions").describe()["guide"] == "actions"  # the teacher's guidance 3
    meta["configs"]["world"]["guide"] = "actions"
    (old / "config.json").write_text(json.dumps(meta))
    world = load_world_model(old)
    assert world.sampler().guide == "actions" and world.sampler(guide="all").guide == "all"
    assert world.sampler("uniform").guide == "all"  # another sampler: its own defaults, as for guidance
    assert world.sampler(guidance=0).guide == "all"  # guidance off: the checkpoint's guide goes with it


def test_the_generated_backend_takes_guide_and_says_so(world_dir):
    from world.actions import Action
    from world.backend import BackendError
    from world.backends.registry import create_backend

    b = create_backend("generated", checkpoint=str(world_dir), device="cpu", steps=2, guide="actions")
    assert b.sampler.guide == "actions" and b.sampler.guidance == 3.0
    assert b.info.description.endswith("guidance 3 on actions")
    assert b._facts["sampler"]["guide"] == "actions" and b._facts["sampler_options"]["guide"] == "actions"
    b.reset(0, "green hills at noon")
    assert b.step_chunk([Action(("forward",))] * 3).nfe == 2 * (2 + 1)
    plain = create_backend("generated", checkpoint=str(world_dir), device="cpu", steps=2)
    assert plain.info.description.endswith("guidance 3") and plain.sampler.guide == "all"
    assert plain.batch_key() != b.batch_key()  # sessions with other guides are never batched together
    for options, message in (({"guide": "keys"}, "all, actions, text"),
                             ({"sampler": "uniform", "guide": "actions"}, "needs guidance > 0")):  # fmt: skip
        with pytest.raises(BackendError, match=message):
            create_backend("generated", checkpoint=str(world_dir), device="cpu", **options)


def test_recordings_made_before_guide_regenerate_with_the_same_settings(world_dir, tmp_path):
    from model.runtime.regenerate import regenerating_backend
    from world.backends.registry import create_backend

    made = create_backend("generated", checkpoint=str(world_dir), device="cpu", steps=2)
    old = json.loads(json.dumps(made._facts))
    del old["sampler"]["guide"], old["sampler_options"]["guide"]  # as recorded before the option
    again, same = regenerating_backend({"model": old}, tmp_path)
    assert same and again.sampler == made.sampler
    guided = create_backend("generated", checkpoint=str(world_dir), device="cpu", steps=2, guide="actions")
    again, same = regenerating_backend({"model": json.loads(json.dumps(guided._facts))}, tmp_path)
    assert same and again.sampler.guide == "actions"
    changed = json.loads(json.dumps(guided._facts))
    changed["sampler_options"]["guide"] = None  # rebuilt with "all": not the recorded sampler
    assert not regenerating_backend({"model": changed}, tmp_path)[1]


# ----------------------------------------------------------------------------- command lines


def test_eval_scoreboard_and_play_take_guidance_and_guide():
    from controls import play
    from model.evaluation import scoreboard, suite
    from model.evaluation.compare import sampler_text

    for add in (suite.add_arguments, scoreboard.add_arguments):
        parser = argparse.ArgumentParser()
        add(parser)
        args = parser.parse_args(["--guidance", "2", "--guide", "actions"])
        assert suite.parse_world_options(args) == {"guidance": 2.0, "guide": "actions"}
        with pytest.raises(SystemExit):
            parser.parse_args(["--guide", "keys"])
        engine = parser.parse_args(["--backend", "engine", "--guide", "actions"])
        with pytest.raises(ValueError, match="--guide"):
            suite.parse_world_options(engine)
    parser = argparse.ArgumentParser()
    play.add_arguments(parser)
    plan = play.make_plan(parser.parse_args(["--backend", "generated", "--guidance", "2", "--guide", "actions"]))
    assert plan.options == {"guidance": 2.0, "guide": "actions"}
    with pytest.raises(play.UsageError, match="--guide"):
        play.make_plan(parser.parse_args(["--backend", "engine", "--guide", "actions"]))
    config = {"name": "uniform", "steps": [4], "refresh": True, "guidance": 2.0}
    assert sampler_text({"sampler_config": config}) == "uniform 4, g=2"  # recorded before `guide`
    assert sampler_text({"sampler_config": {**config, "guide": "actions"}}) == "uniform 4, g=2 on actions"
