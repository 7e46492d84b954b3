"""docs/reliability.md, row 7: crafted recordings must be refused by name, never read without bound.

Each case starts from a real recording (an EpisodeWriter episode on disk) and damages it the way
a hostile download could: symlinks to a device or a binary, huge indices, NaN actions, oversized
meta. Reading it is a DatasetError naming the file and the problem; `export` and `replay` exit 2
with that message, no traceback.

A recording that reads but says what no worker could have made (a tampered `t`, `fps`, `chunk`,
`steps`/`nfe`, `engine_version`, an unknown field, trailing bytes, a geometry beyond a worker's
limits) is refused by `replay` and `export` (world/data/schema.py) naming the field, before anything
is built or encoded; a size within the limits that the machine cannot hold is said, not a traceback.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import run_cli
from world.actions import Action
from world.data.dataset import META_FILE, RECORDS_FILE, DatasetError, EpisodeReader, EpisodeWriter
from world.data.schema import check_recording
from world.server.process import REPO_ROOT


@pytest.fixture
def episode(tmp_path):
    path = tmp_path / "ep"
    with EpisodeWriter(path, backend="engine", seed=3, height=8, width=8, chunk_frames=2, fps=30.0,
                       source="test", extra={"prompt": "green hills at noon"}) as writer:  # fmt: skip
        for c in range(2):
            records = [{"chunk": c, "action": Action().to_json(), "prompt": "green hills at noon"}] * 2
            writer.append_chunk(np.zeros((2, 8, 8, 3), np.uint8), records)
    return path


def rewrite_record(path, **fields) -> None:
    lines = (path / RECORDS_FILE).read_text().splitlines()
    first = {**json.loads(lines[0]), **fields}
    (path / RECORDS_FILE).write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")


def rewrite_meta(path, **fields) -> None:
    meta = json.loads((path / META_FILE).read_text())
    (path / META_FILE).write_text(json.dumps({**meta, **fields}))


def crafted(kind: str, path) -> None:
    if kind == "records -> /dev/zero":
        os.remove(path / RECORDS_FILE)
        os.symlink("/dev/zero", path / RECORDS_FILE)
    elif kind == "frames -> a binary":
        os.remove(path / "frames.u8")
        os.symlink(sys.executable, path / "frames.u8")
    elif kind == "records: a fifo":
        os.remove(path / RECORDS_FILE)
        os.mkfifo(path / RECORDS_FILE)
    elif kind == "records: 4 GiB":
        with open(path / RECORDS_FILE, "r+b") as f:
            f.truncate(4 << 30)  # sparse: costs nothing on disk, would cost 4 GiB to read
    elif kind == "chunk=10**30":
        rewrite_record(path, chunk=10**30)
    elif kind == "NaN mouse":
        (path / RECORDS_FILE).write_text((path / RECORDS_FILE).read_text().replace('"mouse":[0.0,0.0]',
                                                                                  '"mouse":[NaN,0.0]', 1))  # fmt: skip
    elif kind == "meta.options: 10,000 keys":
        rewrite_meta(path, options={f"k{i}": i for i in range(10_000)})
    elif kind == "meta.options: a nested list":
        rewrite_meta(path, options={"schedule": [[1] * 100] * 100})
    elif kind == "seed=-1":
        rewrite_meta(path, seed=-1)


EXPECTED = {
    "records -> /dev/zero": "symlink",
    "frames -> a binary": "symlink",
    "records: a fifo": "not a regular file",
    "records: 4 GiB": "the most this file may hold",
    "chunk=10**30": r"chunk must be an integer in \[0, 2\*\*53\]",
    "NaN mouse": "NaN",
    "meta.options: 10,000 keys": "meta.json: (options must be an object with at most|.*bytes; the most)",
    "meta.options: a nested list": "option 'schedule' must be a number",
    "seed=-1": "seed must be an integer",
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_a_crafted_episode_is_refused_by_name(episode, kind):
    crafted(kind, episode)
    with pytest.raises(DatasetError, match=EXPECTED[kind]):
        EpisodeReader(episode)


@pytest.mark.parametrize("command", ["export", "replay"])
def test_the_commands_report_a_crafted_episode_without_a_traceback(episode, command, tmp_path):
    crafted("records -> /dev/zero", episode)
    args = [str(episode)] + (["--out", str(tmp_path / "out.mp4")] if command == "export" else [])
    done = subprocess.run([sys.executable, str(REPO_ROOT / "run_world.py"), command, *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "symlink" in done.stderr


def rewrite_record_at(path, line: int, **fields) -> None:
    lines = (path / RECORDS_FILE).read_text().splitlines()
    lines[line] = json.dumps({**json.loads(lines[line]), **fields})
    (path / RECORDS_FILE).write_text("\n".join(lines) + "\n")


def append_bytes(file, data: bytes) -> None:
    with open(file, "ab") as f:
        f.write(data)


# What no worker writes, each with the words its refusal must hold (the field it names).
TAMPERED = {
    "t": (lambda p: rewrite_record_at(p, 2, t=9.5), r"frames.jsonl:3: t 9.5 is not frame 2 at fps 30"),
    "t: not monotonic": (lambda p: rewrite_record_at(p, 1, t=0.0), r"frames.jsonl:2: t 0.0 is not frame 1"),
    "fps": (lambda p: rewrite_meta(p, fps=240.0), r"meta.json: fps 240.0 is not the engine's"),
    "fps: beyond a worker's": (lambda p: rewrite_meta(p, fps=1000.0), r"fps 1000.0 is outside \[1, 240\]"),
    "chunk": (lambda p: rewrite_record_at(p, 2, chunk=5), r"frames.jsonl:3: chunk 5 is not frame 2's chunk"),
    "steps": (lambda p: rewrite_record_at(p, 0, steps=4), r"frames.jsonl:1: steps 4 and nfe 0"),
    "nfe": (lambda p: rewrite_record_at(p, 3, nfe=8), r"frames.jsonl:4: steps 0 and nfe 8"),
    "i": (lambda p: rewrite_record_at(p, 1, i=7), r"frames.jsonl:2: i 7 breaks the frame numbering"),
    "engine_version": (lambda p: rewrite_meta(p, engine_version=99), r"engine_version 99 is not a version"),
    "an unknown record field": (lambda p: rewrite_record_at(p, 0, cheat=1), r"frames.jsonl:1: unknown field 'cheat'"),
    "trailing bytes in frames.u8": (lambda p: append_bytes(p / "frames.u8", b"\0" * 10), r"trailing bytes"),
    "trailing bytes in frames.jsonl": (lambda p: append_bytes(p / RECORDS_FILE, b'{"chunk"'), r"trailing bytes"),
    "meta.options geometry": (lambda p: rewrite_meta(p, options={"height": 1024, "width": 1024}),
                              r"options.height 1024 differs from the episode's height 8"),
    "meta geometry beyond a worker's": (lambda p: rewrite_meta(p, height=2048), r"height 2048 is outside \[8, 1024\]"),
    "meta.options a client cannot set": (lambda p: rewrite_meta(p, options={"device": "cuda"}),
                                         r"options: option 'device' is set by the worker operator"),
}


def test_an_untampered_recording_passes_the_checks(episode):
    check_recording(EpisodeReader(episode))  # the control: every refusal below is the tampering's


@pytest.mark.parametrize("command", ["replay", "export"])
@pytest.mark.parametrize("kind", list(TAMPERED))
def test_a_tampered_recording_is_refused_by_field(episode, kind, command, tmp_path, capsys):
    tamper, expected = TAMPERED[kind]
    tamper(episode)
    out_file = tmp_path / "out.mp4"
    args = [str(episode)] + (["--out", str(out_file)] if command == "export" else [])
    code, out, err = run_cli(capsys, command, *args)
    assert code != 0 and out == "" and "Traceback" not in err
    assert re.search(expected, err), err
    assert not out_file.exists()  # export encodes nothing


def test_a_torn_tail_is_used_only_when_asked(episode, tmp_path, capsys):
    """What a writer killed mid-chunk leaves is refused by default and read with --ignore-tail."""
    append_bytes(episode / "frames.u8", b"\0" * 100)
    code, out, err = run_cli(capsys, "export", str(episode), "--out", str(tmp_path / "a.mp4"), "--ignore-tail")
    assert code == 0 and json.loads(out)["frames"] == 4, err
    code, out, err = run_cli(capsys, "replay", str(episode), "--ignore-tail")
    assert code == 1 and json.loads(out)["frames"] == 4  # replayed (the frames are not the engine's)


def test_a_size_the_machine_cannot_hold_is_said_not_a_traceback(episode):
    """1024x1024 is within a worker's limits: under a 3 GiB address-space cap the engine cannot be
    built, and replay says so (exit 2) instead of dying of MemoryError."""
    rewrite_meta(episode, height=1024, width=1024, options={"height": 1024, "width": 1024})
    with open(episode / "frames.u8", "r+b") as f:
        f.truncate(4 * 1024 * 1024 * 3)  # sparse: four frames of that size on paper

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    done = subprocess.run([sys.executable, str(REPO_ROOT / "run_world.py"), "replay", str(episode)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600, preexec_fn=cap)  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert "1024x1024" in done.stderr or done.returncode == 1  # refused for memory, or replayed and differing
