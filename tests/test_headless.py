"""`play --headless`: the client without a window, end to end through a real worker process."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from controls import play as cli
from controls.headless import HeadlessError, load_script
from world.data.dataset import EpisodeReader
from world.data.recorder import Recorder
from world.data.replay import replay_episode
from world.procedural.engine import ENGINE_VERSION
from world.server import protocol as P
from world.server.client import DEFAULT_PROMPT, ChunkEvent, WorldRequestError
from world.server.process import start_worker_process, stop_worker_process

REPO = Path(__file__).resolve().parent.parent
SUMMARY_KEYS = {"frames", "fps", "latency_ms", "errors", "backend", "prompt", "record", "gen_ms_p50"}


@pytest.fixture(scope="module")
def worker():
    proc, endpoint = start_worker_process()
    yield endpoint
    stop_worker_process(proc)


def play(argv: list[str], capsys) -> tuple[int, list[str], str]:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    code = cli.run(parser.parse_args(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_headless_command_starts_a_worker_and_prints_one_json_line():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "run_world.py", "play", "--headless", "--frames", "30", "--prompt", "desert dunes at dusk"]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout  # nothing but the summary on stdout
    result = json.loads(lines[0])
    assert SUMMARY_KEYS <= set(result)
    assert result["frames"] == 30 and result["fps"] > 0
    # the default world: generated once assets/default_world is bundled, else the engine
    assert result["backend"] == cli.default_backend() and result["prompt"] == "desert dunes at dusk"
    assert result["errors"] == 0 and result["record"] is None
    assert set(result["latency_ms"]) == {"p50", "p95", "max"} and result["latency_ms"]["p50"] > 0
    assert result["gen_ms_p50"] > 0


def test_script_is_applied_exactly_from_the_first_frame_and_recorded(worker, tmp_path, capsys):
    script = [{"keys": ["forward"], "mouse": [0.0, 0.0]}] * 4 + [{"keys": [], "mouse": [0.25, -0.5]}] * 3
    script += [{"keys": ["rise"], "mouse": [0.0, 0.0], "prompt": "snowy mountains at night"}]
    script += [{"keys": ["turn_left"], "mouse": [0.0, 0.0]}] * 6
    path = tmp_path / "script.json"
    path.write_text(json.dumps(script))
    argv = ["--connect", worker, "--backend", "engine", "--headless", "--script", str(path), "--seed", "3", "--record",
            str(tmp_path / "rec")]
    code, lines, err = play(argv, capsys)
    assert code == 0, err
    result = json.loads(lines[-1])
    assert result["frames"] == len(script) == 14
    reader = EpisodeReader(result["record"])
    assert len(reader) == 14 and reader.meta["seed"] == 3 and reader.meta["source"] == "play"
    assert [r["i"] for r in reader.records] == list(range(14))  # the world starts at the script's start
    expected = [{k: v for k, v in step.items() if k != "prompt"} for step in script]
    assert [r["action"] for r in reader.records] == expected
    # A prompt switch lands on the chunk holding its frame (frame 7 -> chunk 2 = frames 6..8).
    prompts = reader.prompts()
    assert prompts[:6] == [DEFAULT_PROMPT] * 6 and prompts[6:] == ["snowy mountains at night"] * 8
    # The worker's engine version (sent in the chunks) is in meta, and replay re-simulates it bit for bit.
    assert reader.meta["engine_version"] == ENGINE_VERSION
    result = replay_episode(reader.path)
    assert result.identical and result.engine_version_recorded == ENGINE_VERSION


def test_scripted_player_run_with_realtime_pacing(worker, capsys):
    code, lines, err = play(["--connect", worker, "--headless", "--frames", "7", "--realtime"], capsys)
    assert code == 0, err
    result = json.loads(lines[-1])
    assert result["frames"] == 7 and result["errors"] == 0
    assert result["latency_kind"].startswith("action-to-frame")


def test_bad_script_is_a_usage_error_naming_the_entry(worker, tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"keys": ["forward"]}, {"keys": ["jump"]}]))
    code, lines, err = play(["--connect", worker, "--headless", "--script", str(path)], capsys)
    assert code == 2 and lines == []
    assert "entry 1" in err and "jump" in err


def test_load_script_accepts_actions_with_optional_prompts(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"keys": ["back"], "mouse": [0.1, 0.0], "prompt": "desert"}, {}]))
    steps = load_script(path)
    assert steps[0].action.keys == ("back",) and steps[0].prompt == "desert"
    assert steps[1].action.keys == () and steps[1].prompt is None
    path.write_text("[]")
    with pytest.raises(HeadlessError, match="non-empty"):
        load_script(path)


def test_options_that_cannot_apply_are_usage_errors(worker, tmp_path, capsys):
    code, _, err = play(["--connect", worker, "--headless", "--checkpoint", str(tmp_path)], capsys)
    assert code == 2 and "--checkpoint" in err and "serve" in err
    code, _, err = play(["--connect", worker, "--script", "x.json"], capsys)
    assert code == 2 and "--headless" in err
    bad = tmp_path / "keys.json"
    bad.write_text(json.dumps({"forward": ["no-such-key"]}))
    code, _, err = play(["--connect", worker, "--keymap", str(bad)], capsys)
    assert code == 2 and "'forward'" in err and "no-such-key" in err


def test_unknown_engine_prompt_is_refused_with_exit_2(worker, capsys):
    argv = ["--connect", worker, "--backend", "engine", "--headless", "--prompt", "qwerty zxcv"]
    code, lines, err = play(argv, capsys)
    assert code == 2 and lines == [] and "refused" in err


def test_default_backend_follows_the_bundled_checkpoint(tmp_path, monkeypatch):
    from world import bundled

    monkeypatch.setattr(bundled, "DEFAULT_CHECKPOINT", tmp_path / "default_world")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.default_backend() == "engine"
    assert cli.make_plan(parser.parse_args([])).backend == "engine"
    (tmp_path / "default_world").mkdir()
    (tmp_path / "default_world" / "config.json").write_text("{}")
    assert cli.default_backend() == "generated"
    plan = cli.make_plan(parser.parse_args([]))
    assert plan.backend == "generated" and plan.worker_args == ()  # the worker finds it itself
    assert cli.make_plan(parser.parse_args(["--backend", "engine"])).worker_args == ()


def test_lookahead_choice_follows_the_backend_and_headless_keeps_the_worker_window(tmp_path, monkeypatch):
    from world import bundled

    monkeypatch.setattr(bundled, "DEFAULT_CHECKPOINT", tmp_path / "absent")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    plan = cli.make_plan(parser.parse_args([]))
    assert (plan.lookahead, plan.lookahead_is_auto) == (1, True)  # the engine: lowest latency
    assert cli.make_plan(parser.parse_args(["--backend", "generated"])).lookahead == 2  # slack for slow chunks
    assert cli.make_plan(parser.parse_args(["--headless"])).lookahead is None  # the worker's window
    plan = cli.make_plan(parser.parse_args(["--headless", "--lookahead", "2"]))
    assert (plan.lookahead, plan.lookahead_is_auto) == (2, False)
    with pytest.raises(SystemExit):
        parser.parse_args(["--lookahead", "0"])


class RefusingClient:
    """Refuses any open that asks for a lookahead, like a worker started with a smaller --window."""

    def __init__(self) -> None:
        self.opens: list[int | None] = []

    def open(self, backend, prompt, seed, options=None, lookahead=None) -> dict:
        self.opens.append(lookahead)
        if lookahead is not None:
            raise WorldRequestError(P.BAD_LOOKAHEAD, "lookahead 2 is above this worker's window of 1")
        return {"window": 1}


def test_an_automatic_lookahead_falls_back_to_the_worker_window_but_an_explicit_one_is_refused():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--backend", "generated"])
    client = RefusingClient()
    assert cli._open(client, cli.make_plan(args), args) == {"window": 1}
    assert client.opens == [2, None]
    args = parser.parse_args(["--backend", "generated", "--lookahead", "2"])
    with pytest.raises(WorldRequestError):
        cli._open(RefusingClient(), cli.make_plan(args), args)


def test_headless_with_lookahead_1_runs_the_script_exactly(worker, tmp_path, capsys):
    script = [{"keys": ["forward"], "mouse": [0.0, 0.0]}] * 5 + [{"keys": ["left"], "mouse": [0.0, 0.0]}] * 4
    path = tmp_path / "script.json"
    path.write_text(json.dumps(script))
    argv = ["--connect", worker, "--backend", "engine", "--headless", "--script", str(path), "--lookahead", "1",
            "--record", str(tmp_path)]
    code, lines, err = play(argv, capsys)
    assert code == 0, err
    reader = EpisodeReader(json.loads(lines[-1])["record"])
    assert [r["action"] for r in reader.records] == script and [r["i"] for r in reader.records] == list(range(9))


def test_recorder_writes_an_episode_only_once_a_chunk_arrives(tmp_path):
    info = {"backend": "engine", "height": 4, "width": 4, "chunk_frames": 2, "fps": 30.0}
    recorder = Recorder(tmp_path, info)
    path = recorder.start(seed=1, prompt="desert")
    assert recorder.recording and not path.exists()  # meta.json needs the first chunk's facts
    assert recorder.stop() is None and recorder.path is None and not recorder.recording
    assert list(tmp_path.iterdir()) == []  # nothing recorded, nothing left behind
    path = recorder.start(seed=1, prompt="desert")
    records = [{"i": k, "chunk": 0, "action": {"keys": [], "mouse": [0, 0]}, "prompt": "desert"} for k in range(2)]
    chunk = ChunkEvent(0, np.zeros((2, 4, 4, 3), np.uint8), records, 1.0, 0, 0, extra={"engine_version": 7, "pose": {}})
    recorder.append(chunk, seed=1)
    assert recorder.stop() == path
    reader = EpisodeReader(path)
    assert len(reader) == 2 and reader.meta["engine_version"] == 7 and reader.meta["prompt"] == "desert"
    assert "pose" not in reader.meta  # only episode-wide facts go into meta


def test_diagonal_ablation_options_are_session_options_of_the_generated_world():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = ["--backend", "generated", "--schedule", "5,4,3,2", "--context-noise", "250"]
    plan = cli.make_plan(parser.parse_args(args))
    assert plan.options == {"schedule": "5,4,3,2", "context_noise": 250.0}
    with pytest.raises(cli.UsageError, match="--backend generated only"):
        cli.make_plan(parser.parse_args(["--backend", "engine", "--schedule", "2,2"]))


def recorded_frames(record_dir: Path) -> int:
    """Frames on disk so far in the one episode under record_dir (0 before it exists)."""
    files = list(record_dir.glob("*/frames.u8"))
    return files[0].stat().st_size // (64 * 64 * 3) if files else 0


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_headless_connect_resumes_the_world_on_a_restarted_worker(tmp_path, how):
    """`play --headless --connect` goes on like the window: a worker stopped (it says shutdown) or
    killed (it falls silent) mid-run and started again on its port takes the world back after the
    newest frame consumed; the recording is one episode with every frame once, and replays bit for bit."""
    proc, endpoint = start_worker_process()
    record = tmp_path / "rec"
    argv = [sys.executable, "run_world.py", "play", "--headless", "--backend", "engine", "--connect", endpoint,
            "--frames", "150", "--realtime", "--seed", "4", "--record", str(record)]  # fmt: skip
    run = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):  # bounded: the run is under way once frames reach the disk
            if recorded_frames(record) >= 12 or run.poll() is not None:
                break
            time.sleep(0.05)
        assert run.poll() is None, run.communicate()
        if how == "killed":
            proc.kill()
            proc.wait()
        else:
            stop_worker_process(proc)
        proc, _ = start_worker_process(bind=endpoint)
        out, err = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
        stop_worker_process(proc)
    assert run.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["frames"] == 150
    assert "reconnected: the world goes on from frame" in err and "Traceback" not in err
    (episode,) = record.iterdir()  # the same world: the same episode
    reader = EpisodeReader(episode)
    assert [r["i"] for r in reader.records] == list(range(150))
    assert replay_episode(episode).identical
