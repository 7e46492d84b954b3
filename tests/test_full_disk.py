"""docs/reliability.md, row 4: a full disk must not end play with a raw OSError traceback.

`play --headless --record` runs as a real process (with its own local worker) under a file-size
limit (`ulimit -f`: writes past it fail with EFBIG, as on a full disk with ENOSPC): the recording
stops with a clear message, play goes on to the last frame, and the frames saved read back.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import warnings

import numpy as np
import pytest

from tests.fakes import FullDisk, fake_frame
from world.actions import Action
from world.data.dataset import EpisodeReader, open_dataset
from world.data.recorder import Recorder
from world.server.client import ChunkEvent
from world.server.process import REPO_ROOT

LIMIT_BYTES = 200 * 1024  # about 16 engine frames of 64x64


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))


def test_headless_play_survives_a_full_disk_and_keeps_what_was_written(tmp_path):
    cmd = [sys.executable, str(REPO_ROOT / "run_world.py"), "play", "--headless", "--backend", "engine",
           "--frames", "60", "--record", str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
                          preexec_fn=limit_file_size)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["frames"] == 60  # play went on after the recording stopped
    (line,) = [ln for ln in done.stderr.splitlines() if "recording stopped" in ln]
    assert "file size limit reached" in line
    saved = int(line.split("; ")[1].split()[0])
    assert 0 < saved < 60
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the torn last chunk is reported as a warning
        (episode,) = open_dataset(tmp_path)
    assert len(episode) == saved and episode.frames.shape[0] == saved
    assert str(episode.path) in line


@pytest.mark.parametrize("room_chunks", [0, 2])
def test_recorder_stops_on_enospc_with_the_count_and_path(tmp_path, room_chunks):
    info = {"backend": "fake", "height": 8, "width": 8, "chunk_frames": 2, "fps": 30.0}
    recorder = Recorder(tmp_path, info)
    recorder.start(1, "hills")
    failure = None
    for c in range(5):
        frames = np.stack([fake_frame(1, 2 * c + k, Action(), "hills", 8, 8) for k in range(2)])
        records = [{"i": 2 * c + k, "chunk": c, "action": Action().to_json(), "prompt": "hills"} for k in range(2)]
        recorder.append(ChunkEvent(c, frames, records, 0.0, 0, 0, chunk=c), seed=1)
        if c == 0:
            writer = recorder.writer
            writer._frames = FullDisk(writer._frames, room_chunks * 2 * 8 * 8 * 3)
        failure = failure or recorder.take_failure()
    assert not recorder.recording and failure is not None
    saved = 1 + room_chunks
    assert failure == f"recording stopped: disk full; {saved * 2} frames saved to {recorder.path}"
    assert len(EpisodeReader(recorder.path)) == saved * 2
