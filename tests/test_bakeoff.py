"""The bake-off's sampler: no guidance by rule, or guidance on the actions alone when asked."""

from __future__ import annotations

import pytest

from model.evaluation.bakeoff import SAMPLER, sampler_options
from world.backends.registry import create_backend


def test_the_bakeoff_samples_without_guidance_unless_asked(tmp_path):
    assert sampler_options(0.0) == SAMPLER and "guide" not in sampler_options(0.0)
    guided = sampler_options(2.0)
    assert guided["guidance"] == 2.0 and guided["guide"] == "actions"  # the prompt is kept in both rows
    assert {k: v for k, v in guided.items() if k not in ("guidance", "guide")} == {
        k: v for k, v in SAMPLER.items() if k != "guidance"}
    with pytest.raises(ValueError, match="guidance must be >= 0"):
        sampler_options(-1.0)


def test_a_guided_bakeoff_world_says_it_guides_the_actions(world_dir):
    world = create_backend("generated", device="cpu", checkpoint=str(world_dir), **sampler_options(2.0))
    try:
        assert world.sampler.guidance == 2.0 and world.sampler.guide == "actions"
    finally:
        world.close()


def test_own_sampler_plays_the_release_and_refuses_guidance(tmp_path):
    from model.evaluation.bakeoff import played_sampler
    from model.runtime.world_model import make_random_world

    student = make_random_world(tmp_path / "student", sampler="diagonal", schedule=[4, 3, 2], context_noise=100.0)
    assert sampler_options(0.0, own=True) == {}
    with pytest.raises(ValueError, match="no --guidance"):
        sampler_options(1.0, own=True)
    world = create_backend("generated", device="cpu", checkpoint=str(student), **sampler_options(0.0, own=True))
    try:
        assert world.sampler.name == "diagonal" and not world.sampler.refresh
        assert [world.sampler.nfe(i) for i in range(4)] == [4, 3, 2, 2]
        recorded = played_sampler(world.model.config)
        assert recorded["sampler"] == "diagonal" and recorded["schedule"] == [4, 3, 2]
        assert recorded["context_noise"] == 100.0 and recorded["own_sampler"]
    finally:
        world.close()
