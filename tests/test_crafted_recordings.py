"""docs/reliability.md, row 7: crafted recordings must be refused by name, never read without bound.

Each case starts from a real recording (an EpisodeWriter episode on disk) and damages it the way
a hostile download could: symlinks to a device or a binary, huge indices, NaN actions, oversized
meta. Reading it is a DatasetError naming the file and the problem; `export` and `replay` exit 2
with that message, no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from world.actions import Action
from world.data.dataset import META_FILE, RECORDS_FILE, DatasetError, EpisodeReader, EpisodeWriter
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
