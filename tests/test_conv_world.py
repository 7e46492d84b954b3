"""A conv-stem world (the "unet" layout, tiny) plays through the same backend and a real worker:
engine / text / image starts, prompt switches (recache replays the stacked frames), a recording that
regenerates, and the diagonal sampler's context level in the stacked frames."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from model.diffusion.samplers import make_sampler
from model.runtime.stream import Conditioning, generate_chunk
from tests.helpers import collect_chunks, random_dit
from world.actions import Action
from world.backends.registry import create_backend
from world.data.dataset import EpisodeReader
from world.data.replay import frame_mismatches
from world.server.client import WorldClient

PROMPT = "green hills at noon"
TINY_UNET = {"text_film": True}  # the recipe the U-Net now trains with: the prompt reaches the conv blocks too


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    from model.runtime.world_model import make_random_world

    path = tmp_path_factory.mktemp("world") / "tiny-unet"
    make_random_world(path, preset="tiny-unet", text_encoder="hash", dit_options=TINY_UNET)
    return path


def engine_chunk(seed: int) -> np.ndarray:
    engine = create_backend("engine", height=64, width=64, chunk_frames=3)
    first = engine.reset(seed, PROMPT).copy()
    return np.concatenate([first[None], engine.step_chunk([Action()] * 3).frames[:2]])


def test_engine_text_and_image_starts_and_a_prompt_switch_through_a_worker(worker):
    client = WorldClient(worker, timeout_s=60.0)
    try:
        client.open("generated", PROMPT, seed=6, options={"sampler": "diagonal"})
        client.send_input(Action(("turn_left",)))
        view, *chunks = collect_chunks(client, 3)
        client.set_prompt("snowy mountains at dusk")
        after = collect_chunks(client, 4)  # past the window: eviction and recache of stacked frames
        client.close()
        client = WorldClient(worker, timeout_s=60.0)
        info = client.open("generated", PROMPT, seed=6, options={"sampler": "uniform", "start": "text"})
        (text_view,) = collect_chunks(client, 1)
        client.close()
        buf = io.BytesIO()
        Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(buf, "PNG")
        client = WorldClient(worker, timeout_s=60.0)
        image_info = client.open("generated", PROMPT, seed=6, options={"sampler": "diagonal"},
                                 start_image=buf.getvalue())
        image_view, image_next = collect_chunks(client, 2)
    finally:
        client.close()
    assert view.extra["start"] == "engine" and np.array_equal(view.frames, engine_chunk(6))
    assert all(c.nfe >= 2 and c.frames.shape == (3, 64, 64, 3) for c in chunks + after)
    assert after[-1].records[-1]["prompt"] == "snowy mountains at dusk"
    assert info["start"] == text_view.extra["start"] == "text" and text_view.nfe >= 1
    assert image_info["start"] == "image" and np.all(image_view.frames == 90) and image_next.nfe >= 1


def test_a_recording_of_the_conv_world_regenerates_frame_for_frame(worker, world_dir, tmp_path, capsys):
    import argparse
    import json

    from controls import play as cli

    script = [{"keys": ["turn_right"], "mouse": [0.3, 0.0]}] * 6 + [{"keys": ["forward"], "mouse": [0.0, 0.0]}] * 6
    path = tmp_path / "script.json"
    path.write_text(json.dumps(script))
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--connect", worker, "--headless", "--backend", "generated", "--sampler", "diagonal",
                              "--script", str(path), "--seed", "4", "--prompt", PROMPT,
                              "--record", str(tmp_path / "rec")])  # fmt: skip
    assert cli.run(args) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    reader = EpisodeReader(result["record"])
    assert len(reader) == 3 + len(script)
    backend = create_backend("generated", checkpoint=str(world_dir), device="cpu", sampler="diagonal")
    try:
        assert frame_mismatches(reader, backend) == []
    finally:
        backend.close()


def test_diagonal_stacked_frames_are_the_context_level_inputs_the_cache_holds():
    """No refresh pass: the next chunk's stacked frames are the last (context-level) inputs of the
    previous chunk, as the diagonal student will read them in training and inference alike."""
    model = random_dit("tiny-unet")
    cfg = model.config
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    original = model.forward

    def forward(x, t, *args, **kwargs):
        cache = args[3] if len(args) > 3 else kwargs.get("cache")
        seen.append((x.clone(), t.clone(), model.previous_frames(x, cache).clone()))
        return original(x, t, *args, **kwargs)

    model.forward = forward
    sampler = make_sampler("diagonal", schedule=[4, 3, 2], context_noise=100.0)
    cache = model.new_cache()
    text, mask = torch.randn(1, 4, cfg.text_dim), torch.ones(1, 4, dtype=torch.bool)
    cond = Conditioning.build(text, mask, False)
    gen = torch.Generator().manual_seed(0)
    actions = torch.zeros(1, cfg.chunk_frames, cfg.action_dim)
    per_chunk = []
    with torch.no_grad():
        for _ in range(4):
            seen.clear()
            generate_chunk(model, cache, sampler, cond, actions, lambda s: torch.randn(s, generator=gen))
            per_chunk.append(list(seen))
    c = cfg.latent_channels
    for i in range(1, 4):
        last_x, last_t, _ = per_chunk[i - 1][-1]  # the chunk's K/V-writing (last) forward
        assert torch.all(last_t == 100.0)
        for _, _, prev in per_chunk[i]:
            stacked = prev[0, 0].reshape(3, c, *prev.shape[-2:])
            assert torch.equal(stacked, last_x[0])
