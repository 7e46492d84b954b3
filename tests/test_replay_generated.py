"""Replaying generated-world recordings: made through a real worker on a tiny random checkpoint,
regenerated from what meta.json says, compared frame by frame through the real entry point."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest

from tests.helpers import last_json, run_cli
from world.data.dataset import EpisodeReader

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = [{"keys": ["forward"], "mouse": [0.0, 0.0]}] * 3 + [
    {"keys": ["turn_left"], "mouse": [0.25, 0.0], "prompt": "snowy mountains at dusk in fog"}] * 3  # fmt: skip


@pytest.fixture(scope="module")
def recording(worker, world_dir, tmp_path_factory):
    """A generated episode recorded by `play --headless` through the worker: reset view + script."""
    from controls import play as cli

    root = tmp_path_factory.mktemp("rec")
    (root / "script.json").write_text(json.dumps(SCRIPT))
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--connect", worker, "--headless", "--backend", "generated", "--sampler", "diagonal",
                              "--script", str(root / "script.json"), "--seed", "4", "--prompt", "green hills",
                              "--record", str(root / "episodes")])  # fmt: skip
    assert cli.run(args) == 0
    (episode,) = (root / "episodes").iterdir()
    return episode


def test_a_generated_recording_says_how_to_regenerate_it_and_replays_bit_identical(recording, world_dir, capsys):
    meta = EpisodeReader(recording).meta
    model = meta["model"]
    assert model["checkpoint"] == str(world_dir.resolve()) and model["device"] == "cpu"
    assert model["dtype"] == "float32" and model["sampler"]["name"] == "diagonal"
    assert set(model["sha256"]) == {"dit", "autoencoder"} and all(len(h) == 64 for h in model["sha256"].values())
    assert model["sampler_options"]["sampler"] == "diagonal" and meta["start"] == "engine"
    code, out, err = run_cli(capsys, "replay", str(recording))
    result = last_json(out)
    assert code == 0, err
    assert result["identical"] and result["same_settings"] and result["frames"] == 3 + len(SCRIPT)
    assert (result["max_abs_error"], result["mean_abs_error"], result["psnr_db"]) == (0, 0.0, None)


def test_a_changed_frame_is_measured_and_fails_on_the_same_settings(recording, tmp_path, capsys):
    changed = shutil.copytree(recording, tmp_path / "changed")
    data = bytearray((changed / "frames.u8").read_bytes())
    frame = 64 * 64 * 3
    data[5 * frame : 5 * frame + 300] = bytes(255 - b for b in data[5 * frame : 5 * frame + 300])
    (changed / "frames.u8").write_bytes(bytes(data))
    code, out, err = run_cli(capsys, "replay", str(changed))
    result = last_json(out)
    assert code == 1 and result["first_mismatch"] == 5 and result["mismatched_frames"] == 1
    assert result["max_abs_error"] > 0 and result["mean_abs_error"] > 0 and 0 < result["psnr_db"] < 100
    assert "same checkpoint, sampler, device, dtype, threads, CPU kernels and torch build" in err


def test_a_recording_whose_checkpoint_is_missing_says_which_one_it_needs(recording, world_dir, tmp_path, capsys):
    moved = shutil.copytree(recording, tmp_path / "moved")
    meta = json.loads((moved / "meta.json").read_text())
    meta["model"]["checkpoint"] = str(tmp_path / "gone")
    meta["model"]["sha256"]["dit"] = "ab" * 32  # weights no bundled world has
    (moved / "meta.json").write_text(json.dumps(meta))
    code, out, err = run_cli(capsys, "replay", str(moved))
    assert (code, out) == (2, "")
    assert f"needs the world checkpoint {world_dir.name} (step 0, dit sha256 abababababab)" in err
    assert str(tmp_path / "gone") in err and "--checkpoint DIR" in err
    code, _, err = run_cli(capsys, "replay", str(moved), "--checkpoint", str(world_dir))
    assert code == 2 and f"--checkpoint {world_dir} does not hold the weights" in err


def test_chunks_say_what_the_world_reads_as_and_a_cut_prompt_in_words(world_dir):
    """The generated backend's chunk facts: the theme classifier's reading (the bundled classifier
    reads 64x64 frames, as the tiny world makes) and, once, a sentence instead of the text
    encoder's truncation warning."""
    import warnings

    from model.runtime.generated_backend import GeneratedBackend
    from world.actions import IDLE
    from world.procedural.themes import BIOMES

    backend = GeneratedBackend(checkpoint=str(world_dir), device="cpu")
    try:
        backend.reset(0, "green hills")
        theme = backend.take_reset_chunk().extra["theme"]
        assert theme["source"] == "classifier" and theme["biome"] in BIOMES and theme["text"]
        long_prompt = " ".join(f"word{k}" for k in range(60))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no Python warning reaches the terminal
            backend.set_prompt(long_prompt)
            first, second = backend.step_chunk([IDLE] * 3), backend.step_chunk([IDLE] * 3)
        assert first.extra["prompt_notice"].startswith("long prompt: cut to the first ")
        assert "prompt_notice" not in second.extra
    finally:
        backend.close()


@pytest.mark.parametrize("threads", [1, 2])
def test_a_recording_replays_bit_identical_whatever_the_callers_thread_count(recording, threads, capsys):
    """The recording says how many threads made it and replay uses that count: a GEMM splits its
    sums by the thread count, so replaying at the caller's count moved the last bit of some frames."""
    import torch

    meta = EpisodeReader(recording).meta["model"]
    assert meta["threads"] >= 1 and meta["cpu_kernels"] and meta["torch"] == torch.__version__
    torch.set_num_threads(threads)
    code, out, err = run_cli(capsys, "replay", str(recording))
    assert code == 0 and last_json(out)["identical"], err
    assert torch.get_num_threads() == threads  # the caller's count is given back


def test_other_cpu_kernels_give_equivalent_frames_with_their_own_exit_code(recording, tmp_path, capsys):
    other = shutil.copytree(recording, tmp_path / "other")
    meta = json.loads((other / "meta.json").read_text())
    meta["model"]["cpu_kernels"] = "SOME_OTHER_ISA"
    (other / "meta.json").write_text(json.dumps(meta))
    data = bytearray((other / "frames.u8").read_bytes())
    frame = 64 * 64 * 3
    data[4 * frame] = data[4 * frame] + 1 if data[4 * frame] < 255 else 254  # one level, as other kernels give
    (other / "frames.u8").write_bytes(bytes(data))
    code, out, err = run_cli(capsys, "replay", str(other))
    result = last_json(out)
    assert code == 3 and not result["same_settings"] and result["max_abs_error"] == 1
    assert "equivalent within 1/255" in err and "cpu_kernels: SOME_OTHER_ISA ->" in err
