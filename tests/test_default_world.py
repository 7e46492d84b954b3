"""The bundled default world is the distilled diagonal student its model card describes: it plays the
sampler the card reports, and it starts from the engine, a prompt or an image through a real worker."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.diffusion.samplers import CONTEXT_NOISE
from model.runtime.world_model import load_world_model
from tests.helpers import collect_chunks
from world.actions import Action
from world.bundled import DEFAULT_CHECKPOINT
from world.server.client import WorldClient

pytestmark = pytest.mark.skipif(not (DEFAULT_CHECKPOINT / "config.json").is_file(),
                                reason="no bundled assets/default_world in this checkout")

CARD = Path(__file__).resolve().parents[1] / "docs" / "model-card-default-world.md"
PROMPT = "green hills at noon"


def world_config() -> dict:
    return json.loads((DEFAULT_CHECKPOINT / "config.json").read_text())["configs"]["world"]


def test_default_world_is_a_diagonal_student_small_enough_to_commit():
    meta = json.loads((DEFAULT_CHECKPOINT / "config.json").read_text())
    assert meta["kind"] == "world" and sorted(meta["modules"]) == ["autoencoder", "dit"]
    for path in DEFAULT_CHECKPOINT.iterdir():
        assert path.stat().st_size <= 16 * 2**20, path  # committed files stay <= 16 MiB
    world = load_world_model(DEFAULT_CHECKPOINT, "cpu", with_text_encoder=False)
    assert world.config.sampler == "diagonal"
    assert world.config.notes["stage"] == "dmd" and world.step > 0
    sampler = world.sampler()
    # Its context is written at the level it was distilled with, never refreshed clean.
    assert sampler.context_noise == world.config.context_noise == CONTEXT_NOISE and not sampler.refresh
    # Every chunk's steps are on the 4-level grid DMD trained on; a chunk of one step is a rollout's
    # exit at its first step, its context written by a K/V-only pass (tests/test_context_pass.py).
    steps = [sampler.steps(i) for i in range(4)]
    assert max(steps) <= 4 and steps[0] == 4
    assert [sampler.nfe(i) for i in range(4)] == [n + int(n == 1) for n in steps]


def test_the_model_card_reports_the_sampler_the_release_plays():
    """The card's sampler line ("Sampler: `diagonal`, schedule `4-3-1`, context noise t = 100") is
    what the release records, so `./world.sh` plays what the card measured."""
    match = re.search(r"Sampler: `(\w+)`, schedule `([\d-]+)`, context noise t = (\d+)", CARD.read_text())
    assert match, f"{CARD.name} has no sampler line"
    world = world_config()
    name, schedule, context = match.groups()
    assert name == world["sampler"]
    assert [int(n) for n in schedule.split("-")] == world["schedule"]
    assert float(context) == world["context_noise"]


@pytest.fixture(scope="module")
def default_worker():
    """A real worker process on loopback serving the bundled default world."""
    from world.server.process import start_worker_process, stop_worker_process

    # A loaded CI machine may take seconds a chunk: the budget that refuses slow sessions is lifted.
    proc, endpoint = start_worker_process(extra_args=("--checkpoint", str(DEFAULT_CHECKPOINT), "--device", "cpu",
                                                      "--chunk-budget", "60"))
    yield endpoint
    stop_worker_process(proc)


def play(endpoint: str, chunks: int, **open_options) -> tuple[dict, list]:
    client = WorldClient(endpoint, timeout_s=120.0)
    try:
        info = client.open("generated", PROMPT, seed=3, **open_options)
        client.send_input(Action(("turn_left",)))
        return info, collect_chunks(client, chunks)
    finally:
        client.close()


def test_the_default_world_starts_from_the_engine_a_prompt_and_an_image_through_a_worker(default_worker):
    world = world_config()
    schedule = world["schedule"]
    info, (view, *steps) = play(default_worker, 4)
    assert info["start"] == view.extra["start"] == "engine"
    assert view.frames.shape == (3, 64, 64, 3) and view.frames.std() > 0  # the engine's own view
    # The session plays the release's schedule: chunks 1, 2, 3 take its steps (and a 1-step chunk its
    # K/V-only context pass at the context level).
    for i, chunk in enumerate(steps, start=1):
        n = schedule[min(i, len(schedule) - 1)]
        assert chunk.steps == n and chunk.nfe == n + int(n == 1)
        assert chunk.extra["timesteps"][-1] == round(world["context_noise"])
        assert chunk.frames.shape == (3, 64, 64, 3)
    info, (text_view, text_next) = play(default_worker, 2, options={"start": "text"})
    assert info["start"] == text_view.extra["start"] == "text" and text_view.nfe == schedule[0]
    assert text_next.frames.std() > 0
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(buf, "PNG")
    info, (image_view, image_next) = play(default_worker, 2, start_image=buf.getvalue())
    assert info["start"] == "image" and np.all(image_view.frames == 90) and image_next.nfe >= 1
