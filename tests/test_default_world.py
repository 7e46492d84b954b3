"""The bundled default world is the distilled diagonal student its model card describes."""

from __future__ import annotations

import json

import pytest

from model.diffusion.samplers import CONTEXT_NOISE, DIAGONAL_SCHEDULE
from model.runtime.world_model import load_world_model
from world.bundled import DEFAULT_CHECKPOINT

pytestmark = pytest.mark.skipif(not (DEFAULT_CHECKPOINT / "config.json").is_file(),
                                reason="no bundled assets/default_world in this checkout")


def test_default_world_is_a_diagonal_student_small_enough_to_commit():
    meta = json.loads((DEFAULT_CHECKPOINT / "config.json").read_text())
    assert meta["kind"] == "world" and sorted(meta["modules"]) == ["autoencoder", "dit"]
    for path in DEFAULT_CHECKPOINT.iterdir():
        assert path.stat().st_size <= 16 * 2**20, path  # committed files stay <= 16 MiB
    world = load_world_model(DEFAULT_CHECKPOINT, "cpu", with_text_encoder=False)
    assert world.config.sampler == "diagonal"
    assert world.config.notes["stage"] == "dmd" and world.step > 0
    sampler = world.sampler()
    # the sampler it plays with is the one it was distilled with: schedule and context noise
    assert list(world.config.schedule) == list(DIAGONAL_SCHEDULE)
    assert sampler.context_noise == world.config.context_noise == CONTEXT_NOISE
    assert not sampler.refresh and [sampler.nfe(i) for i in range(4)] == [4, 3, 2, 2]
