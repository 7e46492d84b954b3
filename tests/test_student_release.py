"""A diagonal student release (a conv U-Net, as the default world is) plays the sampler it records,
through a real worker with no sampler options: 4, 3, then 2 network evaluations a chunk, no
refresh pass, from an engine view, from the prompt alone and from a picture."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from model.tools.release import release_world
from tests.helpers import collect_chunks
from world.actions import Action
from world.server.client import WorldClient

PROMPT = "green hills at noon"
TINY_UNET = {"text_film": True}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    """A student release: the world a DMD run writes, released as the default world is."""
    from model.runtime.world_model import make_random_world

    root = tmp_path_factory.mktemp("student")
    trained = make_random_world(root / "dmd", preset="tiny-unet", text_encoder="hash", dit_options=TINY_UNET,
                                sampler="diagonal", schedule=[4, 3, 2], context_noise=100.0)
    return release_world(trained, root / "release", {"stage": "dmd"})


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("start", ["engine", "text", "image"])
def test_each_start_plays_the_recorded_diagonal_schedule(worker, start):
    client = WorldClient(worker, timeout_s=60.0)
    try:
        options = {"start": "text"} if start == "text" else {}
        image = _png(90) if start == "image" else None
        info = client.open("generated", PROMPT, seed=3, options=options, start_image=image)
        client.send_input(Action(("turn_left",)))
        chunks = collect_chunks(client, 6)
    finally:
        client.close()
    assert info["start"] == start
    # the recorded schedule 4-3-2 (the last count repeats), no refresh pass: what the card reports.
    # An engine or picture start shows its view as chunk 0 (reported as 0 network evaluations),
    # so the first generated chunk is chunk 1 of the schedule.
    expected = [4, 3, 2, 2, 2, 2] if start == "text" else [0, 3, 2, 2, 2, 2]
    assert [c.nfe for c in chunks] == expected
    assert all(c.frames.shape == (3, 64, 64, 3) for c in chunks)
