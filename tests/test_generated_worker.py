"""The generated backend end to end through a real worker process, on a tiny random checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.helpers import collect_chunks
from world.actions import Action
from world.backends.registry import create_backend
from world.data.dataset import EpisodeReader
from world.data.replay import frame_mismatches
from world.server import protocol as P
from world.server import wire
from world.server.client import WorldClient
from world.server.core import WorkerCore
from world.server.worker_config import Inbound, WorkerConfig

REPO = Path(__file__).resolve().parent.parent


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
    # Sessions start from the engine's view, but the engine knows no "violet plain": a text start, said so.
    assert info["start"] == first[0].extra["start"] == "text"
    assert 'the engine does not know "a strange violet plain"' in info["start_notice"]
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
    assert episode.meta["start"] == "engine" and result["start"] == "engine"  # the default start
    steps = [episode.records[i]["steps"] for i in range(0, 9, 3)]
    assert steps[0] == 0  # chunk 0: the engine's view, nothing generated
    assert steps[1:] == sorted(steps[1:], reverse=True) and steps[1] > steps[-1]  # diagonal: fewer steps later


def test_sampler_options_are_refused_for_the_engine():
    argv = [sys.executable, "run_world.py", "play", "--headless", "--backend", "engine", "--sampler", "diagonal",
            "--frames", "3"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--backend generated" in done.stderr


# ----------------------------------------------------------------------------- the reset view

IDLE_JSON = Action().to_json()
WALK = [Action(("forward",))] * 3
SAMPLER = {"sampler": "diagonal"}
TEXT_START = {**SAMPLER, "start": "text"}  # sessions default to the engine start; these tests make chunk 0


def generated(world_dir):
    return create_backend("generated", checkpoint=str(world_dir), device="cpu", **SAMPLER)


def reset_chunk(world_dir, seed: int, prompt: str):
    """What an in-process backend's reset with this seed and prompt makes: chunk 0 of the world."""
    backend = generated(world_dir)
    try:
        backend.reset(seed, prompt)
        return backend.take_reset_chunk()
    finally:
        backend.close()


def assert_reset_view(records: list[dict], extra: dict, frames: np.ndarray, expected, prompt: str) -> None:
    assert extra["reset_view"] is True
    assert [r["i"] for r in records] == [0, 1, 2] and {r["chunk"] for r in records} == {0}
    assert all(r["reset_view"] is True and r["action"] == IDLE_JSON and r["prompt"] == prompt for r in records)
    assert all((r["steps"], r["nfe"]) == (expected.steps, expected.nfe) == (4, 4) for r in records)
    assert np.array_equal(frames, expected.frames)


def assert_follows(records: list[dict], extra: dict, actions: list[Action], first_index: int) -> None:
    assert "reset_view" not in extra and not any("reset_view" in r for r in records)
    assert [r["i"] for r in records] == list(range(first_index, first_index + 3))
    assert [Action.from_json(r["action"]) for r in records] == actions


def test_worker_core_sends_the_reset_view_first_and_keeps_the_queue_for_chunk_1(world_dir):
    """In process, so the order is exact: actions queued and a prompt switched before anything is
    produced go to chunk 1, not to the reset view; the same after a reset request."""
    config = WorkerConfig(max_unacked=3, backend_options={"generated": {"checkpoint": str(world_dir), "device": "cpu"}})
    core = WorkerCore(config, instance="test")
    now = [0.0]

    def send(request):
        now[0] += 0.001
        return [wire.decode_reply(o.frames)[0] for o in core.handle(Inbound(b"me", request, now[0]))]

    def produce(n: int):
        out = [wire.decode_reply(core.produce_next()[0].frames) for _ in range(n)]
        assert core.produce_next() == []  # the window of 3 is full
        return out

    (opened,) = send(P.Open(backend="generated", prompt="green hills", seed=5, options=TEXT_START))
    sid = opened.session
    turn = Action(("turn_left",))
    send(P.Actions(session=sid, actions=tuple(WALK)))
    send(P.Input(session=sid, action=turn))
    send(P.Prompt(session=sid, prompt="desert at night"))
    (view, view_frames), (one, _), (two, _) = produce(3)
    assert_reset_view(list(view.records), view.extra, view_frames, reset_chunk(world_dir, 5, "green hills"),
                      "green hills")  # fmt: skip
    assert (view.seq, view.chunk, view.epoch) == (0, 0, 0) and view.gen_ms > 0
    assert_follows(list(one.records), one.extra, WALK, 3)
    assert_follows(list(two.records), two.extra, [turn] * 3, 6)
    assert {r["prompt"] for r in one.records} == {"desert at night"} and (one.steps, one.nfe) == (3, 3)

    (ok,) = send(P.Reset(session=sid, seed=9))
    assert (ok.seq, ok.epoch) == (3, 1)
    send(P.Actions(session=sid, actions=tuple(WALK)))
    send(P.Ack(session=sid, seq=2))
    (view, view_frames), (one, _), (two, _) = produce(3)
    assert view.epoch == 1 and view.seq == 3
    assert_reset_view(list(view.records), view.extra, view_frames, reset_chunk(world_dir, 9, "desert at night"),
                      "desert at night")  # fmt: skip
    assert_follows(list(one.records), one.extra, WALK, 3)
    assert_follows(list(two.records), two.extra, [turn] * 3, 6)  # the held input survives a reset
    core.close_all()


def test_first_chunk_after_open_and_reset_is_the_reset_view_over_the_wire(worker, world_dir):
    client = WorldClient(worker, timeout_s=30.0)
    try:
        client.open(backend="generated", prompt="a strange violet plain", seed=5, options=TEXT_START, lookahead=1)
        (view,) = collect_chunks(client, 1, ack=False)  # lookahead 1: nothing more until we ack
        client.queue_actions(WALK)
        client.ack(view.seq)
        (one,) = collect_chunks(client, 1, ack=False)
        client.reset(6)
        client.queue_actions(WALK)
        client.ack(one.seq)
        (view2,) = collect_chunks(client, 1, ack=False)
        client.ack(view2.seq)
        (one2,) = collect_chunks(client, 1)
    finally:
        client.close()
    assert_reset_view(view.records, view.extra, view.frames, reset_chunk(world_dir, 5, "a strange violet plain"),
                      "a strange violet plain")  # fmt: skip
    assert_follows(one.records, one.extra, WALK, 3)
    assert view2.epoch == one2.epoch == 1 and (view2.chunk, one2.chunk) == (0, 1)
    assert_reset_view(view2.records, view2.extra, view2.frames, reset_chunk(world_dir, 6, "a strange violet plain"),
                      "a strange violet plain")  # fmt: skip
    assert_follows(one2.records, one2.extra, WALK, 3)


def test_scripted_headless_run_shows_the_reset_view_then_the_script_and_replays(worker, world_dir, tmp_path, capsys):
    import argparse

    from controls import play as cli

    script = [{"keys": ["forward"], "mouse": [0.0, 0.0]}] * 4 + [{"keys": [], "mouse": [0.5, -0.25]}] * 2
    path = tmp_path / "script.json"
    path.write_text(json.dumps(script))
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--connect", worker, "--headless", "--backend", "generated", "--sampler", "diagonal",
                              "--script", str(path), "--seed", "4", "--prompt", "green hills",
                              "--record", str(tmp_path / "rec")])  # fmt: skip
    assert cli.run(args) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["frames"] == 3 + len(script)  # the reset view, then the whole script
    reader = EpisodeReader(result["record"])
    assert [r["i"] for r in reader.records] == list(range(9))
    assert [r.get("reset_view", False) for r in reader.records] == [True] * 3 + [False] * 6
    assert [r["action"] for r in reader.records] == [IDLE_JSON] * 3 + script
    assert reader.meta["start"] == "engine" and [r.get("start") for r in reader.records[:4]] == ["engine"] * 3 + [None]
    unmarked = tmp_path / "unmarked"  # the same recording without the flag: replayed the old way, it differs
    shutil.copytree(reader.path, unmarked)
    lines = [json.loads(line) for line in (unmarked / "frames.jsonl").read_text().splitlines()]
    (unmarked / "frames.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "reset_view"})
                                                   + "\n" for r in lines))  # fmt: skip
    backend = generated(world_dir)
    try:
        assert frame_mismatches(reader, backend) == []  # replay takes the reset view, then steps the script
        assert frame_mismatches(EpisodeReader(unmarked), backend)[:1] == [0]
    finally:
        backend.close()
