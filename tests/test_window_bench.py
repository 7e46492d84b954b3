"""The window benchmark runs the real window against a real worker and measures what a player gets."""

from __future__ import annotations

import json

from controls.harness import window_bench


def test_window_bench_measures_the_window_through_a_real_worker(tmp_path, capsys):
    out, shot = tmp_path / "window.json", tmp_path / "window.png"
    assert window_bench.main(["--backend", "engine", "--seconds", "2", "--warmup", "0.5", "--key-every", "0.3",
                              "--switch", "snowy mountains at dusk in fog", "--screenshot", str(shot),
                              "--profile", str(tmp_path / "window.pstats"), "--out", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert result == json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["backend"] == "engine" and result["threads"] == 1 and result["wait_policy"] == "default"
    assert result["shown_fps"] > 0 and result["world_fps"] > 0 and result["capacity_fps"] > 0
    assert result["key_changes"] > 0 and result["key_to_frame_ms"]["p50"] > 0  # the keys reached the screen
    assert result["cpu_kernels"] and result["torch"]
    assert 0 < result["window_cpu"] < 2.5 and 0 < result["worker_cpu"] < 2.5  # CPU seconds per second
    import pstats

    assert pstats.Stats(str(tmp_path / "window.pstats")).total_calls > 0  # the window loop was profiled
    from PIL import Image

    assert Image.open(shot).size == (512, 512) and result["screenshot"] == str(shot)  # the window, 8x


def test_worker_environment_sets_threads_and_the_wait_policy():
    env = window_bench.worker_environment(2, "passive")
    assert env["OMP_NUM_THREADS"] == "2" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "OMP_WAIT_POLICY" not in window_bench.worker_environment(1, "default")


def test_process_cpu_counts_this_process_and_refuses_a_missing_one():
    import os

    before = window_bench.process_cpu_s(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert before is not None and window_bench.process_cpu_s(os.getpid()) > before
    assert window_bench.process_cpu_s(2**22 + 12345) is None  # above the kernel's pid limit: no such process
