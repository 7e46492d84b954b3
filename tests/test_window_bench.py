"""The window benchmark runs the real window against a real worker and measures what a player gets."""

from __future__ import annotations

import json

import pytest

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


def test_window_bench_holds_chosen_keys_and_follows_a_key_script(tmp_path):
    """--hold and --keys-script through the real window and a real worker: the frames shown carry
    the held turn throughout and the scripted walk between its two times."""
    out, shot = tmp_path / "held.json", tmp_path / "held.png"
    assert window_bench.main(["--backend", "engine", "--seconds", "2.5", "--warmup", "1", "--hold", "left",
                              "--keys-script", "0.5:w;1.5:", "--screenshot", str(shot), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["keys"] == {"hold": ["left"], "script": [[0.5, ["w"]], [1.5, []]]}
    assert set(result["keys_shown"]) == {"turn_left", "forward+turn_left"}  # nothing shown without the turn
    assert result["key_changes"] == 2 and result["key_to_frame_ms"]["p50"] > 0  # the script's two changes
    from PIL import Image

    assert Image.open(shot).size == (512, 512)


@pytest.mark.parametrize("argv, words", [
    (["--hold", "q"], "--hold: 'q' is not a movement key of the keymap (movement keys: w, s, a, d, left"),
    (["--keys-script", "0:w;x:a"], "--keys-script entry 2 'x:a': the time 'x' is not a number of seconds"),
    (["--keys-script", "1:w;0.5:a"], "entry 2 '0.5:a': 0.5 s is not after the entry before (1 s)"),
    (["--keys-script", "0 w"], "entry 1 '0 w': expected TIME:KEYS"),
    (["--keys-script=-1:w"], "entry 1 '-1:w': the time must be 0 or more seconds"),
    (["--keys-script", ";"], "--keys-script: no TIME:KEYS entries"),
    (["--hold", "left", "--keys-script", "0:left,w"], "--keys-script at 0 s: left held by --hold already"),
    (["--keys-script", "0:w;40:"], "its last entry (40 s) is not within the timed part (--seconds 30)"),
    (["--hold", "w", "--key-every", "2"], "give one or the other"),
])  # fmt: skip
def test_bad_key_options_are_refused_naming_the_entry(argv, words, capsys):
    with pytest.raises(SystemExit) as stopped:
        window_bench.main(argv)
    assert stopped.value.code == 2 and words in capsys.readouterr().err


def test_a_key_script_file_holds_one_entry_a_line_in_the_timed_part_only(tmp_path):
    script = tmp_path / "keys.txt"
    script.write_text("# walk, then turn while walking, then stop\n0: w\n2.5: w, left\n\n5:\n")
    steps = window_bench.parse_key_script(f"@{script}", window_bench.movement_keys())
    assert steps == ((0.0, {"w"}), (2.5, {"w", "left"}), (5.0, frozenset()))
    plan = window_bench.KeyPlan(every_s=None, hold=frozenset({"space"}), script=steps)
    assert plan.keys_at(4.0, None) == {"space"}  # the warm-up: held keys only
    assert plan.keys_at(7.0, 3.0) == {"space", "w", "left"} and plan.keys_at(9.0, 5.0) == {"space"}
    cycle = window_bench.KeyPlan(every_s=0.5)
    assert cycle.keys_at(0.2, None) == frozenset() and cycle.keys_at(0.6, None) == {"left"}  # KEY_CYCLE[1]
