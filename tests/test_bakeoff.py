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
