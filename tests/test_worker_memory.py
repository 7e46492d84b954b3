"""controls.harness.worker_memory and its trend maths (controls/harness/memory.py): the maths
on synthetic samples, and short real runs through a worker subprocess (engine, a tiny random generated world,
a bad checkpoint)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from controls.harness.memory import FLAT_ABS_MIB, memory_trend, read_status, slope_per_minute
from controls.harness.worker_memory import MeasurementError, MemoryConfig, measure, write_report

REPO = Path(__file__).resolve().parent.parent
linux_only = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")


# ----------------------------------------------------------------------------- trend maths


def test_flat_samples_are_flat_with_zero_slope():
    t = np.arange(0, 600, 1.0)  # 10 minutes at 1 Hz
    rss = 400 + np.random.default_rng(0).normal(0, 1.0, t.size)  # allocator noise only
    trend = memory_trend(t, rss)
    assert trend.warmup_s == 30.0  # min(10% of 600 s, 30 s)
    assert trend.flat and abs(trend.slope_mib_per_min) < 0.5
    assert trend.post_warmup_samples == 570


def test_warmup_growth_does_not_count_but_a_leak_does():
    t = np.arange(0, 100.5, 0.5)  # 0..100 s
    warm = np.where(t < 5, 100 + 60 * t, 400.0)  # loads 300 MiB in the first 5 s, then steady
    trend = memory_trend(t, warm)
    assert trend.warmup_s == 10.0 and trend.rss_after_warmup_mib == 400.0 and trend.flat
    leak = 400 + 30 * t / 60  # 30 MiB per minute: 50 MiB over the run, past max(5%, 20 MiB)
    trend = memory_trend(t, leak)
    assert not trend.flat and trend.growth_mib > 20
    assert trend.slope_mib_per_min == pytest.approx(30.0, rel=1e-6)


def test_flat_tolerance_is_the_larger_of_5_percent_and_20_mib():
    t = np.linspace(0, 100, 101)
    small = memory_trend(t, 100 + 0.19 * t)  # +17 MiB on 100 MiB: within the 20 MiB floor
    assert small.flat and small.flat_tolerance_mib == FLAT_ABS_MIB
    big = memory_trend(t, 1000 + 0.45 * t)  # +40.5 MiB on ~1004: within 5% (~50 MiB)
    assert big.flat and big.flat_tolerance_mib > 45
    shrink = memory_trend(t, 1000 - 0.8 * t)  # "within" is both ways: -70 MiB is not flat
    assert not shrink.flat


def test_window_and_degenerate_inputs():
    t = [0.0, 1.0, 2.0, 3.0, 4.0]
    trend = memory_trend(t, [50, 60, 70, 80, 90], start_s=2.0, end_s=4.0)
    assert trend.rss_start_mib == 70 and trend.rss_end_mib == 90
    assert slope_per_minute([1.0], [5.0]) is None
    with pytest.raises(ValueError, match="no memory sample"):
        memory_trend(t, [1, 2, 3, 4, 5], start_s=10.0, end_s=20.0)


@linux_only
def test_read_status_of_this_process_and_of_a_gone_one():
    rss, hwm = read_status(os.getpid())
    assert 0 < rss <= hwm
    assert read_status(2**22 + 12345) is None  # above the default pid_max: no such process


# ----------------------------------------------------------------------------- real worker runs


@linux_only
def test_engine_stream_through_a_real_worker(tmp_path):
    config = MemoryConfig(backend="engine", minutes=2.5 / 60, prompt_switch_every_s=0.8, sample_every_s=0.2,
                          out=tmp_path / "mem.json", png=tmp_path / "mem.png", progress_every_s=1.0)  # fmt: skip
    report = measure(config)
    write_report(report, config.out, config.png)
    s = report.summary
    assert s.error is None and not s.interrupted and s.worker_exit_code == 0
    assert s.samples >= 2 and s.chunks > 0 and s.frames == s.chunks * s.chunk_frames and s.fps > 0
    assert 0 < s.rss_start_mib <= s.peak_rss_mib and s.max_sampled_rss_mib <= s.peak_rss_mib
    assert s.peak_ok and s.peak_rss_mib < 1024  # the engine is small
    assert 2.0 <= s.duration_s < 6.0 and s.prompt_switches >= 1
    assert s.slope_mib_per_min is not None and "flat" in s.flat_definition
    assert [x.t_s for x in report.samples] == sorted(x.t_s for x in report.samples)
    data = json.loads(config.out.read_text())
    assert data["summary"]["chunks"] == s.chunks and len(data["samples"]) == s.samples
    assert data["prompt_switches"][0]["prompt"] != config.prompts[0]
    assert config.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@linux_only
def test_cli_chunks_json_line(tmp_path):
    argv = [sys.executable, "-m", "controls.harness.worker_memory", "--backend", "engine", "--chunks", "40",
            "--sample-every", "0.1", "--out", str(tmp_path / "m.json"), "--png", "", "--json"]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["chunks"] == 40 and summary["frames"] == 120 and summary["peak_rss_mib"] > 0
    assert summary["png_path"] is None and (tmp_path / "m.json").is_file()


@linux_only
def test_generated_tiny_random_world(tmp_path):
    from model.runtime.world_model import make_random_world

    world = make_random_world(tmp_path / "tiny", preset="tiny", text_encoder="hash")
    config = MemoryConfig(backend="generated", checkpoint=str(world), sampler="diagonal", device="cpu",
                          minutes=2.0 / 60, sample_every_s=0.25, prompt_switch_every_s=1.0,
                          out=None, png=None)  # fmt: skip
    s = measure(config).summary
    assert s.error is None and s.chunks > 0 and s.samples >= 2
    assert s.peak_rss_mib > s.rss_start_mib * 0.5 > 0 and s.peak_ok
    assert "causal DiT" in s.description


# ----------------------------------------------------------------------------- errors


def test_missing_checkpoint_and_bad_options_fail_before_a_worker_starts(tmp_path):
    with pytest.raises(MeasurementError, match="does not exist"):
        measure(MemoryConfig(backend="generated", checkpoint=str(tmp_path / "nope")))
    with pytest.raises(MeasurementError, match="generated backend only"):
        measure(MemoryConfig(backend="engine", sampler="diagonal"))
    with pytest.raises(MeasurementError, match="not both"):
        measure(MemoryConfig(minutes=1, chunks=3))


@linux_only
def test_bad_checkpoint_is_a_clear_error_and_exit_2(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    argv = [sys.executable, "-m", "controls.harness.worker_memory", "--checkpoint", str(bad), "--chunks", "3",
            "--out", "", "--png", ""]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "could not open a generated session with checkpoint" in done.stderr
    assert "cannot load the world checkpoint" in done.stderr
