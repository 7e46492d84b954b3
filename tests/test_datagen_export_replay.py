"""datagen -> replay (bit-exact) and export (a decodable mp4), through the real entry point."""

from __future__ import annotations

import json
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest

import run_world
from tests.helpers import last_json, run_cli
from world.actions import Action
from world.data.dataset import EpisodeReader, EpisodeWriter, open_dataset
from world.data.export import BAR_HEIGHT
from world.procedural.engine import ENGINE_VERSION

SIZE, FRAMES = 32, 61  # 61: the last chunk is short, as a killed-and-trimmed episode may be
DATAGEN = ["datagen", "--episodes", "2", "--frames-per-episode", str(FRAMES), "--size", str(SIZE),
           "--seed", "5", "--switch-every", "0.3", "0.6", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    assert run_world.main([*DATAGEN, "--out", str(root)]) == 0
    return root


def test_datagen_writes_episodes_with_prompt_switches(dataset):
    readers = open_dataset(dataset)
    assert len(readers) == 2
    for r in readers:
        assert len(r) == FRAMES and r.frames.shape == (FRAMES, SIZE, SIZE, 3)
        assert r.meta["source"] == "datagen" and r.meta["backend"] == "engine"
        assert r.meta["engine_version"] == ENGINE_VERSION
        assert not any("engine_version" in rec for rec in r.records)  # in meta only, not per chunk
        assert len(set(r.prompts())) > 1  # switched inside the episode...
        assert r.meta["prompt"] == r.prompts()[0]
        prompts, chunks = r.prompts(), r.chunk_ids()
        for k in range(FRAMES - 1):
            assert prompts[k] == prompts[k + 1] or chunks[k] != chunks[k + 1]  # ...only between chunks
        assert r.frames.std() > 0 and r.actions().any()
    assert readers[0].meta["seed"] != readers[1].meta["seed"]


def test_datagen_resumes_and_is_deterministic(dataset, tmp_path, capsys):
    code, out, _ = run_cli(capsys, *DATAGEN, "--out", str(dataset))
    assert code == 0 and last_json(out)["episodes"] == 0 and last_json(out)["skipped"] == 2
    # A fresh run with two worker processes renders the same bytes as the first run.
    code, out, _ = run_cli(capsys, *DATAGEN, "--out", str(tmp_path), "--workers", "2")
    summary = last_json(out)
    assert code == 0 and summary["episodes"] == 2 and summary["frames"] == 2 * FRAMES and summary["fps"] > 0
    first = {r.meta["seed"]: r for r in open_dataset(dataset)}
    for r in open_dataset(tmp_path):
        np.testing.assert_array_equal(r.frames, first[r.meta["seed"]].frames)
        assert r.prompts() == first[r.meta["seed"]].prompts()


def test_datagen_redoes_an_incomplete_episode(tmp_path, capsys):
    argv = [*DATAGEN, "--episodes", "1", "--out", str(tmp_path)]
    assert run_cli(capsys, *argv)[0] == 0
    (episode,) = tmp_path.iterdir()
    original = np.array(EpisodeReader(episode).frames)
    with open(episode / "frames.u8", "r+b") as f:  # as if killed two thirds of the way
        f.truncate(SIZE * SIZE * 3 * 40 + 5)
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and last_json(out)["episodes"] == 1
    (redone,) = tmp_path.iterdir()
    np.testing.assert_array_equal(EpisodeReader(redone).frames, original)


def test_replay_is_identical(dataset, capsys):
    for episode in sorted(dataset.iterdir()):
        code, out, _ = run_cli(capsys, "replay", str(episode))
        assert code == 0
        assert last_json(out) == {"frames": FRAMES, "identical": True, "first_mismatch": None,
                                  "mismatched_frames": 0, "max_abs_error": 0, "mean_abs_error": 0.0,
                                  "psnr_db": None, "same_settings": True, "engine_version_recorded": ENGINE_VERSION,
                                  "engine_version_now": ENGINE_VERSION, "message": None}  # fmt: skip


def tampered_copy(src, dst, meta_changes: dict | None = None, missing: tuple[str, ...] = ()):
    """A copy of episode `src` with one bit of frame 17 flipped and meta.json edited."""
    dst.mkdir()
    meta = {k: v for k, v in {**json.loads((src / "meta.json").read_text()), **(meta_changes or {})}.items()
            if k not in missing}  # fmt: skip
    (dst / "meta.json").write_text(json.dumps(meta))
    (dst / "frames.jsonl").write_bytes((src / "frames.jsonl").read_bytes())
    data = bytearray((src / "frames.u8").read_bytes())
    data[SIZE * SIZE * 3 * 17 + 100] ^= 1
    (dst / "frames.u8").write_bytes(bytes(data))
    return dst


def test_replay_detects_a_tampered_frame(dataset, tmp_path, capsys):
    episode = tampered_copy(sorted(dataset.iterdir())[0], tmp_path / "tampered")
    code, out, err = run_cli(capsys, "replay", str(episode))
    assert code == 1
    result = last_json(out)
    assert {k: result[k] for k in ("frames", "identical", "first_mismatch", "mismatched_frames")} == {
        "frames": FRAMES, "identical": False, "first_mismatch": 17, "mismatched_frames": 1}  # fmt: skip
    assert result["max_abs_error"] == 1 and result["psnr_db"] > 60  # one bit of one channel
    assert result["engine_version_recorded"] == result["engine_version_now"] == ENGINE_VERSION
    assert "same engine version" in result["message"] and "real mismatch" in result["message"]
    assert result["message"] in err


def test_replay_refuses_another_engine_version_and_says_when_none_is_recorded(dataset, tmp_path, capsys):
    """A recording claims the engine that made it; replay takes no other's frames for this engine's
    (exit 2, bad input), whatever the frames say. One that predates versions is replayed and told apart."""
    src = sorted(dataset.iterdir())[0]
    for version in (ENGINE_VERSION - 1, ENGINE_VERSION + 1, str(ENGINE_VERSION), True):
        relabelled = tampered_copy(src, tmp_path / f"v-{version}", {"engine_version": version})
        code, out, err = run_cli(capsys, "replay", str(relabelled))
        assert (code, out) == (2, "") and "engine_version" in err and "Traceback" not in err, version
    unversioned = tampered_copy(src, tmp_path / "unversioned", missing=("engine_version",))
    code, out, _ = run_cli(capsys, "replay", str(unversioned))
    result = last_json(out)
    assert code == 1 and result["engine_version_recorded"] is None and "does not say" in result["message"]


def write_tiny(path, backend: str = "engine", chunks: int = 2) -> None:
    with EpisodeWriter(path, backend=backend, seed=1, height=SIZE, width=SIZE, chunk_frames=3, fps=30,
                       source="play") as writer:  # fmt: skip
        for _ in range(chunks):
            records = [{"action": Action(("forward",)).to_json(), "prompt": "desert at dusk"}] * 3
            writer.append_chunk(np.zeros((3, SIZE, SIZE, 3), np.uint8), records)


def test_replay_refuses_what_it_cannot_resimulate(tmp_path, capsys):
    write_tiny(tmp_path / "gen", backend="generated")  # made before recordings said which checkpoint
    code, _, err = run_cli(capsys, "replay", str(tmp_path / "gen"))
    assert code == 2 and "does not say which checkpoint" in err and "--checkpoint DIR" in err
    write_tiny(tmp_path / "other", backend="baseline")
    code, _, err = run_cli(capsys, "replay", str(tmp_path / "other"))
    assert code == 2 and "'baseline' backend" in err
    code, _, err = run_cli(capsys, "replay", str(tmp_path / "missing"))
    assert code == 2 and "missing" in err


def test_replay_tells_bad_input_from_a_determinism_failure(dataset, tmp_path, capsys):
    """Nothing to compare, or a seed no world can have: exit 2 (bad input), never "identical" nor 1."""
    write_tiny(tmp_path / "empty", chunks=0)
    code, out, err = run_cli(capsys, "replay", str(tmp_path / "empty"))
    assert (code, out) == (2, "") and "no complete frames" in err
    src = sorted(dataset.iterdir())[0]
    for seed in (-1, "7", 2**64, True, None):
        bad = tmp_path / f"seed-{seed}"
        bad.mkdir()
        for name in ("frames.u8", "frames.jsonl"):
            (bad / name).write_bytes((src / name).read_bytes())
        (bad / "meta.json").write_text(json.dumps({**json.loads((src / "meta.json").read_text()), "seed": seed}))
        code, out, err = run_cli(capsys, "replay", str(bad))
        # The reader refuses what is not a seed at all; replay, a seed no world can have.
        assert (code, out) == (2, "") and ("is not a world seed" in err or "seed must be an integer" in err), seed


def test_replay_refuses_a_reset_view_the_engine_cannot_make(tmp_path, capsys):
    """A first chunk marked as a reset view needs a backend whose reset makes one; the engine's
    does not, so such an engine recording is inconsistent (a mark elsewhere is refused too)."""
    for name, marked in (("first", 0), ("later", 1)):
        with EpisodeWriter(tmp_path / name, backend="engine", seed=1, height=SIZE, width=SIZE, chunk_frames=3,
                           fps=30, source="play") as writer:  # fmt: skip
            for k in range(2):
                record = {"action": Action().to_json(), "prompt": "desert at dusk"}
                record.update({"reset_view": True} if k == marked else {})
                writer.append_chunk(np.zeros((3, SIZE, SIZE, 3), np.uint8), [record] * 3)
    code, _, err = run_cli(capsys, "replay", str(tmp_path / "first"))
    assert code == 2 and "reset view" in err and "produces none" in err
    code, _, err = run_cli(capsys, "replay", str(tmp_path / "later"))
    assert code == 2 and "not in the first chunk" in err


def decoded_frames(mp4, width: int, height: int) -> int:
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(mp4), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    proc = subprocess.run(cmd, capture_output=True, check=True)
    assert len(proc.stdout) % (width * height * 3) == 0
    return len(proc.stdout) // (width * height * 3)


@pytest.mark.parametrize("overlay", [False, True])
def test_export_writes_a_decodable_mp4(dataset, tmp_path, capsys, overlay):
    episode = sorted(dataset.iterdir())[0]
    mp4 = tmp_path / "clip.mp4"
    code, out, _ = run_cli(capsys, "export", str(episode), "--out", str(mp4), *(["--overlay"] if overlay else []))
    summary = last_json(out)
    assert code == 0 and mp4.stat().st_size > 0 and summary["frames"] == FRAMES
    width, height = (max(4 * SIZE, 256), 4 * SIZE + BAR_HEIGHT) if overlay else (4 * SIZE, 4 * SIZE)
    assert (summary["width"], summary["height"]) == (width, height)
    assert decoded_frames(mp4, width, height) == FRAMES


def test_export_refuses_empty_and_damaged_episodes(tmp_path, capsys):
    write_tiny(tmp_path / "empty", chunks=0)
    code, _, err = run_cli(capsys, "export", str(tmp_path / "empty"), "--out", str(tmp_path / "a.mp4"))
    assert code == 1 and "no complete frames" in err and not (tmp_path / "a.mp4").exists()
    write_tiny(tmp_path / "bad")
    (tmp_path / "bad" / "meta.json").write_text("{")
    code, _, err = run_cli(capsys, "export", str(tmp_path / "bad"), "--out", str(tmp_path / "b.mp4"))
    assert code == 1 and "meta.json" in err


def test_datagen_reports_bad_options(tmp_path, capsys):
    code, _, err = run_cli(capsys, *DATAGEN, "--out", str(tmp_path), "--size", "4")
    assert code == 2 and "4x4" in err
    code, _, err = run_cli(capsys, *DATAGEN, "--out", str(tmp_path), "--episodes", "0")
    assert code == 2 and "--episodes" in err
    code, _, err = run_cli(capsys, *DATAGEN, "--out", str(tmp_path), "--bout-scale", "0")
    assert code == 2 and "--bout-scale" in err


def test_datagen_bout_scale_is_recorded_and_keeps_old_datasets_resumable(dataset, tmp_path, capsys):
    # The default leaves meta.json as before the option existed, so older datasets still resume...
    assert all("bout_scale" not in r.meta["datagen"]["config"] for r in open_dataset(dataset))
    argv = [*DATAGEN, "--episodes", "1", "--out", str(tmp_path), "--bout-scale", "0.2"]
    assert run_cli(capsys, *argv)[0] == 0
    (short,) = open_dataset(tmp_path)
    assert short.meta["datagen"]["config"]["bout_scale"] == 0.2
    # ...and a different scale is a different dataset: its episodes are not taken as done.
    code, out, _ = run_cli(capsys, *argv[:-1], "0.5")
    assert code == 0 and last_json(out)["episodes"] == 1


def test_the_overlay_font_keeps_its_spaces_and_wraps_by_width():
    from world.data.export import overlay_font, wrap_pixels

    font = overlay_font()
    assert font.getlength("hills at") - font.getlength("hillsat") >= 3  # "green hillsat noon" no more
    lines = wrap_pixels("green hills at noon " * 6, font, 200, max_lines=2)
    assert len(lines) == 2 and lines[0].startswith("green hills at noon") and lines[1].endswith("\u2026")
    assert all(font.getlength(line) <= 200 for line in lines)


def test_options_are_never_abbreviated_and_warnings_are_one_plain_line(capsys):
    """`serve --backend engine` once meant `--backend-module engine` and died in a traceback."""
    for argv in (["serve", "--backend", "engine"], ["play", "--head"], ["replay", "x", "--check", "y"]):
        with pytest.raises(SystemExit) as exit_info:
            run_world.main(argv)
        assert exit_info.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err
    assert run_world._plain_warning("cut", UserWarning, "/x.py", 3) == "run_world.py: warning: cut\n"
