"""The generated backend end to end through a real worker process, on a tiny random checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from model.world_model import make_random_world
from world.actions import Action
from world.client import ChunkEvent, ErrorEvent, WorldClient
from world.dataset import EpisodeReader
from world.worker import start_worker_process, stop_worker_process

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("world") / "tiny"
    make_random_world(path, preset="tiny", text_encoder="hash")
    return path


@pytest.fixture(scope="module")
def worker(world_dir):
    proc, endpoint = start_worker_process(extra_args=("--checkpoint", str(world_dir), "--device", "cpu"))
    yield endpoint
    stop_worker_process(proc)


def collect_chunks(client: WorldClient, n: int, timeout_s: float = 60.0) -> list[ChunkEvent]:
    chunks: list[ChunkEvent] = []
    deadline = time.monotonic() + timeout_s
    while len(chunks) < n and time.monotonic() < deadline:
        for event in client.poll(100):
            assert not isinstance(event, ErrorEvent), event
            if isinstance(event, ChunkEvent):
                chunks.append(event)
                client.ack(event.seq)
    assert len(chunks) >= n, f"only {len(chunks)} chunks in {timeout_s} s"
    return chunks[:n]


def test_generated_world_streams_through_the_worker_and_switches_prompt(worker):
    client = WorldClient(worker, timeout_s=30.0)
    try:
        info = client.open(backend="generated", prompt="a strange violet plain", seed=5,
                           options={"sampler": "diagonal"})
        assert (info["height"], info["width"], info["chunk_frames"]) == (64, 64, 3)
        client.send_input(Action(("forward",)))
        first = collect_chunks(client, 2)
        client.set_prompt("snowy mountains at dusk")
        later = collect_chunks(client, 4)
    finally:
        client.close()
    for chunk in first + later:
        assert chunk.frames.shape == (3, 64, 64, 3) and chunk.frames.dtype == np.uint8
        assert chunk.nfe >= chunk.steps >= 1  # a network made these frames
        assert all(r["steps"] == chunk.steps for r in chunk.records)
    assert later[-1].records[-1]["prompt"] == "snowy mountains at dusk"
    # held input applies to chunks generated after it arrived: the first ones may predate it
    assert {tuple(r["action"]["keys"]) for c in later for r in c.records} == {("forward",)}


def test_play_headless_on_a_generated_checkpoint_records_and_reports_fps(world_dir, tmp_path):
    argv = [sys.executable, "run_world.py", "play", "--headless", "--backend", "generated",
            "--checkpoint", str(world_dir), "--device", "cpu", "--frames", "9", "--prompt", "green hills",
            "--sampler", "diagonal", "--record", str(tmp_path)]
    done = subprocess.run(argv, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == "generated" and result["frames"] == 9 and result["fps"] > 0
    assert result["errors"] == 0
    episode = EpisodeReader(result["record"])
    assert episode.meta["backend"] == "generated" and len(episode) == 9
    assert episode.meta["options"] == {"sampler": "diagonal"}
    steps = [episode.records[i]["steps"] for i in range(0, 9, 3)]
    assert steps == sorted(steps, reverse=True) and steps[0] > steps[-1]  # diagonal: fewer steps later


def test_sampler_options_are_refused_for_the_engine():
    argv = [sys.executable, "run_world.py", "play", "--headless", "--sampler", "diagonal", "--frames", "3"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--backend generated" in done.stderr
