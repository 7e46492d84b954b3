"""The dataset format: round trip, crash safety, damage handling, clips."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from world.actions import ACTION_DIM, KEYS, Action
from world.data.dataset import (
    FORMAT,
    VERSION,
    DatasetError,
    DatasetWarning,
    EpisodeReader,
    EpisodeWriter,
    iter_clips,
    new_episode_path,
    open_dataset,
)

H, W, F = 6, 5, 3


def frames_for(start: int, count: int, h: int = H, w: int = W) -> np.ndarray:
    """Deterministic content: frame i is a distinct gradient, so any misplaced byte shows."""
    i = np.arange(start, start + count)[:, None, None, None]
    y = np.arange(h)[None, :, None, None]
    x = np.arange(w)[None, None, :, None]
    c = np.arange(3)[None, None, None, :]
    return ((i * 31 + y * 7 + x * 3 + c * 101) % 256).astype(np.uint8)


def action_for(i: int) -> Action:
    return Action((KEYS[i % len(KEYS)],), mouse_dx=((i % 5) - 2) / 4, mouse_dy=(i % 7) / 10)  # 0.1 etc.


def records_for(start: int, count: int, prompt: str = "desert at dusk") -> list[dict]:
    return [{"action": action_for(i).to_json(), "prompt": prompt, "steps": 2, "nfe": 3} for i in
            range(start, start + count)]  # fmt: skip


def write_episode(path: Path, chunks: int, **meta) -> Path:
    args = dict(backend="engine", seed=7, height=H, width=W, chunk_frames=F, fps=30, source="test")
    with EpisodeWriter(path, **{**args, **meta}) as writer:
        for c in range(chunks):
            writer.append_chunk(frames_for(c * F, F), records_for(c * F, F, prompt=f"prompt {c}"))
    return path


def test_round_trip(tmp_path):
    path = write_episode(tmp_path / "ep", chunks=4, options={"quality": "fast"}, extra={"checkpoint": "x"})
    reader = EpisodeReader(path)
    assert len(reader) == 4 * F
    np.testing.assert_array_equal(reader.frames, frames_for(0, 4 * F))
    assert reader.frames.dtype == np.uint8 and not reader.frames.flags.writeable
    np.testing.assert_array_equal(reader.read_frames(2, 7), frames_for(2, 5))
    with pytest.raises(IndexError):
        reader.read_frames(0, 4 * F + 1)
    expected_actions = np.stack([action_for(i).to_vector() for i in range(4 * F)])
    np.testing.assert_array_equal(reader.actions(), expected_actions)
    assert reader.actions().shape == (4 * F, ACTION_DIM) and reader.actions().dtype == np.float32
    assert reader.action_list() == [action_for(i) for i in range(4 * F)]  # exact, not float32-rounded
    assert reader.prompts() == [f"prompt {i // F}" for i in range(4 * F)]
    assert reader.chunk_ids().tolist() == [i // F for i in range(4 * F)]
    assert [r["i"] for r in reader.records] == list(range(4 * F))
    assert all(r["steps"] == 2 and r["nfe"] == 3 and r["t"] >= 0 for r in reader.records)
    meta = reader.meta
    assert (meta["format"], meta["version"], meta["backend"], meta["seed"]) == (FORMAT, VERSION, "engine", 7)
    assert (meta["height"], meta["width"], meta["chunk_frames"], meta["fps"]) == (H, W, F, 30.0)
    assert meta["source"] == "test" and meta["options"] == {"quality": "fast"} and meta["checkpoint"] == "x"
    assert meta["created"].endswith("Z")
    assert sorted(p.name for p in path.iterdir()) == ["frames.jsonl", "frames.u8", "meta.json"]


def test_empty_episode_loads(tmp_path):
    reader = EpisodeReader(write_episode(tmp_path / "ep", chunks=0))
    assert len(reader) == 0
    assert reader.frames.shape == (0, H, W, 3)
    assert reader.actions().shape == (0, ACTION_DIM)


def test_writer_rejects_bad_input(tmp_path):
    writer = EpisodeWriter(tmp_path / "ep", backend="engine", seed=1, height=H, width=W, chunk_frames=F,
                           fps=30, source="test")  # fmt: skip
    with pytest.raises(DatasetError, match="uint8"):
        writer.append_chunk(frames_for(0, F).astype(np.float32), records_for(0, F))
    with pytest.raises(DatasetError, match="shape"):
        writer.append_chunk(frames_for(0, F, h=H + 1), records_for(0, F))
    with pytest.raises(DatasetError, match="one record per frame"):
        writer.append_chunk(frames_for(0, F), records_for(0, F - 1))
    with pytest.raises(DatasetError, match="bad action"):
        writer.append_chunk(frames_for(0, F), [{"action": {"keys": ["jump"]}, "prompt": "x"}] * F)
    with pytest.raises(DatasetError, match="prompt"):
        writer.append_chunk(frames_for(0, F), [{"action": {}, "prompt": None}] * F)
    with pytest.raises(DatasetError, match="JSON"):
        writer.append_chunk(frames_for(0, F), [{"action": {}, "prompt": "x", "bad": object()}] * F)
    writer.append_chunk(frames_for(0, F), records_for(0, F))
    writer.close()
    assert len(EpisodeReader(tmp_path / "ep")) == F  # rejected chunks left nothing behind
    with pytest.raises(DatasetError, match="already holds an episode"):
        write_episode(tmp_path / "ep", chunks=1)
    with pytest.raises(DatasetError, match="shadow"):
        write_episode(tmp_path / "ep2", chunks=1, extra={"seed": 3})


def test_episode_ids_are_unique(tmp_path):
    first = new_episode_path(tmp_path, 5)
    first.mkdir()
    second = new_episode_path(tmp_path, 5)
    assert first != second and "s5" in first.name and not second.exists()


# A writer that appends deterministic chunks forever and reports each one after it returns. Frame
# content repeats every 256 frames, so it is precomputed and the loop does little but write.
# (Where exactly the kill lands is up to the scheduler; torn files are also built by hand below.)
KILLED_WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_dataset import frames_for, records_for
    from world.data.dataset import EpisodeWriter
    size, f = {size}, {chunk}
    pattern = frames_for(0, 256, size, size)
    with EpisodeWriter({path!r}, backend="engine", seed=1, height=size, width=size, chunk_frames=f, fps=30,
                       source="test") as writer:
        for c in range(2000):
            start = c * f % 256
            writer.append_chunk(pattern[start : start + f], records_for(c * f, f))
            print(c + 1, flush=True)
    """
)
KILL_SIZE, KILL_CHUNK = 64, 4


def test_sigkill_loses_at_most_the_chunk_being_written(tmp_path):
    path = tmp_path / "killed"
    code = KILLED_WRITER.format(tests=str(Path(__file__).parent), path=str(path), size=KILL_SIZE, chunk=KILL_CHUNK)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    reported = 0
    while reported < 20:  # kill while it is busy writing, well past the start
        line = proc.stdout.readline()
        assert line, "writer exited before it could be killed"
        reported = int(line)
    time.sleep(0.0017)  # an arbitrary moment while it keeps writing
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)  # a torn last chunk is expected here
        reader = EpisodeReader(path)
    n = len(reader)
    assert n >= reported * KILL_CHUNK  # every chunk whose append_chunk returned is there
    np.testing.assert_array_equal(reader.frames, frames_for(0, n, KILL_SIZE, KILL_SIZE))
    assert [r["i"] for r in reader.records] == list(range(n))
    np.testing.assert_array_equal(reader.actions(), np.stack([action_for(i).to_vector() for i in range(n)]))


def test_truncated_line_and_partial_frame_are_ignored(tmp_path):
    path = write_episode(tmp_path / "ep", chunks=2)
    with open(path / "frames.jsonl", "ab") as f:
        f.write(b'{"i": 6, "chunk": 2, "act')
    with open(path / "frames.u8", "ab") as f:
        f.write(frames_for(6, 1).tobytes()[:17])
    with pytest.warns(DatasetWarning, match="incomplete last line.*partial last frame"):
        reader = EpisodeReader(path)
    assert len(reader) == 2 * F
    np.testing.assert_array_equal(reader.frames, frames_for(0, 2 * F))


def test_frames_without_records_are_ignored(tmp_path):
    path = write_episode(tmp_path / "ep", chunks=2)
    with open(path / "frames.u8", "ab") as f:  # killed after the frames, before the lines
        f.write(frames_for(6, F).tobytes())
    with pytest.warns(DatasetWarning, match=f"{2 * F + F} complete frames but {2 * F} complete records"):
        assert len(EpisodeReader(path)) == 2 * F


def test_records_beyond_frames_are_ignored(tmp_path):
    path = write_episode(tmp_path / "ep", chunks=2)
    size = (path / "frames.u8").stat().st_size
    os.truncate(path / "frames.u8", size - H * W * 3)
    with pytest.warns(DatasetWarning):
        reader = EpisodeReader(path)
    assert len(reader) == 2 * F - 1 and len(reader.records) == 2 * F - 1


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "meta.json").unlink(), "meta.json: missing"),
        (lambda p: (p / "meta.json").write_text("{not json"), "meta.json: cannot read JSON"),
        (lambda p: _edit_meta(p, format="something-else"), "format is 'something-else'"),
        (lambda p: _edit_meta(p, version=2), "version 2 is not supported"),
        (lambda p: _edit_meta(p, height=0), "height must be a positive int"),
        (lambda p: _edit_meta(p, drop="seed"), r"missing fields \['seed'\]"),
        (lambda p: (p / "frames.u8").unlink(), "frames.u8: cannot read"),
        (lambda p: _corrupt_line(p, 2), r"frames.jsonl:2: bad JSON"),
    ],
)
def test_damage_raises_dataset_error_naming_the_file(tmp_path, damage, message):
    path = write_episode(tmp_path / "ep", chunks=2)
    damage(path)
    with pytest.raises(DatasetError, match=message):
        EpisodeReader(path)


def _edit_meta(path: Path, drop: str | None = None, **changes) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta.update(changes)
    if drop:
        del meta[drop]
    (path / "meta.json").write_text(json.dumps(meta))


def _corrupt_line(path: Path, lineno: int) -> None:
    lines = (path / "frames.jsonl").read_bytes().split(b"\n")
    lines[lineno - 1] = b"{oops"
    (path / "frames.jsonl").write_bytes(b"\n".join(lines))


def test_open_dataset_skips_damaged_episodes(tmp_path):
    write_episode(tmp_path / "a", chunks=1)
    write_episode(tmp_path / "b", chunks=2)
    write_episode(tmp_path / "c", chunks=1)
    (tmp_path / "c" / "meta.json").write_text("[]")
    (tmp_path / "d").mkdir()  # a writer killed before meta.json existed
    with pytest.warns(DatasetWarning) as caught:
        readers = open_dataset(tmp_path)
    assert [r.id for r in readers] == ["a", "b"]
    skipped = " ".join(str(w.message) for w in caught)
    assert str(tmp_path / "c") in skipped and str(tmp_path / "d") in skipped
    assert [r.id for r in open_dataset(tmp_path / "b")] == ["b"]  # a single episode works too
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nope")


def test_iter_clips_windows(tmp_path):
    readers = [write_episode(tmp_path / "a", chunks=4), write_episode(tmp_path / "b", chunks=1)]
    readers = [EpisodeReader(p) for p in readers]
    clips = list(iter_clips(readers, clip_frames=5, stride=2))
    assert len(clips) == 4  # episode a: starts 0, 2, 4, 6 of 12 frames; b (3 frames) is too short
    frames, actions, prompts = clips[1]
    np.testing.assert_array_equal(frames, frames_for(2, 5))
    np.testing.assert_array_equal(actions, readers[0].actions()[2:7])
    assert prompts == readers[0].prompts()[2:7]
    assert frames.shape == (5, H, W, 3) and actions.shape == (5, ACTION_DIM)
    assert len(list(iter_clips(readers, clip_frames=3))) == 4 + 1  # default stride: no overlap
    with pytest.raises(ValueError):
        list(iter_clips(readers, clip_frames=0))


def test_the_numpy_only_recipe_in_the_docs_reads_an_episode(tmp_path):
    path = write_episode(tmp_path / "ep", chunks=3)
    doc = (Path(__file__).parent.parent / "docs" / "dataset.md").read_text()
    recipe = doc.split("## Reading it without this project")[1].split("```python")[1].split("```")[0]
    assert len(recipe.strip().splitlines()) <= 10
    scope: dict = {}
    exec(recipe.replace('"data/engine/20250314T101502_123456Z-s42"', repr(str(path))), scope)
    np.testing.assert_array_equal(scope["frames"], frames_for(0, 3 * F))
    assert scope["prompts"] == EpisodeReader(path).prompts()
